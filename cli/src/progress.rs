//! Progress bars on a terminal, silence elsewhere.

use std::io::IsTerminal;

use amistore_local::Progress;
use indicatif::{ProgressBar, ProgressStyle};

/// A byte-count progress bar, hidden with `--quiet` or when stderr is not a TTY.
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar labelled `what`.
    pub fn new(what: &'static str, quiet: bool) -> Self {
        let bar = if quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what);
        Self(bar)
    }
}

impl Progress for Bar {
    fn begin(&mut self, total: u64) {
        self.0.set_length(total);
    }

    fn advance(&mut self, bytes: u64) {
        self.0.inc(bytes);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
