#!/usr/bin/env bash
# The main job, end to end, with the stock AWS CLI against `amistore serve`:
# import a raw disk as an AMI, store it as one archive object in a bucket,
# follow the task, restore it as a new AMI and wait until it is available.
#
#   scripts/quickstart.sh DISK.raw [DATA_DIR]
#
# DATA_DIR defaults to a new temporary directory (kept, so you can look at the
# archive with `zstd -dc … | tar -t`). The AWS CLI comes from .venv (installed
# from tests/requirements.txt if missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
disk=${1:?usage: scripts/quickstart.sh DISK.raw [DATA_DIR]  (make one: truncate -s 1G root.raw)}
# Before building: a mistyped path should not cost a build.
if [ ! -f "$disk" ]; then
  echo "quickstart: $disk is not a file; make a raw disk with: truncate -s 1G $disk" >&2
  exit 2
fi
data=${2:-$(mktemp -d "${TMPDIR:-/tmp}/amistore-quickstart.XXXXXX")}
# AMISTORE_BIN: an amistore binary to use instead of building one (the docs
# test runs this script with the binary it tests).
bin=${AMISTORE_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p amistore
  bin=${CARGO_TARGET_DIR:-$root/target}/release/amistore
fi
if [ ! -x "$root/.venv/bin/aws" ]; then
  python3 -m venv "$root/.venv"
  "$root/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/tests/requirements.txt"
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1
aws() { "$root/.venv/bin/aws" --endpoint-url "http://127.0.0.1:$port" ec2 "$@"; }

"$bin" serve --listen "127.0.0.1:$port" --data-dir "$data" 2>"$data.serve.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.1; done

set -x
ami=$("$bin" --data-dir "$data" image import --name "quickstart-$(date +%s)" --disk "/dev/xvda=$disk")
"$bin" --data-dir "$data" bucket create quickstart
aws create-store-image-task --image-id "$ami" --bucket quickstart/demo
aws wait store-image-task-complete --image-ids "$ami"
aws describe-store-image-tasks --image-ids "$ami"
new=$(aws create-restore-image-task --bucket quickstart --object-key "demo/$ami.bin" --name "restored-$ami" --query ImageId --output text)
aws wait image-available --image-ids "$new"
aws describe-images --image-ids "$new" --query 'Images[0].[ImageId,State,Name]' --output text
set +x
echo "archive: $data/s3/quickstart/demo/$ami.bin  (server log: $data.serve.log)"
