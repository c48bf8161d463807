#!/usr/bin/env bash
# Builds the five Lambda functions for AWS (provided.al2023, arm64) with
# cargo-lambda, which cross-compiles through zig: target/lambda/<name>/bootstrap,
# where infra/template.yaml's CodeUri points. Prints each bootstrap's size.
#   scripts/build-lambdas.sh            # the `lambda` profile (release, stripped of DWARF), arm64
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/cargo-lambda ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
fi
export PATH="$PWD/.venv/bin:$PATH"
rustup target list --installed 2>/dev/null | grep -q aarch64-unknown-linux-gnu \
  || rustup target add aarch64-unknown-linux-gnu

functions=(intake describe chunk-transfer finalize sweeper)
args=()
for f in "${functions[@]}"; do args+=(--bin "$f"); done
cargo lambda build --profile lambda --arm64 "${args[@]}"

for f in "${functions[@]}"; do
  boot="target/lambda/$f/bootstrap"
  [ -f "$boot" ] || { echo "missing $boot" >&2; exit 1; }
  file "$boot" 2>/dev/null | grep -q "ARM aarch64" || { echo "$boot is not an arm64 executable" >&2; exit 1; }
  printf '%-16s %8d KiB\n' "$f" "$(( $(stat -c %s "$boot") / 1024 ))"
done
