#!/usr/bin/env bash
# Throughput on AWS, measured against a simulated data plane (no account is
# needed): `amistore_aws::simulation` serves the EBS direct APIs on loopback
# with a latency drawn per request (log-normal; median and 99th percentile
# below) and EBS's per-snapshot and per-account limits. The real EBS adapter
# and SDK client read one store unit through the real encoder, and write one
# restore unit through the real decoder, paced at the rate one unit is
# allotted (the template's EbsRequestsPerSecondPerUnit, 60/s). It prints the
# achieved block requests per second over that rate: each unit's efficiency,
# at 20, 150 and (last) 60 ms median latency, the default.
#
#   scripts/bench-aws.sh
#
# The simulation is started and stopped by the benchmark itself, on
# 127.0.0.1, and ends with it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$root/Cargo.toml" \
  -p amistore-aws --features simulation --example unit_throughput
bench=${CARGO_TARGET_DIR:-$root/target}/release/examples/unit_throughput

echo "amistore AWS throughput benchmark (simulated EBS direct APIs, $(date +%F))"
# The default latency last: its efficiency is the last line.
for latency in "20 80" "150 600" "60 250"; do
  set -- $latency
  "$bench" --median-ms "$1" --p99-ms "$2" --rate 60 --concurrency 32 --gib 1
done
