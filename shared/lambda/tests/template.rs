//! The deployment template as CloudFormation will receive it (translated by
//! aws-sam-translator, `infra/checks/translate.py`) against the code: each
//! function gets exactly the environment it reads, each action a route to the
//! function that serves it (IAM-authorised), and each state machine its
//! placeholders substituted and its steps sent to the function that runs them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use amistore_lambda::Function;
use serde_json::Value;

fn translated() -> Value {
    let path = amistore_lambda::testing::translated_template();
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn resource<'a>(template: &'a Value, id: &str) -> &'a Value {
    template["Resources"]
        .get(id)
        .unwrap_or_else(|| panic!("the template has no resource {id}"))
}

/// Every `${Name}` placeholder in `text`, without `${AWS::…}` pseudo parameters.
fn placeholders(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        found.insert(after[..end].to_owned());
        rest = &after[end..];
    }
    found
}

#[test]
fn each_function_gets_exactly_the_environment_it_reads() {
    let template = translated();
    for function in Function::ALL {
        let props = &resource(&template, function.logical_id())["Properties"];
        let set: BTreeSet<&str> = props["Environment"]["Variables"]
            .as_object()
            .map(|vars| vars.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let read: BTreeSet<&str> = function.environment().into_iter().collect();
        assert_eq!(
            set,
            read,
            "{}: the template sets the first, the code reads the second",
            function.logical_id()
        );
        assert!(
            !set.iter()
                .any(|v| v.contains("SECRET") && !v.ends_with("_ARN")),
            "{function}: a secret's value must not sit in the environment"
        );
    }
}

#[test]
fn each_action_has_an_iam_authorised_route_to_its_function() {
    let template = translated();
    let paths = resource(&template, "Api")["Properties"]["Body"]["paths"]
        .as_object()
        .expect("the HTTP API's OpenAPI paths");
    let mut served = BTreeSet::new();
    for function in Function::ALL {
        for action in function.actions() {
            let route = &paths
                .get(&format!("/{action}"))
                .unwrap_or_else(|| panic!("no route /{action}"))["post"];
            let uri = route["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]
                .as_str()
                .unwrap();
            assert!(
                uri.contains(&format!("${{{}.Arn}}", function.logical_id())),
                "/{action} goes to {uri}, not {}",
                function.logical_id()
            );
            assert_eq!(
                route["x-amazon-apigateway-integration"]["payloadFormatVersion"],
                "2.0"
            );
            assert_eq!(
                route["security"],
                serde_json::json!([{"AWS_IAM": []}]),
                "/{action}"
            );
            served.insert(format!("/{action}"));
        }
    }
    let routes: BTreeSet<String> = paths.keys().cloned().collect();
    assert_eq!(
        routes, served,
        "every route serves one action of one function"
    );
}

#[test]
fn state_machines_have_every_placeholder_substituted_and_send_steps_to_their_functions() {
    let template = translated();
    for machine in ["StoreStateMachine", "RestoreStateMachine"] {
        let props = &resource(&template, machine)["Properties"];
        // SAM writes an inline definition as {"Fn::Join": ["\n", [lines…]]}.
        let lines = props["DefinitionString"]["Fn::Join"][1]
            .as_array()
            .unwrap_or_else(|| panic!("{machine}: DefinitionString is not the joined lines"));
        let definition = lines
            .iter()
            .map(|l| l.as_str().expect("plain lines, no intrinsic functions"))
            .collect::<Vec<_>>()
            .join("\n");
        let wanted = placeholders(&definition);
        let given: BTreeSet<String> = props["DefinitionSubstitutions"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(wanted, given, "{machine}: placeholders and substitutions");
        for (placeholder, function) in [
            ("ChunkTransferFunctionArn", Function::ChunkTransfer),
            ("FinalizeFunctionArn", Function::Finalize),
        ] {
            assert_eq!(
                props["DefinitionSubstitutions"][placeholder]["Fn::GetAtt"],
                serde_json::json!([function.logical_id(), "Arn"]),
                "{machine}: {placeholder}"
            );
        }
        // Every Task state's step is one its function runs.
        let parsed: Value = serde_json::from_str(&definition).unwrap();
        let mut tasks = Vec::new();
        collect_tasks(&parsed, &mut tasks);
        assert!(tasks.len() >= 5, "{machine}: {tasks:?}");
        for (resource, step) in tasks {
            let function = match resource.as_str() {
                "${ChunkTransferFunctionArn}" => Function::ChunkTransfer,
                "${FinalizeFunctionArn}" => Function::Finalize,
                other => panic!("{machine}: a Task calls {other}"),
            };
            assert!(
                function.steps().contains(&step.as_str()),
                "{machine}: {step} is sent to {function}, which does not run it"
            );
        }
    }
}

/// Every Task state's resource and the step its parameters (or, for a Map's
/// item processor, the item selector) name.
fn collect_tasks(value: &Value, out: &mut Vec<(String, String)>) {
    if let Some(states) = value.get("States").and_then(Value::as_object) {
        for state in states.values() {
            if state["Type"] == "Task" {
                let step = state["Parameters"]["step"]
                    .as_str()
                    .or_else(|| value["__selector_step"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                out.push((state["Resource"].as_str().unwrap().to_owned(), step));
            }
            if state["Type"] == "Map" {
                let mut processor = state["ItemProcessor"].clone();
                processor["__selector_step"] = state["ItemSelector"]["step"].clone();
                collect_tasks(&processor, out);
            }
        }
    }
}

#[test]
fn names_fit_their_limits_for_any_stack_name() {
    let template = translated();
    for machine in ["StoreStateMachine", "RestoreStateMachine"] {
        let name = &resource(&template, machine)["Properties"]["StateMachineName"];
        let text = name.to_string();
        assert!(
            !text.contains("AWS::StackName"),
            "{machine}: a name built from the stack name (up to 128 characters) can pass the state machine name limit (80)"
        );
        // amistore-restore- and a stack id's 36-character UUID.
        let pattern = name["Fn::Sub"][0].as_str().unwrap();
        assert!(
            pattern.replace("${Id}", &"x".repeat(36)).len() <= 80,
            "{pattern}"
        );
    }
    // Schedules use State: SAM drops an intrinsic `Enabled`.
    let rule = &resource(&template, "SweeperFunctionArchivePolicy")["Properties"];
    assert_eq!(
        rule["State"]["Fn::If"][0], "HasArchivePolicy",
        "the archive policy rule is enabled only with a policy: {rule}"
    );
}
