//! Executes a [`StateMachine`] in process, as Step Functions would: `Task`
//! states call registered functions, `Retry` backs off and retries the errors it
//! names, `Catch` routes the rest, and a `Map` runs its items with bounded
//! concurrency, stopping new iterations after the first failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::workflow::asl::{Catcher, Jitter, Path, Retrier, State, StateMachine};

/// How a state machine failed: an error name and a cause, as Step Functions
/// reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Error name (`Retryable`, `States.Runtime`, …).
    pub error: String,
    /// Readable cause.
    pub cause: String,
}

impl Failure {
    fn new(error: impl Into<String>, cause: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            cause: cause.into(),
        }
    }

    fn runtime(cause: impl Into<String>) -> Self {
        Self::new("States.Runtime", cause)
    }

    /// The error output a `Catch` places in the state: `{"Error", "Cause"}`.
    fn output(&self) -> Value {
        json!({ "Error": self.error, "Cause": self.cause })
    }
}

/// A function a `Task` state can call.
pub type Function = Arc<dyn Fn(&Value) -> Result<Value, Failure> + Send + Sync>;
/// Reads a Map's items from (bucket, key).
pub type ItemSource = Arc<dyn Fn(&str, &str) -> Result<Value, Failure> + Send + Sync>;

/// Everything an execution needs from its host.
#[derive(Clone)]
pub struct Host {
    /// Functions by resource string.
    pub functions: BTreeMap<String, Function>,
    /// The S3 item reader.
    pub items: ItemSource,
    /// Cap on any Map's concurrency (the machine's CPUs, locally).
    pub max_map_concurrency: usize,
    /// Multiplies every retry delay (tests use 0).
    pub retry_delay_scale: f64,
}

/// The context object (`$$`) of one state.
#[derive(Clone, Default)]
struct Context {
    execution_name: String,
    item: Option<(usize, Value)>,
}

fn resolve(path: &Path, input: &Value, ctx: &Context) -> Result<Value, Failure> {
    let walk = |root: &Value, fields: &[String], what: &str| -> Result<Value, Failure> {
        let mut at = root;
        for f in fields {
            at = at.get(f).ok_or_else(|| {
                Failure::runtime(format!("{what} has no field {f:?} (path {path:?})"))
            })?;
        }
        Ok(at.clone())
    };
    match path {
        Path::Input(fields) => walk(input, fields, "the state input"),
        Path::MapItemValue(fields) => match &ctx.item {
            Some((_, value)) => walk(value, fields, "the Map item"),
            None => Err(Failure::runtime("$$.Map.Item outside a Map")),
        },
        Path::MapItemIndex => match &ctx.item {
            Some((i, _)) => Ok(json!(i)),
            None => Err(Failure::runtime("$$.Map.Item outside a Map")),
        },
        Path::ExecutionName => Ok(json!(ctx.execution_name)),
    }
}

/// Fills a Parameters-style template from the input and context.
fn fill(template: &Value, input: &Value, ctx: &Context) -> Result<Value, Failure> {
    Ok(match template {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                match k.strip_suffix(".$") {
                    Some(name) => {
                        let path = v.as_str().unwrap_or_default();
                        let path =
                            Path::parse(path).map_err(|e| Failure::runtime(e.to_string()))?;
                        out.insert(name.to_owned(), resolve(&path, input, ctx)?);
                    }
                    None => {
                        out.insert(k.clone(), fill(v, input, ctx)?);
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| fill(i, input, ctx))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

/// Places `result` into `input` at `result_path` (absent: `$`; null: discard).
fn place(
    input: &Value,
    result: Value,
    result_path: &Option<Option<String>>,
) -> Result<Value, Failure> {
    let path = match result_path {
        None => return Ok(result),
        Some(None) => return Ok(input.clone()),
        Some(Some(p)) => Path::parse(p).map_err(|e| Failure::runtime(e.to_string()))?,
    };
    let Path::Input(fields) = path else {
        return Err(Failure::runtime("ResultPath must be an input path"));
    };
    let Some((last, parents)) = fields.split_last() else {
        return Ok(result);
    };
    let mut out = input.clone();
    let mut at = &mut out;
    for f in parents {
        let obj = at.as_object_mut().ok_or_else(|| {
            Failure::runtime(format!("ResultPath passes through a non-object at {f:?}"))
        })?;
        at = obj.entry(f.clone()).or_insert_with(|| json!({}));
    }
    at.as_object_mut()
        .ok_or_else(|| Failure::runtime("ResultPath's parent is not an object"))?
        .insert(last.clone(), result);
    Ok(out)
}

/// Whether an `ErrorEquals` list matches `error`.
fn matches(names: &[String], error: &str) -> bool {
    names.iter().any(|n| {
        n == error || n == "States.ALL" || (n == "States.TaskFailed" && error != "States.Timeout")
    })
}

/// Runs `attempt`, retrying as `retry` says.
fn with_retry(
    host: &Host,
    retry: &[Retrier],
    mut attempt: impl FnMut() -> Result<Value, Failure>,
) -> Result<Value, Failure> {
    let mut tries: BTreeMap<usize, u32> = BTreeMap::new();
    loop {
        let failure = match attempt() {
            Ok(v) => return Ok(v),
            Err(f) => f,
        };
        // The first retrier that matches decides, as in Step Functions.
        let Some((i, r)) = retry
            .iter()
            .enumerate()
            .find(|(_, r)| matches(&r.error_equals, &failure.error))
        else {
            return Err(failure);
        };
        let n = tries.entry(i).or_default();
        if *n >= r.max_attempts {
            return Err(failure);
        }
        let delay = retry_delay(r, *n) * host.retry_delay_scale;
        *n += 1;
        if delay > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(delay));
        }
    }
}

/// Seconds to wait before retry number `n + 1` under `r`.
fn retry_delay(r: &Retrier, n: u32) -> f64 {
    let mut delay = r.interval_seconds as f64 * r.backoff_rate.powi(n.min(1000) as i32);
    if let Some(max) = r.max_delay_seconds {
        delay = delay.min(max as f64);
    }
    if r.jitter_strategy == Some(Jitter::Full) {
        delay *= jitter_fraction();
    }
    delay
}

/// A fraction in [0, 1) for full jitter: the time's low bits mixed with a
/// counter. Only spreading retries apart matters, not randomness.
fn jitter_fraction() -> f64 {
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mixed = (nanos
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15))
    .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (mixed >> 11) as f64 / (1u64 << 53) as f64
}

fn catch<'a>(catchers: &'a [Catcher], failure: &Failure) -> Option<&'a Catcher> {
    catchers
        .iter()
        .find(|c| matches(&c.error_equals, &failure.error))
}

/// Runs `machine` on `input` to its end.
pub fn execute(
    host: &Host,
    machine: &StateMachine,
    input: Value,
    name: &str,
) -> Result<Value, Failure> {
    let ctx = Context {
        execution_name: name.to_owned(),
        item: None,
    };
    run(host, machine, input, &ctx)
}

fn run(
    host: &Host,
    machine: &StateMachine,
    mut input: Value,
    ctx: &Context,
) -> Result<Value, Failure> {
    let mut current = machine.start_at.clone();
    loop {
        let state = machine
            .states
            .get(&current)
            .ok_or_else(|| Failure::runtime(format!("no state {current:?}")))?;
        let (outcome, flow) = match state {
            State::Succeed(_) => return Ok(input),
            State::Fail(f) => {
                return Err(Failure::new(
                    f.error.clone().unwrap_or_else(|| "States.Fail".into()),
                    f.cause.clone().unwrap_or_default(),
                ));
            }
            State::Task(t, flow) => {
                let function = host
                    .functions
                    .get(&t.resource)
                    .ok_or_else(|| Failure::runtime(format!("no function {:?}", t.resource)))?;
                let outcome = match &t.parameters {
                    Some(p) => fill(p, &input, ctx),
                    None => Ok(input.clone()),
                }
                .and_then(|args| with_retry(host, &flow.retry, || function(&args)));
                (outcome, flow)
            }
            State::Map(m, processor, flow) => {
                let outcome = with_retry(host, &flow.retry, || {
                    run_map(host, m, processor, &input, ctx)
                });
                (outcome, flow)
            }
        };
        let next_state = match outcome {
            Ok(result) => {
                input = place(&input, result, &flow.result_path)?;
                match &flow.next {
                    Some(n) if !flow.end => n.clone(),
                    _ => return Ok(input),
                }
            }
            Err(failure) => {
                let c = catch(&flow.catch, &failure).ok_or_else(|| failure.clone())?;
                input = place(&input, failure.output(), &c.result_path)?;
                c.next.clone()
            }
        };
        current = next_state;
    }
}

fn run_map(
    host: &Host,
    m: &crate::workflow::asl::MapState,
    processor: &StateMachine,
    input: &Value,
    ctx: &Context,
) -> Result<Value, Failure> {
    let items = match (&m.item_reader, &m.items_path) {
        (Some(reader), _) => {
            let params = fill(&reader.parameters, input, ctx)?;
            let field = |k: &str| {
                params
                    .get(k)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| Failure::runtime(format!("ItemReader needs a string {k}")))
            };
            (host.items)(&field("Bucket")?, &field("Key")?)?
        }
        (None, Some(path)) => {
            let path = Path::parse(path).map_err(|e| Failure::runtime(e.to_string()))?;
            resolve(&path, input, ctx)?
        }
        (None, None) => return Err(Failure::runtime("a Map needs items")),
    };
    let items = items
        .as_array()
        .cloned()
        .ok_or_else(|| Failure::runtime("a Map's items must be a JSON array"))?;
    let asked = match &m.max_concurrency_path {
        Some(path) => {
            let path = Path::parse(path).map_err(|e| Failure::runtime(e.to_string()))?;
            let value = resolve(&path, input, ctx)?;
            value
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    Failure::runtime(format!(
                        "MaxConcurrencyPath must point at a non-negative integer, not {value}"
                    ))
                })?
        }
        None => m.max_concurrency,
    };
    let limit = match asked {
        0 => host.max_map_concurrency,
        n => n.min(host.max_map_concurrency),
    }
    .max(1);
    let distributed = m.item_processor.processor_config.mode == "DISTRIBUTED";
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Value>>> = Mutex::new(vec![None; items.len()]);
    let first_failure: Mutex<Option<(usize, Failure)>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..limit.min(items.len()) {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(item) = items.get(i) else { break };
                    let item_ctx = Context {
                        execution_name: ctx.execution_name.clone(),
                        item: Some((i, item.clone())),
                    };
                    let outcome = match &m.item_selector {
                        Some(s) => fill(s, input, &item_ctx),
                        None => Ok(item.clone()),
                    }
                    .and_then(|item_input| run(host, processor, item_input, &item_ctx));
                    match outcome {
                        Ok(v) => {
                            if let Ok(mut r) = results.lock() {
                                r[i] = Some(v);
                            }
                        }
                        Err(f) => {
                            stop.store(true, Ordering::SeqCst);
                            if let Ok(mut first) = first_failure.lock() {
                                first.get_or_insert((i, f));
                            }
                        }
                    }
                }
            });
        }
    });
    if let Some((_, f)) = first_failure
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
    {
        // A Distributed Map's run fails as a whole once more items fail than it
        // tolerates (none, here), and, as on Step Functions, its error does not
        // carry the item's: a child execution must report its own failure. An
        // Inline Map fails with its iteration's error.
        return Err(if distributed {
            Failure::new(
                "States.ExceedToleratedFailureThreshold",
                "The specified tolerated failure threshold was exceeded",
            )
        } else {
            f
        });
    }
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(Value::Array(
        results
            .into_iter()
            .map(|r| r.unwrap_or(Value::Null))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn host(functions: Vec<(&str, Function)>) -> Host {
        Host {
            functions: functions
                .into_iter()
                .map(|(k, f)| (k.to_owned(), f))
                .collect(),
            items: Arc::new(|bucket, key| {
                assert_eq!((bucket, key), ("work", "items.json"));
                Ok(json!([{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}, {"n": 5}]))
            }),
            max_map_concurrency: 3,
            retry_delay_scale: 0.0,
        }
    }

    fn load(def: &Value, host: &Host) -> StateMachine {
        let resources: BTreeSet<String> = host.functions.keys().cloned().collect();
        StateMachine::parse(&def.to_string(), &resources).unwrap()
    }

    fn machine(map_mode: &str) -> Value {
        let exec = if map_mode == "DISTRIBUTED" {
            json!("STANDARD")
        } else {
            Value::Null
        };
        let mut config = json!({"Mode": map_mode});
        if !exec.is_null() {
            config["ExecutionType"] = exec;
        }
        json!({
            "StartAt": "Plan",
            "States": {
                "Plan": {"Type": "Task", "Resource": "plan", "Parameters": {"id.$": "$.id"}, "ResultPath": "$.plan",
                         "Retry": [{"ErrorEquals": ["Retryable"], "MaxAttempts": 2}],
                         "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Cleanup"}],
                         "Next": "Units"},
                "Units": {"Type": "Map",
                          "ItemReader": {"Resource": "arn:aws:states:::s3:getObject", "ReaderConfig": {"InputType": "JSON"},
                                         "Parameters": {"Bucket.$": "$.plan.bucket", "Key": "items.json"}},
                          "ItemSelector": {"id.$": "$.id", "n.$": "$$.Map.Item.Value.n", "i.$": "$$.Map.Item.Index"},
                          "MaxConcurrency": 10,
                          "ItemProcessor": {"ProcessorConfig": config, "StartAt": "Unit",
                                            "States": {"Unit": {"Type": "Task", "Resource": "unit",
                                                                "Retry": [{"ErrorEquals": ["Retryable"], "MaxAttempts": 3}], "End": true}}},
                          "ResultPath": "$.units",
                          "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Cleanup"}],
                          "End": true},
                "Cleanup": {"Type": "Task", "Resource": "cleanup", "Parameters": {"error.$": "$.error"}, "ResultPath": null, "Next": "Failed"},
                "Failed": {"Type": "Fail", "Error": "JobFailed", "Cause": "see the task"}
            }
        })
    }

    #[test]
    fn maps_run_items_concurrently_within_the_cap_and_in_order() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (r, p) = (running.clone(), peak.clone());
        let h = host(vec![
            (
                "plan",
                Arc::new(|args: &Value| Ok(json!({"bucket": "work", "for": args["id"]}))),
            ),
            (
                "unit",
                Arc::new(move |args: &Value| {
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    r.fetch_sub(1, Ordering::SeqCst);
                    Ok(json!(
                        args["n"].as_i64().unwrap() * 10 + args["i"].as_i64().unwrap()
                    ))
                }),
            ),
            ("cleanup", Arc::new(|_: &Value| panic!("nothing failed"))),
        ]);
        let out = execute(
            &h,
            &load(&machine("DISTRIBUTED"), &h),
            json!({"id": "t1"}),
            "t1",
        )
        .unwrap();
        assert_eq!(out["units"], json!([10, 21, 32, 43, 54]));
        assert_eq!(out["plan"]["for"], json!("t1"));
        assert_eq!(
            peak.load(Ordering::SeqCst),
            3,
            "capped by the host, not the machine's 10"
        );
    }

    #[test]
    fn retries_are_bounded_and_catch_routes_the_failure() {
        let calls = Arc::new(AtomicUsize::new(0));
        let cleaned = Arc::new(Mutex::new(None));
        let (c, cl) = (calls.clone(), cleaned.clone());
        let h = host(vec![
            ("plan", Arc::new(|_: &Value| Ok(json!({"bucket": "work"})))),
            (
                "unit",
                Arc::new(move |args: &Value| {
                    c.fetch_add(1, Ordering::SeqCst);
                    match args["n"].as_i64() {
                        Some(3) => Err(Failure::new("Retryable", "disk hiccup")),
                        _ => Ok(Value::Null),
                    }
                }),
            ),
            (
                "cleanup",
                Arc::new(move |args: &Value| {
                    *cl.lock().unwrap() = Some(args["error"].clone());
                    Ok(Value::Null)
                }),
            ),
        ]);
        for mode in ["DISTRIBUTED", "INLINE"] {
            calls.store(0, Ordering::SeqCst);
            let err = execute(&h, &load(&machine(mode), &h), json!({"id": "t"}), "t").unwrap_err();
            assert_eq!(err, Failure::new("JobFailed", "see the task"));
            let caught = cleaned.lock().unwrap().take().unwrap();
            let expected_error = if mode == "DISTRIBUTED" {
                "States.ExceedToleratedFailureThreshold"
            } else {
                "Retryable"
            };
            assert_eq!(caught["Error"], json!(expected_error), "{mode}");
            // Step Functions does not hand a failed child's error to the
            // parent of a Distributed Map; an Inline Map passes it on.
            let cause = caught["Cause"].as_str().unwrap();
            let expected_cause = if mode == "DISTRIBUTED" {
                "tolerated failure threshold"
            } else {
                "disk hiccup"
            };
            assert!(cause.contains(expected_cause), "{mode}: {caught}");
            // Item 3 ran 1 + 3 retries; no more than the 5 items' first tries besides.
            assert!((4..=8).contains(&calls.load(Ordering::SeqCst)), "{mode}");
        }
    }

    #[test]
    fn max_concurrency_may_come_from_the_input() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (r, p) = (running.clone(), peak.clone());
        let mut h = host(vec![
            ("plan", Arc::new(|_: &Value| Ok(json!({"bucket": "work"})))),
            (
                "unit",
                Arc::new(move |_: &Value| {
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    r.fetch_sub(1, Ordering::SeqCst);
                    Ok(Value::Null)
                }),
            ),
            ("cleanup", Arc::new(|_: &Value| Ok(Value::Null))),
        ]);
        h.max_map_concurrency = 8;
        let mut def = machine("DISTRIBUTED");
        let units = def["States"]["Units"].as_object_mut().unwrap();
        units.remove("MaxConcurrency");
        units.insert("MaxConcurrencyPath".into(), json!("$.limit"));
        let m = load(&def, &h);
        execute(&h, &m, json!({"id": "t", "limit": 2}), "t").unwrap();
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        let err = execute(&h, &m, json!({"id": "t", "limit": "many"}), "t").unwrap_err();
        assert_eq!(
            err.error, "JobFailed",
            "a bad path value fails the Map: {err:?}"
        );

        units_both_refused(&h);
    }

    fn units_both_refused(h: &Host) {
        let mut def = machine("DISTRIBUTED");
        def["States"]["Units"]["MaxConcurrencyPath"] = json!("$.limit");
        let resources: BTreeSet<String> = h.functions.keys().cloned().collect();
        let err = StateMachine::parse(&def.to_string(), &resources).unwrap_err();
        assert!(err.to_string().contains("exclude each other"), "{err}");
    }

    #[test]
    fn retry_delays_back_off_up_to_their_cap_with_optional_full_jitter() {
        let mut r: Retrier = serde_json::from_value(json!({
            "ErrorEquals": ["Retryable"], "IntervalSeconds": 2, "BackoffRate": 2.0, "MaxDelaySeconds": 60
        }))
        .unwrap();
        let plain: Vec<f64> = (0..8).map(|n| retry_delay(&r, n)).collect();
        assert_eq!(plain, [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]);
        r.jitter_strategy = Some(Jitter::Full);
        let jittered: Vec<f64> = (0..200).map(|n| retry_delay(&r, n % 8)).collect();
        assert!(
            jittered
                .iter()
                .zip(plain.iter().cycle())
                .all(|(j, p)| (0.0..=*p).contains(j))
        );
        let distinct: BTreeSet<u64> = jittered.iter().map(|d| d.to_bits()).collect();
        assert!(distinct.len() > 100, "full jitter spreads the delays");
        assert!(retry_delay(&r, u32::MAX).is_finite());
    }

    #[test]
    fn an_uncaught_fatal_error_ends_the_execution_with_it() {
        let h = host(vec![
            (
                "plan",
                Arc::new(|_: &Value| Err(Failure::new("Fatal", "no such image"))),
            ),
            ("unit", Arc::new(|_: &Value| Ok(Value::Null))),
            (
                "cleanup",
                Arc::new(|args: &Value| {
                    assert_eq!(args["error"]["Cause"], json!("no such image"));
                    Err(Failure::new("Fatal", "cleanup failed too"))
                }),
            ),
        ]);
        let err = execute(&h, &load(&machine("INLINE"), &h), json!({"id": "t"}), "t").unwrap_err();
        assert_eq!(err, Failure::new("Fatal", "cleanup failed too"));
    }
}
