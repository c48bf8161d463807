# Shared by the benchmark scripts: builds the release binary, makes the test
# images and times commands. Source it after setting nothing; it sets $work,
# $bin, $threads and defines make_image, best_of, ratio and size.
#   $1 of the sourcing script: WORKDIR (kept); otherwise a temp dir (removed).

REPS=${REPS:-3}
work=${1:-$(mktemp -d /tmp/amistore-bench.XXXXXX)}
keep_work=${1:-}
mkdir -p "$work"
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p amistore
bin=${CARGO_TARGET_DIR:-$root/target}/release/amistore
threads=$(nproc)

seg=$((64 << 20))
src_random="$work/random.src"
src_text="$work/text.src"
if [ ! -s "$src_text" ]; then
  head -c $((1 << 30)) /dev/urandom >"$src_random"
  tar -cf - /usr/lib 2>/dev/null | head -c $((1 << 30)) >"$src_text" || true
fi

# make_image FILE SIZE_GIB WITH_HOLES
make_image() {
  local file=$1 gib=$2 holes=$3 segs=$(( $2 * 16 )) i kind
  rm -f "$file"; truncate -s "${gib}G" "$file"
  for ((i = 0; i < segs; i++)); do
    kind=$((i % 4))
    if [ "$kind" = 0 ] && [ "$holes" = 1 ]; then continue; fi
    if [ "$kind" = 1 ]; then src=$src_random; else src=$src_text; fi
    dd if="$src" of="$file" bs=$seg count=1 skip=$((i % 16)) seek="$i" conv=notrunc status=none
  done
}

# best_of CMD... : prints the best wall time (s) of $REPS runs; $BEFORE runs before each.
best_of() {
  local best="" t
  for ((r = 0; r < REPS; r++)); do
    eval "${BEFORE:-true}"
    /usr/bin/time -f %e -o "$work/time.out" bash -c "$*" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
    t=$(tail -1 "$work/time.out")
    best=$(python3 -c "print(min(float('$t'), float('${best:-inf}')))")
  done
  echo "$best"
}

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
size() { stat -c %s "$1"; }

