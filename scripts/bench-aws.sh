#!/usr/bin/env bash
# Throughput on AWS, measured against a simulated data plane (no account is
# needed): `amistore_aws::simulation` serves the EBS direct APIs and the S3
# calls of a store and a restore on loopback, with a latency drawn per EBS
# request (log-normal; median and 99th percentile below), S3's first-byte
# latency and per-connection bandwidth (30 ms, 80 MiB/s), and EBS's
# per-snapshot and per-account limits. The real EBS and S3 adapters and SDK
# clients read one store unit through the real encoder and upload its parts
# (first as one part after the whole unit, as before units were cut into
# parts; then cut into parts uploaded while the unit is read), and write one
# restore unit through the real decoder from an archive read back from S3 in
# ranges, paced at the rate one unit is allotted (the template's
# EbsRequestsPerSecondPerUnit, 60/s). It prints the achieved block requests
# per second over that rate: each unit's efficiency, at 20, 150 and (last)
# 60 ms median latency, the default. At the default latency, two store tasks
# of four units, each unit with its own adapter, then share an account budget
# the simulation enforces (scaled down to 200 requests a second so this
# machine's CPUs can compress what they read), through rate leases in a task
# store as deployed units do: it prints the share of the budget they used
# while both ran, the requests throttled, and the units that failed.
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
out=$(mktemp)
trap 'rm -f "$out"' EXIT

echo "amistore AWS throughput benchmark (simulated EBS direct APIs, $(date +%F))"
for latency in "20 80 0" "150 600 0" "60 250 1"; do
  set -- $latency
  "$bench" --median-ms "$1" --p99-ms "$2" --rate 60 --concurrency 32 --gib 1 --two-tasks "$3" | tee "$out"
done
store=$(sed -n 's/^store unit efficiency: //p' "$out")
store_one_part=$(sed -n 's/^store unit efficiency, one part uploaded after reading: //p' "$out")
parts=$(sed -n 's/^store unit, \([0-9]*\) part(s).*/\1/p' "$out" | tail -1)
restore=$(sed -n 's/^restore unit efficiency: //p' "$out")
two=$(grep '^two tasks: ' "$out")

# The model: a 100 GiB AMI with 40 GiB written, stored and restored with the
# template's defaults (UnitsPerTask 16 × EbsRequestsPerSecondPerUnit 60 = 960
# requests/s, ChunkTransferMemoryMB 1024), at the unit efficiency measured
# above at the default latency. Units hold 256 MiB of present blocks (the
# planner's least for an AMI this size), so 160 units, each uploaded in as
# many parts as the measured unit was; a unit runs for its blocks at the
# achieved rate. Prices: us-east-1 list prices from the AWS
# pricing pages (Lambda arm64 per GB-second and per request; Step Functions
# standard per state transition; EBS direct APIs per 1,000 Get/Put/List
# requests; S3 standard per 1,000 PUT-class and GET-class requests), as
# constants here: check them before relying on the dollars.
LAMBDA_GB_SECOND=0.0000133334     # Lambda, arm64, per GB-second
LAMBDA_REQUEST=0.0000002          # Lambda, per request
SFN_TRANSITION=0.000025           # Step Functions standard, per state transition
EBS_GET=0.000003                  # GetSnapshotBlock, per request
EBS_PUT=0.000006                  # PutSnapshotBlock, per request
EBS_LIST=0.0000006                # ListSnapshotBlocks, per request
S3_PUT=0.000005                   # S3 PUT/COPY/POST/LIST, per request
S3_GET=0.0000004                  # S3 GET, per request
model() { # direction efficiency
  awk -v dir="$1" -v eff="$2" -v parts="$parts" -v gbs="$LAMBDA_GB_SECOND" -v lreq="$LAMBDA_REQUEST" \
      -v sfn="$SFN_TRANSITION" -v get="$EBS_GET" -v put="$EBS_PUT" -v list="$EBS_LIST" \
      -v s3put="$S3_PUT" -v s3get="$S3_GET" 'BEGIN {
    written_gib = 40; units = written_gib * 4; blocks = written_gib * 2048
    rate = 16 * 60 * eff                       # block requests a second, all units
    seconds = blocks / rate
    gb_seconds = 16 * seconds * 1024 / 1024    # 16 units busy all along
    lambda = gb_seconds * gbs + (units + 6) * lreq
    steps = sfn * (units * 4 + 12)             # per unit: invoke, retry guard, record, end
    if (dir == "store") {
      ebs = blocks * get + (blocks / 10000 + units) * list
      s3 = (units * parts + 3) * s3put + units * 2 * s3get
    } else {
      ebs = blocks * put
      s3 = units * 40 * s3get + 4 * s3get      # a ranged GET per 8 MiB frame
    }
    printf "model %s, 100 GiB AMI with 40 GiB written: %.1f minutes at %.0f MiB/s, %.0f Lambda GB-seconds, $%.3f (Lambda $%.3f + Step Functions $%.3f + EBS direct APIs $%.3f + S3 $%.4f)\n",
      dir, seconds / 60, rate / 2, gb_seconds, lambda + steps + ebs + s3, lambda, steps, ebs, s3
  }'
}

model store "$store"
model restore "$restore"
# Last lines: each unit's efficiency at the default latency, and two tasks
# sharing the account's budget.
echo "store unit efficiency, one part uploaded after reading (before): $store_one_part"
echo "store unit efficiency: $store"
echo "restore unit efficiency: $restore"
echo "$two"
