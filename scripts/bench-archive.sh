#!/usr/bin/env bash
# Benchmarks `amistore archive pack` and `extract` against stock zstd/tar on the
# same generated images, in one run, and prints ratios (the machine is noisy, so
# only same-run ratios mean anything). Also reports peak RSS for 1 and 8 GiB.
#
#   scripts/bench-archive.sh [WORKDIR]      (needs ~12 GiB free; WORKDIR defaults to a temp dir)
#
# Images (64 MiB segments): "mixed" is 2 GiB with 25% holes, 25% random and 50%
# compressible data (a tar of /usr/lib: binaries, libraries, text); "dense" is
# the same without holes. Each timing is the best of $REPS runs with a warm cache.
#
# Like for like: amistore makes its outputs durable (fsync, then rename into
# place), so the baselines' outputs are synced too (`sync FILE`); the unsynced
# zstd time is printed for reference.
set -euo pipefail

source "$(dirname "$0")/bench-common.sh"

report() {
  local name=$1 img=$2
  cat "$img" >/dev/null
  local bytes; bytes=$(size "$img")
  local t_zstd t_zstd_nosync t_pack
  BEFORE="rm -f $work/z.zst; sync"
  t_zstd_nosync=$(best_of "zstd -q -3 -T0 -c '$img' > '$work/z.zst'")
  t_zstd=$(best_of "zstd -q -3 -T0 -c '$img' > '$work/z.zst' && sync '$work/z.zst'")
  BEFORE="rm -f $work/a.bin; sync"
  t_pack=$(best_of "'$bin' archive pack -q --threads $threads --out '$work/a.bin' --name bench --disk /dev/xvda='$img'")
  local zsize asize; zsize=$(size "$work/z.zst"); asize=$(size "$work/a.bin")
  BEFORE="rm -rf $work/x1 $work/x2; mkdir -p $work/x2; sync"
  local t_tar t_extract
  t_tar=$(best_of "zstd -q -dc '$work/a.bin' | tar -x -C '$work/x2' && sync '$work'/x2/*")
  t_extract=$(best_of "'$bin' archive extract -q --threads $threads '$work/a.bin' --out '$work/x1'")
  rm -rf "$work/x1" "$work/x2"
  printf '%s image (%s MiB):\n' "$name" $((bytes >> 20))
  printf '  pack     %6.2fs  %5.0f MiB/s   zstd -3 -T0 + sync %6.2fs  %5.0f MiB/s   throughput ratio %sx   (zstd unsynced %.2fs: %sx)\n' \
    "$t_pack" "$(python3 -c "print($bytes/1048576/$t_pack)")" "$t_zstd" "$(python3 -c "print($bytes/1048576/$t_zstd)")" \
    "$(ratio "$t_zstd" "$t_pack")" "$t_zstd_nosync" "$(ratio "$t_zstd_nosync" "$t_pack")"
  printf '  size     archive %s B   zstd -3 %s B   size ratio %s (target <= 1.02)\n' "$asize" "$zsize" "$(python3 -c "print(f'{$asize/$zsize:.4f}')")"
  printf '  extract  %6.2fs   zstd -dc | tar -x + sync %6.2fs   speed-up %sx\n' "$t_extract" "$t_tar" "$(ratio "$t_tar" "$t_extract")"
}

[ -s "$work/mixed.raw" ] || make_image "$work/mixed.raw" 2 1
[ -s "$work/dense.raw" ] || make_image "$work/dense.raw" 2 0
echo "amistore archive benchmark ($(nproc) CPUs, best of $REPS, $(date -u +%F))"
report mixed "$work/mixed.raw"
report dense "$work/dense.raw"

echo "peak RSS (KiB) as the image grows:"
for gib in 1 8; do
  make_image "$work/rss.raw" "$gib" 1
  rm -f "$work/rss.bin"; rm -rf "$work/rssx"
  /usr/bin/time -f %M -o "$work/time.out" "$bin" archive pack -q --threads "$threads" --out "$work/rss.bin" --name rss --disk /dev/xvda="$work/rss.raw" 2>/dev/null
  p=$(tail -1 "$work/time.out")
  /usr/bin/time -f %M -o "$work/time.out" "$bin" archive extract -q --threads "$threads" "$work/rss.bin" --out "$work/rssx" >/dev/null
  x=$(tail -1 "$work/time.out")
  printf '  %s GiB image: pack %s KiB, extract %s KiB\n' "$gib" "$p" "$x"
  rm -rf "$work/rssx" "$work/rss.raw" "$work/rss.bin"
done
[ -n "$keep_work" ] || rm -rf "$work"
