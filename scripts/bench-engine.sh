#!/usr/bin/env bash
# Benchmarks the embedded engine against `amistore archive pack` of the same
# disks, in one run, and prints the engine's overhead (the machine is noisy, so
# only same-run ratios mean anything). Also reports peak RSS of a store and a
# restore of a 4 GiB image.
#
#   scripts/bench-engine.sh [WORKDIR]      (needs ~16 GiB free)
#
# The image is the archive benchmark's "mixed" 2 GiB image (25% holes, 25%
# random, 50% compressible). `store-image` runs the whole store workflow (the
# state machine in the in-process runner: plan, units spooled and uploaded as
# parts, final part, completion, checks) into a local bucket; `archive pack`
# writes one file. Both make their output durable. Best of $REPS, warm cache.
set -euo pipefail
source "$(dirname "$0")/bench-common.sh"

data=$work/data
export AMISTORE_DATA_DIR=$data
rm -rf "$data"
[ -s "$work/mixed.raw" ] || make_image "$work/mixed.raw" 2 1

import() { "$bin" image import -q --name "$1" --disk /dev/xvda="$2"; }
snapshot_of() {
  "$bin" image list --json | python3 -c "import json,sys; print([i for i in json.load(sys.stdin)['Images'] if i['ImageId']=='$1'][0]['BlockDeviceMappings'][0]['Ebs']['SnapshotId'])"
}

ami=$(import bench "$work/mixed.raw")
disk=$data/snapshots/$(snapshot_of "$ami").raw
cat "$disk" >/dev/null
present=$(du -B1 "$disk" | cut -f1)

BEFORE="rm -f $work/a.bin; sync"
t_pack=$(best_of "'$bin' archive pack -q --threads $threads --out '$work/a.bin' --name bench --disk /dev/xvda='$disk'")
# A bucket holds one copy of an AMI: each run starts from an empty bucket.
BEFORE="rm -rf '$data/s3/bench'; '$bin' bucket create bench >/dev/null; sync"
t_store=$(best_of "'$bin' store-image -q --image-id $ami --bucket bench/p1")
key=p1/$ami.bin
obj=$data/s3/bench/$key
BEFORE="rm -rf $work/x; sync"
t_extract=$(best_of "'$bin' archive extract -q --threads $threads '$obj' --out '$work/x'")
BEFORE="sync"
t_restore=$(best_of "'$bin' restore-image -q --bucket bench --object-key $key --name restored-\$RANDOM\$RANDOM")
rm -rf "$work/x"

echo "amistore engine benchmark ($(nproc) CPUs, best of $REPS, $(date -u +%F))"
printf 'mixed 2 GiB image, %s MiB present:\n' $((present >> 20))
printf '  store-image %6.2fs   archive pack %6.2fs   engine overhead %s%% (target < 15%%)\n' \
  "$t_store" "$t_pack" "$(python3 -c "print(f'{($t_store / $t_pack - 1) * 100:.1f}')")"
printf '  restore-image %6.2fs   archive extract %6.2fs   engine overhead %s%%\n' \
  "$t_restore" "$t_extract" "$(python3 -c "print(f'{($t_restore / $t_extract - 1) * 100:.1f}')")"
printf '  object %s B   pack %s B\n' "$(size "$obj")" "$(size "$work/a.bin")"

echo "peak RSS of a 4 GiB image (KiB):"
make_image "$work/rss.raw" 4 1
ami4=$(import rss4 "$work/rss.raw")
rm -f "$work/rss.raw"
"$bin" bucket create rss >/dev/null
/usr/bin/time -f %M -o "$work/time.out" "$bin" store-image -q --image-id "$ami4" --bucket rss >/dev/null
s_rss=$(tail -1 "$work/time.out")
/usr/bin/time -f %M -o "$work/time.out" "$bin" restore-image -q --bucket rss --object-key "$ami4.bin" --name rss4-restored >/dev/null
r_rss=$(tail -1 "$work/time.out")
printf '  store-image %s KiB, restore-image %s KiB\n' "$s_rss" "$r_rss"
[ -n "$keep_work" ] || rm -rf "$work"
