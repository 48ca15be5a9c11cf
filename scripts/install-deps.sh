#!/usr/bin/env bash
# Installs the Debian packages dmfs's demo, tests and benchmarks use, if any
# is missing: FUSE, Debian's python3 with xarray/zarr/dask/fsspec, rclone,
# systemd-analyze (to check the unit files in deploy/systemd).
set -euo pipefail
packages=(fuse3 python3-xarray python3-zarr python3-numpy python3-dask python3-fsspec python3-aiohttp rclone rsync systemd)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
sudo=""
[[ $(id -u) == 0 ]] || sudo="sudo"
echo "== installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
