#!/usr/bin/env bash
# Benchmarks dmfs against direct HTTP, rclone mount and xarray over fsspec on
# the same local gateway, large chunks (demo_large: 4 MiB chunks and a 64 MiB
# shard) against direct HTTP and a local cp -r of the same files, the disk
# cache (--cache-dir: cold, from memory, after a remount from disk), and writes
# through a --write mount against direct POSTs and the Python client's way of
# writing, and writes docs/benchmarks.md (issues 7, 18 and 15). Needs the
# packages scripts/test.sh installs (fuse3, rclone, python3-xarray, ...), and
# root for the large and disk cache rows that drop the page cache.
#
#   scripts/bench.sh                          # 1GiB, 2 runs, 20ms, 100ms and 0ms (about half an hour on 2 cores)
#   scripts/bench.sh --size 640MiB --runs 3 --latency 20ms,0ms --out docs/benchmarks.md
#   scripts/bench.sh --size 64MiB --runs 1    # a quick look (a few minutes)
#   scripts/bench.sh --size 64MiB --runs 1 --latency 20ms --only write --out /tmp/bench-write.md   # the writes only (~30 s)
#   scripts/bench.sh --size 64MiB --runs 1 --only read --dmfs-flag=--max-connections=64   # a mount flag on every dmfs row
#   scripts/bench.sh --size 256MiB --runs 1 --latency 20ms,0ms --only large --out /tmp/bench-large.md   # the large chunks only (~1 min)
#   scripts/bench.sh --size 256MiB --runs 1 --latency 20ms --only disk --out /tmp/bench-disk.md   # the disk cache only (~30 s)
#
# The direct-HTTP limit is 64 clients (16 shown beside it); the slow peers
# (rclone, fsspec, the Python client's to_zarr) run at 20ms and 0ms only
# (--peers-latency); the faults row (10% of answers 503/429) at 20ms
# (--faults-latency).
#
# Any flag is passed on to integration/bench (see --help there).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/dmfs" ./cmd/dmfs
go build -o "$bin/bench" ./integration/bench

args=("$@")
if ((${#args[@]} == 0)); then
	args=(--size 1GiB --runs 2 --latency 20ms,100ms,0ms --out docs/benchmarks.md)
fi
"$bin/bench" --dmfs "$bin/dmfs" --command "scripts/bench.sh ${args[*]}" "${args[@]}"
