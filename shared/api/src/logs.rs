//! The log format of amistore's front doors, `amistore serve` and every
//! Lambda function: one JSON object per line, each a `tracing` event whose
//! fields sit at the top level beside `timestamp` and `level`, and, in a
//! Lambda, the invocation's `span` (`requestId`, `xrayTraceId`). The field
//! names are stable; docs/logs.md lists every event and its fields.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Log lines kept in memory, for tests that read back what was logged: a
/// `MakeWriter` for [`json_subscriber`], and the lines it received.
#[derive(Clone, Default)]
pub struct MemoryLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl MemoryLog {
    /// Every line written so far, parsed as JSON (a line that is not JSON
    /// comes back as a JSON string, so that a test sees it).
    pub fn lines(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| l.into()))
            .collect()
    }
}

impl std::io::Write for MemoryLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut held) = self.0.lock() {
            held.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for MemoryLog {
    type Writer = MemoryLog;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The level used when none of the variables names one.
const DEFAULT_LEVEL: &str = "info";

/// A subscriber writing JSON lines to `writer`, filtered by `directive`
/// (`info`, `debug`, `amistore=debug,info`: `tracing`'s filter syntax).
pub fn json_subscriber<W>(writer: W, directive: &str) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(EnvFilter::builder().parse_lossy(directive))
        .with_writer(writer)
        .finish()
}

/// Sends this process's `tracing` events to `writer` as JSON lines, at the
/// level the first set variable of `level_variables` names (`info` when none
/// is). Only the first call in a process takes effect.
pub fn init<W>(writer: W, level_variables: &[&str])
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let directive = level_variables
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|l| !l.is_empty()))
        .unwrap_or_else(|| DEFAULT_LEVEL.to_owned());
    // A second subscriber is refused; the first one stays, which is right.
    let _ = tracing::subscriber::set_global_default(json_subscriber(writer, &directive));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn events_are_json_lines_with_their_fields_at_the_top_level() {
        let captured = MemoryLog::default();
        let subscriber = json_subscriber(captured.clone(), "info");
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("Lambda runtime invoke", requestId = "req-1");
            let _entered = span.enter();
            tracing::info!(
                event = "step",
                taskId = "t-1",
                unit = 3u64,
                ok = false,
                error = Some("Retryable"),
                cause = None::<&str>,
                ms = 12u64,
            );
            tracing::debug!(event = "hidden");
        });
        let lines = captured.lines();
        assert_eq!(lines.len(), 1, "debug is below the level: {lines:?}");
        let line = &lines[0];
        assert_eq!(line["level"], "INFO");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
        assert_eq!(line["event"], "step");
        assert_eq!(line["taskId"], "t-1");
        assert_eq!(line["unit"], 3);
        assert_eq!(line["ok"], false);
        assert_eq!(line["error"], "Retryable");
        assert!(line.get("cause").is_none(), "None is left out: {line}");
        assert_eq!(line["ms"], 12);
        assert_eq!(line["span"]["requestId"], "req-1");
        assert!(line.get("target").is_none());
    }
}
