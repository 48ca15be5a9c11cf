"""Times xarray reading one variable of a Zarr store, through a path (a
dmfs mount) or through fsspec's HTTP mapper (what the Datamesh Python client
does). Prints one JSON object. Secrets come from the environment only."""
import json
import os
import sys
import time

import xarray as xr


def main():
    source, target, var, op = sys.argv[1:5]
    start = time.monotonic()
    if source == "path":
        ds = xr.open_zarr(target, consolidated=True)
    elif source == "fsspec":
        import fsspec

        token = os.environ["BENCH_TOKEN"]
        headers = {
            "X-DATAMESH-TOKEN": token,
            "Authorization": "Token " + token,
            "X-DATAMESH-SESSIONID": os.environ["BENCH_SESSION"],
        }
        ds = xr.open_zarr(fsspec.get_mapper(target, client_kwargs={"headers": headers}), consolidated=True)
    else:
        sys.exit("source must be path or fsspec, not %r" % source)
    if op == "load":
        value = float(ds[var].load().values.ravel()[0])
    elif op == "mean":
        value = float(ds[var].mean().compute())
    else:
        sys.exit("op must be load or mean, not %r" % op)
    print(json.dumps({"seconds": time.monotonic() - start, "value": value}))


main()
