#!/usr/bin/env bash
# Fuzzes a parser with cargo-fuzz (libFuzzer) for SECONDS (default 300):
# archive_reader (the default) or ec2_query (the EC2 Query parser).
# cargo-fuzz needs nightly features; on a stable toolchain RUSTC_BOOTSTRAP=1 enables them.
#   scripts/fuzz.sh [SECONDS] [TARGET]
# New inputs go to fuzz/corpus/archive_reader; crashes to fuzz/artifacts/. Commit a
# crash reproducer into the corpus: the test suite replays every corpus file.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
# -detect_leaks=0: LeakSanitizer reports glibc's per-thread destructor list
# (__cxa_thread_atexit_impl) of the reader's short-lived pipeline threads as a
# leak; the reader is safe Rust and joins every thread it starts.
cargo fuzz run "${2:-archive_reader}" -- -max_total_time="${1:-300}" -max_len=65536 -rss_limit_mb=2048 -detect_leaks=0
