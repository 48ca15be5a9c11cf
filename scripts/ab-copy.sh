#!/usr/bin/env bash
# Compares two dmfs binaries side by side on the same local gateway: for each
# run and each binary in turn, a fresh background mount, a cold `cp -r` of
# demo_grid to /dev/shm, then a warm one, with the CPU the dmfs process used.
# For quick A/B checks of a change; scripts/bench.sh is the full benchmark.
#
#   scripts/ab-copy.sh OLD_DMFS NEW_DMFS [RUNS] [LATENCY] [SIZE]
#   scripts/ab-copy.sh /tmp/dmfs-before ./dmfs 4 0ms 512MiB
set -euo pipefail
old=${1:?old dmfs binary}
new=${2:?new dmfs binary}
runs=${3:-4}
latency=${4:-0ms}
size=${5:-512MiB}

work=$(mktemp -d)
out=$(mktemp -d /dev/shm/dmfs-ab-XXXXXX)
mkdir "$work/mnt"
echo "ab-copy-token" >"$work/token"
gw=""
cleanup() {
	mountpoint -q "$work/mnt" && "$new" unmount "$work/mnt" >/dev/null 2>&1 || true
	[[ -n $gw ]] && kill "$gw" 2>/dev/null && wait "$gw" 2>/dev/null || true
	rm -rf "$work" "$out"
}
trap cleanup EXIT

"$new" serve --demo --demo-size "$size" --latency "$latency" --addr 127.0.0.1:0 \
	--addr-file "$work/addr" --token-file "$work/token" --log-level warn "$work/data" >"$work/serve.log" 2>&1 &
gw=$!
for _ in $(seq 600); do [[ -s $work/addr ]] && break; sleep 0.5; done
[[ -s $work/addr ]] || { echo "gateway did not start: $(cat "$work/serve.log")" >&2; exit 1; }
sync

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
now() { date +%s.%N; }
echo "binary cold_s warm_s dmfs_cpu_ticks (latency $latency, demo size $size)"
for run in $(seq "$runs"); do
	for which in old new; do
		bin=$old; [[ $which == new ]] && bin=$new
		DATAMESH_TOKEN=ab-copy-token "$bin" mount --service "http://$(cat "$work/addr")" "$work/mnt"
		pid=$(pgrep -f -- " mount .*$work/mnt" | head -1)
		t0=$(ticks "$pid"); s=$(now)
		cp -r "$work/mnt/demo_grid" "$out/cold"
		cold=$(echo "$(now) - $s" | bc); t1=$(ticks "$pid")
		s=$(now)
		cp -r "$work/mnt/demo_grid" "$out/warm"
		warm=$(echo "$(now) - $s" | bc)
		"$bin" unmount "$work/mnt"
		rm -rf "$out/cold" "$out/warm"
		printf '%s run %d: %.3f %.3f %d\n' "$which" "$run" "$cold" "$warm" $((t1 - t0))
	done
done
