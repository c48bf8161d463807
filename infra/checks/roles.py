"""The IAM policies each function and state machine of a deployment gets, as
CloudFormation will create them: the translated template (translate.py) with
its parameters, pseudo parameters and resources' physical ids substituted
and every intrinsic function evaluated.

Usage: python roles.py TRANSLATED.json WORLD.json > ROLES.json

WORLD.json describes one deployment (the tests make one per moto world):
  {"region": "...", "account": "...", "stackId": "arn:aws:cloudformation:...:stack/NAME/UUID",
   "parameters": {"ArchiveBuckets": "a,b", ...},
   "resources": {"TasksTable": {"Ref": "...", "Arn": "..."}, ...}}

ROLES.json maps each principal (the logical id of a function or state
machine) to its role's ARN and its policies:
  {"IntakeFunction": {"role": "IntakeFunctionRole", "roleArn": "...",
                      "policies": [{"name": "...", "document": {...}}],
                      "managedPolicyArns": [...]}}
"""

import json
import sys


class Unresolved(Exception):
    pass


class Resolver:
    def __init__(self, template, world):
        self.template = template
        self.world = world
        self.params = {}
        for name, spec in template.get("Parameters", {}).items():
            value = world.get("parameters", {}).get(name, spec.get("Default"))
            if value is None:
                raise Unresolved(f"parameter {name} has no value and no default")
            if spec.get("Type") == "CommaDelimitedList":
                value = [v for v in str(value).split(",")] if value != "" else [""]
            else:
                value = str(value)
            self.params[name] = value
        stack_id = world["stackId"]
        self.pseudo = {
            "AWS::Region": world["region"],
            "AWS::AccountId": world["account"],
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": stack_id,
            "AWS::StackName": stack_id.split("/")[1],
        }
        self.conditions = {}

    def ref(self, name):
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.params:
            return self.params[name]
        physical = self.world.get("resources", {}).get(name)
        if physical is None or "Ref" not in physical:
            raise Unresolved(f"Ref {name}: the world gives no physical id")
        return physical["Ref"]

    def getatt(self, name, attribute):
        physical = self.world.get("resources", {}).get(name)
        if physical is None or attribute not in physical:
            raise Unresolved(f"GetAtt {name}.{attribute}: the world does not give it")
        return physical[attribute]

    def condition(self, name):
        if name not in self.conditions:
            self.conditions[name] = bool(self.eval(self.template["Conditions"][name]))
        return self.conditions[name]

    def sub(self, text, variables):
        out, rest = "", text
        while "${" in rest:
            start = rest.index("${")
            end = rest.index("}", start)
            out += rest[:start]
            name = rest[start + 2:end]
            if name.startswith("!"):
                out += "${" + name[1:] + "}"
            elif name in variables:
                out += str(variables[name])
            elif "." in name and not name.startswith("AWS::"):
                resource, attribute = name.split(".", 1)
                out += str(self.getatt(resource, attribute))
            else:
                value = self.ref(name)
                if isinstance(value, list):
                    raise Unresolved(f"Sub of a list parameter {name}")
                out += str(value)
            rest = rest[end + 1:]
        return out + rest

    NO_VALUE = object()

    def eval(self, node):
        if isinstance(node, list):
            items = [self.eval(n) for n in node]
            return [i for i in items if i is not Resolver.NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return Resolver.NO_VALUE if arg == "AWS::NoValue" else self.ref(arg)
            if key == "Fn::GetAtt":
                resource, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.getatt(resource, attribute)
            if key == "Fn::Sub":
                if isinstance(arg, str):
                    return self.sub(arg, {})
                text, variables = arg
                return self.sub(text, {k: self.eval(v) for k, v in variables.items()})
            if key == "Fn::Join":
                delimiter, items = arg
                if not isinstance(delimiter, str):
                    raise Unresolved(f"Fn::Join's delimiter must be a literal string, not {delimiter}")
                return delimiter.join(str(i) for i in self.eval(items))
            if key == "Fn::Split":
                delimiter, text = arg
                return self.eval(text).split(delimiter)
            if key == "Fn::Select":
                index, items = arg
                return self.eval(items)[int(self.eval(index))]
            if key == "Fn::If":
                name, yes, no = arg
                return self.eval(yes if self.condition(name) else no)
            if key == "Fn::Equals":
                a, b = (self.eval(x) for x in arg)
                return str(a) == str(b)
            if key == "Fn::Not":
                return not self.eval(arg[0])
            if key == "Fn::And":
                return all(self.eval(a) for a in arg)
            if key == "Fn::Or":
                return any(self.eval(a) for a in arg)
            if key == "Condition":
                return self.condition(arg)
            if key.startswith("Fn::"):
                raise Unresolved(f"{key} is not evaluated here")
        out = {}
        for k, v in node.items():
            value = self.eval(v)
            if value is not Resolver.NO_VALUE:
                out[k] = value
        return out


def principals(template):
    """(principal, role logical id) for every function and state machine."""
    for name, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Lambda::Function":
            role = props.get("Role", {}).get("Fn::GetAtt", [None])[0]
        elif resource["Type"] == "AWS::StepFunctions::StateMachine":
            role = props.get("RoleArn", {}).get("Fn::GetAtt", [None])[0]
        else:
            continue
        if role:
            yield name, role


def main(translated_path, world_path):
    with open(translated_path, encoding="utf-8") as f:
        template = json.load(f)
    with open(world_path, encoding="utf-8") as f:
        world = json.load(f)
    resolver = Resolver(template, world)
    roles = {}
    for principal, role in principals(template):
        props = template["Resources"][role]["Properties"]
        policies = [
            {"name": p["PolicyName"], "document": resolver.eval(p["PolicyDocument"])}
            for p in props.get("Policies", [])
        ]
        roles[principal] = {
            "role": role,
            "roleArn": f"arn:aws:iam::{world['account']}:role/{role}",
            "policies": policies,
            "managedPolicyArns": resolver.eval(props.get("ManagedPolicyArns", [])),
        }
    json.dump(roles, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(main(sys.argv[1], sys.argv[2]))
    except Unresolved as e:
        print(f"roles.py: {e}", file=sys.stderr)
        sys.exit(1)
