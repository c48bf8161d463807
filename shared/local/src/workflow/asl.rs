//! The subset of Amazon States Language that amistore's state machines use,
//! parsed into types. Anything outside the subset (an unknown field, state
//! type, path form or resource) is refused when a definition is loaded, never
//! half-executed later.
//!
//! Supported: `Task` (Resource, Parameters, ResultPath, Retry with
//! MaxDelaySeconds and JitterStrategy, Catch), `Map` (ItemReader from S3 JSON
//! or ItemsPath, ItemSelector, MaxConcurrency or MaxConcurrencyPath,
//! ItemProcessor in INLINE or DISTRIBUTED mode, ResultPath, Retry, Catch),
//! `Fail` and `Succeed`; paths `$`, `$.a.b` and the context paths
//! `$$.Map.Item.Value[.a…]`, `$$.Map.Item.Index` and `$$.Execution.Name`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Error, Result};

/// The resource of a Distributed Map's S3 item reader.
pub const S3_GET_OBJECT: &str = "arn:aws:states:::s3:getObject";

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidInput(format!("state machine: {}", msg.into()).into())
}

/// A reference into the state input or the context object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    /// `$.a.b`: fields of the state input (`$` alone is all of it).
    Input(Vec<String>),
    /// `$$.Map.Item.Value.a…`: the current Map item, or a field of it.
    MapItemValue(Vec<String>),
    /// `$$.Map.Item.Index`.
    MapItemIndex,
    /// `$$.Execution.Name`.
    ExecutionName,
}

impl Path {
    /// Parses a path in the supported subset.
    pub fn parse(s: &str) -> Result<Self> {
        let fields = |rest: &str| -> Result<Vec<String>> {
            if rest.is_empty() {
                return Ok(vec![]);
            }
            let rest = rest
                .strip_prefix('.')
                .ok_or_else(|| invalid(format!("unsupported path {s:?}")))?;
            rest.split('.')
                .map(|f| {
                    let ok =
                        !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    ok.then(|| f.to_owned())
                        .ok_or_else(|| invalid(format!("unsupported path {s:?}")))
                })
                .collect()
        };
        if let Some(rest) = s.strip_prefix("$$.") {
            if let Some(after) = rest.strip_prefix("Map.Item.Value") {
                return Ok(Path::MapItemValue(fields(after)?));
            }
            return match rest {
                "Map.Item.Index" => Ok(Path::MapItemIndex),
                "Execution.Name" => Ok(Path::ExecutionName),
                _ => Err(invalid(format!("unsupported context path {s:?}"))),
            };
        }
        let rest = s
            .strip_prefix('$')
            .ok_or_else(|| invalid(format!("{s:?} is not a path (paths start with $)")))?;
        Ok(Path::Input(fields(rest)?))
    }
}

/// Checks every `"key.$": "path"` in a Parameters-style template.
fn check_template(template: &Value) -> Result<()> {
    match template {
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            if k.ends_with(".$") {
                let path = v
                    .as_str()
                    .ok_or_else(|| invalid(format!("{k:?} must be a path string")))?;
                Path::parse(path).map(|_| ())
            } else {
                check_template(v)
            }
        }),
        Value::Array(items) => items.iter().try_for_each(check_template),
        _ => Ok(()),
    }
}

/// `ResultPath`: absent means `$` (the result replaces the input), `null`
/// discards the result.
fn result_path<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A retry policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Retrier {
    /// Error names it applies to.
    pub error_equals: Vec<String>,
    /// First delay, seconds.
    #[serde(default = "one")]
    pub interval_seconds: u64,
    /// Retries (not counting the first attempt).
    #[serde(default = "three")]
    pub max_attempts: u32,
    /// Multiplier of the delay after each retry.
    #[serde(default = "two")]
    pub backoff_rate: f64,
    /// Cap on any one delay, seconds.
    #[serde(default)]
    pub max_delay_seconds: Option<u64>,
    /// `FULL`: each delay is drawn uniformly from zero to the computed delay
    /// (so many retriers do not wake together); `NONE` (the default): it is not.
    #[serde(default)]
    pub jitter_strategy: Option<Jitter>,
    /// Documentation.
    #[serde(default)]
    pub comment: Option<String>,
}

/// A Retrier's `JitterStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Jitter {
    /// Delays drawn uniformly from [0, delay].
    Full,
    /// The computed delay itself.
    None,
}

fn one() -> u64 {
    1
}
fn three() -> u32 {
    3
}
fn two() -> f64 {
    2.0
}

/// A fallback transition.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Catcher {
    /// Error names it applies to.
    pub error_equals: Vec<String>,
    /// Where the error (`{"Error", "Cause"}`) goes in the input; `$` by default.
    #[serde(default, deserialize_with = "result_path")]
    pub result_path: Option<Option<String>>,
    /// State to go to.
    pub next: String,
    /// Documentation.
    #[serde(default)]
    pub comment: Option<String>,
}

/// What `Task` and `Map` states share: where the result goes, how failures
/// are handled, and what comes next.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Flow {
    /// Where the result goes.
    #[serde(default, deserialize_with = "result_path")]
    pub result_path: Option<Option<String>>,
    /// Retry policies.
    #[serde(default)]
    pub retry: Vec<Retrier>,
    /// Fallbacks.
    #[serde(default)]
    pub catch: Vec<Catcher>,
    /// Next state.
    #[serde(default)]
    pub next: Option<String>,
    /// Whether this ends the machine.
    #[serde(default)]
    pub end: bool,
    /// Documentation.
    #[serde(default)]
    pub comment: Option<String>,
}

/// The fields of [`Flow`], as they are spelled in a definition.
const FLOW_FIELDS: [&str; 6] = ["ResultPath", "Retry", "Catch", "Next", "End", "Comment"];

/// A `Task` state (besides its [`Flow`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TaskState {
    /// The resource (a function) to call.
    pub resource: String,
    /// Template of the resource's input.
    #[serde(default)]
    pub parameters: Option<Value>,
}

/// A Map's S3 item reader.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ItemReader {
    /// Must be [`S3_GET_OBJECT`].
    pub resource: String,
    /// Must say `{"InputType": "JSON"}`.
    pub reader_config: BTreeMap<String, String>,
    /// `Bucket(.$)` and `Key(.$)`.
    pub parameters: Value,
}

/// How a Map runs its iterations.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ProcessorConfig {
    /// `INLINE` or `DISTRIBUTED`.
    pub mode: String,
    /// `STANDARD` or `EXPRESS` (Distributed only).
    #[serde(default)]
    pub execution_type: Option<String>,
}

/// A Map's iteration machine.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ItemProcessor {
    /// Mode.
    pub processor_config: ProcessorConfig,
    /// First state.
    pub start_at: String,
    /// States.
    pub states: BTreeMap<String, Value>,
}

/// A `Map` state (besides its [`Flow`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct MapState {
    /// Items from S3 …
    #[serde(default)]
    pub item_reader: Option<ItemReader>,
    /// … or from the input.
    #[serde(default)]
    pub items_path: Option<String>,
    /// Template of each iteration's input.
    #[serde(default)]
    pub item_selector: Option<Value>,
    /// Most iterations at once (0: no limit).
    #[serde(default)]
    pub max_concurrency: usize,
    /// The input path holding the most iterations at once (instead of
    /// `MaxConcurrency`).
    #[serde(default)]
    pub max_concurrency_path: Option<String>,
    /// The iteration machine.
    pub item_processor: ItemProcessor,
}

/// A `Fail` state.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct FailState {
    /// Error name.
    #[serde(default)]
    pub error: Option<String>,
    /// Cause.
    #[serde(default)]
    pub cause: Option<String>,
    /// Documentation.
    #[serde(default)]
    pub comment: Option<String>,
}

/// A `Succeed` state.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct SucceedState {
    /// Documentation.
    #[serde(default)]
    pub comment: Option<String>,
}

/// A state.
#[derive(Debug, Clone)]
pub enum State {
    /// Calls a resource.
    Task(TaskState, Flow),
    /// Runs a machine per item.
    Map(Box<MapState>, Box<StateMachine>, Flow),
    /// Ends in failure.
    Fail(FailState),
    /// Ends in success.
    Succeed(SucceedState),
}

/// A parsed, checked state machine.
#[derive(Debug, Clone)]
pub struct StateMachine {
    /// First state.
    pub start_at: String,
    /// States by name.
    pub states: BTreeMap<String, State>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct RawMachine {
    #[serde(default)]
    comment: Option<String>,
    start_at: String,
    states: BTreeMap<String, Value>,
}

fn typed<T: DeserializeOwned>(name: &str, mut raw: Value) -> Result<T> {
    if let Some(map) = raw.as_object_mut() {
        map.remove("Type");
    }
    serde_json::from_value(raw).map_err(|e| invalid(format!("state {name:?}: {e}")))
}

/// Parses a state that has a [`Flow`]: the flow fields, then the rest.
fn with_flow<T: DeserializeOwned>(
    name: &str,
    raw: &Value,
    states: &BTreeSet<&str>,
) -> Result<(T, Flow)> {
    let mut own = raw.clone();
    let mut flow = serde_json::Map::new();
    if let Some(map) = own.as_object_mut() {
        for field in FLOW_FIELDS {
            if let Some(v) = map.remove(field) {
                flow.insert(field.to_owned(), v);
            }
        }
    }
    let flow: Flow = typed(name, Value::Object(flow))?;
    flow.check(name, states)?;
    Ok((typed(name, own)?, flow))
}

impl Flow {
    fn check(&self, name: &str, states: &BTreeSet<&str>) -> Result<()> {
        if let Some(Some(p)) = &self.result_path {
            Path::parse(p)?;
        }
        check_retry_and_catch(name, &self.retry, &self.catch, states)?;
        match (&self.next, self.end) {
            (Some(n), false) if states.contains(n.as_str()) => Ok(()),
            (None, true) => Ok(()),
            _ => Err(invalid(format!(
                "state {name:?} needs exactly one of an existing Next or End"
            ))),
        }
    }
}

fn check_retry_and_catch(
    name: &str,
    retry: &[Retrier],
    catch: &[Catcher],
    states: &BTreeSet<&str>,
) -> Result<()> {
    for r in retry {
        if r.error_equals.is_empty() || r.backoff_rate < 1.0 {
            return Err(invalid(format!(
                "state {name:?}: a Retry needs ErrorEquals and BackoffRate >= 1"
            )));
        }
    }
    for c in catch {
        if c.error_equals.is_empty() || !states.contains(c.next.as_str()) {
            return Err(invalid(format!(
                "state {name:?}: a Catch needs ErrorEquals and an existing Next (got {:?})",
                c.next
            )));
        }
        if let Some(Some(p)) = &c.result_path {
            Path::parse(p)?;
        }
    }
    Ok(())
}

impl StateMachine {
    /// Parses a definition (JSON text).
    pub fn parse(json: &str, resources: &BTreeSet<String>) -> Result<Self> {
        let raw: Value =
            serde_json::from_str(json).map_err(|e| invalid(format!("not JSON: {e}")))?;
        Self::from_value(raw, resources)
    }

    fn from_value(raw: Value, resources: &BTreeSet<String>) -> Result<Self> {
        let raw: RawMachine = serde_json::from_value(raw).map_err(|e| invalid(e.to_string()))?;
        let _ = raw.comment;
        let names: BTreeSet<&str> = raw.states.keys().map(String::as_str).collect();
        if !names.contains(raw.start_at.as_str()) {
            return Err(invalid(format!(
                "StartAt {:?} is not a state",
                raw.start_at
            )));
        }
        let mut states = BTreeMap::new();
        for (name, value) in &raw.states {
            let kind = value
                .get("Type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let state = match kind {
                "Task" => {
                    let (t, flow): (TaskState, Flow) = with_flow(name, value, &names)?;
                    if !resources.contains(&t.resource) {
                        return Err(invalid(format!(
                            "state {name:?}: resource {:?} is not one this runner provides",
                            t.resource
                        )));
                    }
                    if let Some(p) = &t.parameters {
                        check_template(p)?;
                    }
                    State::Task(t, flow)
                }
                "Map" => {
                    let (m, flow): (MapState, Flow) = with_flow(name, value, &names)?;
                    match (&m.item_reader, &m.items_path) {
                        (Some(r), None) => {
                            let json_input = r.reader_config.get("InputType").map(String::as_str)
                                == Some("JSON");
                            if r.resource != S3_GET_OBJECT
                                || !json_input
                                || r.reader_config.len() != 1
                            {
                                return Err(invalid(format!(
                                    "state {name:?}: only ItemReader {S3_GET_OBJECT} with InputType JSON is supported"
                                )));
                            }
                            check_template(&r.parameters)?;
                        }
                        (None, Some(p)) => {
                            Path::parse(p)?;
                        }
                        _ => {
                            return Err(invalid(format!(
                                "state {name:?}: a Map needs one of ItemReader and ItemsPath"
                            )));
                        }
                    }
                    if let Some(s) = &m.item_selector {
                        check_template(s)?;
                    }
                    if let Some(p) = &m.max_concurrency_path {
                        if m.max_concurrency != 0 {
                            return Err(invalid(format!(
                                "state {name:?}: MaxConcurrency and MaxConcurrencyPath exclude each other"
                            )));
                        }
                        Path::parse(p)?;
                    }
                    let config = &m.item_processor.processor_config;
                    let mode_ok = match config.mode.as_str() {
                        "INLINE" => config.execution_type.is_none(),
                        "DISTRIBUTED" => matches!(
                            config.execution_type.as_deref(),
                            Some("STANDARD" | "EXPRESS")
                        ),
                        _ => false,
                    };
                    if !mode_ok {
                        return Err(invalid(format!(
                            "state {name:?}: ProcessorConfig must be INLINE, or DISTRIBUTED with an ExecutionType"
                        )));
                    }
                    let inner = serde_json::json!({
                        "StartAt": m.item_processor.start_at,
                        "States": m.item_processor.states,
                    });
                    let processor = StateMachine::from_value(inner, resources)?;
                    State::Map(Box::new(m), Box::new(processor), flow)
                }
                "Fail" => State::Fail(typed(name, value.clone())?),
                "Succeed" => State::Succeed(typed(name, value.clone())?),
                other => {
                    return Err(invalid(format!(
                        "state {name:?}: type {other:?} is not supported by the local runner"
                    )));
                }
            };
            states.insert(name.clone(), state);
        }
        Ok(Self {
            start_at: raw.start_at,
            states,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources() -> BTreeSet<String> {
        ["fn".to_owned()].into()
    }

    #[test]
    fn paths_parse_in_the_supported_subset_only() {
        assert_eq!(Path::parse("$").unwrap(), Path::Input(vec![]));
        assert_eq!(
            Path::parse("$.plan.itemsKey").unwrap(),
            Path::Input(vec!["plan".into(), "itemsKey".into()])
        );
        assert_eq!(
            Path::parse("$$.Map.Item.Value.unit").unwrap(),
            Path::MapItemValue(vec!["unit".into()])
        );
        for bad in ["$.a[0]", "$..a", "a.b", "$$.State.Name", "$.a.", "$.a b"] {
            assert!(Path::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unsupported_constructs_fail_at_load() {
        let ok = r#"{"StartAt":"A","States":{"A":{"Type":"Task","Resource":"fn","End":true}}}"#;
        StateMachine::parse(ok, &resources()).unwrap();
        for (bad, why) in [
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Wait","Seconds":1,"End":true}}}"#,
                "Wait",
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Task","Resource":"fn","TimeoutSeconds":5,"End":true}}}"#,
                "TimeoutSeconds",
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Task","Resource":"other","End":true}}}"#,
                "other",
            ),
            (
                r#"{"StartAt":"B","States":{"A":{"Type":"Task","Resource":"fn","End":true}}}"#,
                "StartAt",
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Task","Resource":"fn","Next":"Z"}}}"#,
                "Next",
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Task","Resource":"fn","Parameters":{"x.$":"$.a[0]"},"End":true}}}"#,
                "a[0]",
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Task","Resource":"fn","Catch":[{"ErrorEquals":["States.ALL"],"Next":"Q"}],"End":true}}}"#,
                "Catch",
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Map","ItemsPath":"$.x","ItemProcessor":{"ProcessorConfig":{"Mode":"SIDEWAYS"},"StartAt":"B","States":{"B":{"Type":"Succeed"}}},"End":true}}}"#,
                "ProcessorConfig",
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Map","ItemsPath":"$.x","ItemProcessor":{"ProcessorConfig":{"Mode":"INLINE"},"StartAt":"B","States":{"B":{"Type":"Pass","End":true}}},"End":true}}}"#,
                "Pass",
            ),
        ] {
            let err = StateMachine::parse(bad, &resources())
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
