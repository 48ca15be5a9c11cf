#!/usr/bin/env bash
# Builds dmfs and shows its main job offline: a local Datamesh gateway with
# demo data, mounted, listed and read with xarray, then unmounted.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
mnt="$work/datamesh"
gw_pid=""
cleanup() {
	if mountpoint -q "$mnt" 2>/dev/null; then ./dmfs unmount "$mnt" || umount -l "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" 2>/dev/null || true; fi
	[[ -n $gw_pid ]] && kill "$gw_pid" 2>/dev/null && wait "$gw_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

./scripts/install-deps.sh
echo "== building dmfs"
go build -o dmfs ./cmd/dmfs

# A throwaway token for the local gateway; a file keeps it out of argv.
export DATAMESH_TOKEN="demo-token-$RANDOM$RANDOM"
printf '%s\n' "$DATAMESH_TOKEN" >"$work/token"

echo "== dmfs serve --demo (local gateway with generated datasources)"
./dmfs serve --demo --addr 127.0.0.1:0 --addr-file "$work/addr" --token-file "$work/token" "$work/demo" >"$work/serve.log" 2>&1 &
gw_pid=$!
for _ in $(seq 300); do [[ -s $work/addr ]] && break; sleep 0.1; done
[[ -s $work/addr ]] || { cat "$work/serve.log"; exit 1; }
url="http://$(cat "$work/addr")"

echo "== dmfs mount --service $url $mnt"
mkdir -p "$mnt"
./dmfs mount --service "$url" "$mnt"

echo "== ls $mnt"
ls "$mnt"
echo "== ls $mnt/demo_grid"
ls -a "$mnt/demo_grid"
echo "== ls -l $mnt/demo_grid/u10 | head"
ls -l "$mnt/demo_grid/u10" | head -5

echo "== xarray.open_zarr($mnt/demo_grid)"
/usr/bin/python3 - "$mnt/demo_grid" <<'PY'
import sys, xarray as xr
ds = xr.open_zarr(sys.argv[1])
print(ds)
print("mean u10:", float(ds.u10.mean()), ds.u10.attrs.get("units", ""))
PY

echo "== dmfs unmount $mnt"
./dmfs unmount "$mnt"
echo "done: the session was closed on the gateway"
