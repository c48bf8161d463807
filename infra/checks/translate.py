"""Translates infra/template.yaml into the CloudFormation that `sam deploy`
would hand to CloudFormation, so the checks see what AWS will see.

`sam deploy` first packages the template (uploads each function's CodeUri and
each state machine's DefinitionUri to S3 and rewrites those properties), then
CloudFormation runs the AWS::Serverless transform. This script does both the
way SAM does, offline: CodeUri becomes an S3 location, a DefinitionUri becomes
the definition itself (SAM accepts either), and aws-sam-translator (pinned in
tests/requirements.txt) runs the transform.

Usage: python translate.py TEMPLATE OUT.json
"""

import json
import os
import sys

from cfnlint.decode import decode_str
from samtranslator.translator.transform import transform


class NoManagedPolicies:
    """The template names no managed policy by name, so nothing is looked up."""

    def load(self):
        return {}


def package(template, base):
    """What `sam package` does to the template, minus the uploads."""
    for name, resource in template.get("Resources", {}).items():
        props = resource.get("Properties", {})
        kind = resource.get("Type")
        if kind == "AWS::Serverless::Function" and isinstance(props.get("CodeUri"), str):
            props["CodeUri"] = f"s3://amistore-artifacts/{name}.zip"
        if kind == "AWS::Serverless::StateMachine" and isinstance(props.get("DefinitionUri"), str):
            with open(os.path.join(base, props.pop("DefinitionUri")), encoding="utf-8") as f:
                props["Definition"] = json.load(f)
    return template


def main(source, out):
    with open(source, encoding="utf-8") as f:
        template, problems = decode_str(f.read())
    if problems:
        for p in problems:
            print(f"{source}: {p}", file=sys.stderr)
        return 1
    # The transform asks boto for the region to fill pseudo parameters in ARNs
    # it builds; any region will do, the result keeps ${AWS::Region} elsewhere.
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    translated = transform(package(template, os.path.dirname(source)), {}, NoManagedPolicies())
    with open(out, "w", encoding="utf-8") as f:
        json.dump(translated, f, indent=1, default=str)
        f.write("\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
