//! Progress bars on a terminal, silence elsewhere.

use std::io::IsTerminal;

use amistore_local::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The byte bar's look: bytes moved of all, the rate, the time left.
const BYTES: &str =
    "{msg:>10} [{bar:40}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}";

/// A byte-count progress bar, hidden with `--quiet` or when stderr is not a TTY.
pub struct Bar {
    bar: ProgressBar,
    visible: bool,
}

impl Bar {
    /// A bar labelled `what`; it appears once the total is known.
    pub fn new(what: &'static str, quiet: bool) -> Self {
        Self::styled(what, quiet, BYTES)
    }

    /// A bar in percent (a server reports a task's progress as a percentage,
    /// not bytes).
    pub fn percent(what: &'static str, quiet: bool) -> Self {
        Self::styled(what, quiet, "{msg:>10} [{bar:40}] {pos:>3}% eta {eta}")
    }

    fn styled(what: &'static str, quiet: bool, template: &str) -> Self {
        let bar = ProgressBar::hidden();
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what);
        Self {
            bar,
            visible: !quiet && std::io::stderr().is_terminal(),
        }
    }
}

impl Bar {
    /// Turns a percent bar into a byte bar of `total` bytes (a server that
    /// reports bytes).
    pub fn show_bytes(&self, total: u64) {
        if let Ok(style) = ProgressStyle::with_template(BYTES) {
            self.bar.set_style(style.progress_chars("=> "));
        }
        self.bar.set_length(total);
        self.bar.set_position(0);
    }

    /// Sets how far the bar is.
    pub fn set_position(&self, at: u64) {
        self.bar.set_position(at);
    }

    /// A handle other threads can advance the bar through.
    pub fn handle(&self) -> ProgressBar {
        self.bar.clone()
    }
}

impl Progress for Bar {
    fn begin(&mut self, total: u64) {
        self.bar.set_length(total);
        if self.visible {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
    }

    fn advance(&mut self, bytes: u64) {
        self.bar.inc(bytes);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
