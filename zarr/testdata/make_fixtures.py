#!/usr/bin/python3
"""Writes the small Zarr v2 stores the zarr package tests read.

Run with Debian's interpreter (python3-zarr 2.x, python3-xarray, numpy):

    /usr/bin/python3 zarr/testdata/make_fixtures.py

It replaces the v2_* folders beside this script. The v3_* folders are written
by hand from the v3 specification and are not touched.
"""

import os
import shutil

import numpy as np
import xarray as xr
import zarr

HERE = os.path.dirname(os.path.abspath(__file__))


def fresh(name):
    path = os.path.join(HERE, name)
    shutil.rmtree(path, ignore_errors=True)
    return path


def xarray_consolidated():
    """What a Datamesh datasource looks like: xarray.to_zarr, consolidated."""
    time = np.array(["2020-01-01T00", "2020-01-01T06", "2020-01-01T12"],
                    dtype="datetime64[ns]")
    lat = np.linspace(-10.0, 10.0, 5)
    lon = np.linspace(100.0, 106.0, 4)
    u10 = np.arange(3 * 5 * 4, dtype="float32").reshape(3, 5, 4)
    u10[1, :, :] = np.nan  # whole chunks of NaN are not written
    ds = xr.Dataset(
        {
            "u10": (("time", "lat", "lon"), u10,
                    {"units": "m s**-1", "long_name": "Vent zonal à 10 m — Ωστ ☃ 🌬"}),
            "mask": (("lat", "lon"), np.ones((5, 4), dtype=">i2")),
        },
        coords={"time": time, "lat": lat, "lon": lon},
        attrs={"title": "Données de test", "big": 2**62 + 1, "ratio": 0.1,
               "tags": ["a", "ü", "\u2028"], "empty": {}},
    )
    ds.u10.encoding = {"chunks": (1, 3, 2), "_FillValue": np.nan, "write_empty_chunks": False}
    path = fresh("v2_xarray")
    ds.to_zarr(path, consolidated=True, mode="w")


def groups(name, consolidate):
    """Nested groups, `/` separators, 0-d, big-endian, missing chunks."""
    path = fresh(name)
    root = zarr.open_group(path, mode="w")
    root.attrs["description"] = "nested groups ✓"
    root.attrs["valid_range"] = [float("nan"), float("inf"), float("-inf"), 1e-300]
    a = root.create_group("a")
    b = a.create_group("b")
    nested = b.create_dataset("nested", shape=(4, 6), chunks=(2, 4), dtype=">f8",
                              dimension_separator="/", fill_value=float("nan"),
                              write_empty_chunks=False)
    data = np.full((4, 6), np.nan)
    data[0:2, 0:4] = 1.5  # only chunk 0/0 holds data
    nested[:] = data
    nested.attrs["note"] = "only chunk 0/0 written"
    scalar = root.create_dataset("scalar", shape=(), dtype="<i8", fill_value=0)
    scalar[...] = 7
    empty = a.create_dataset("empty", shape=(0, 3), chunks=(2, 3), dtype="<u1")
    empty.attrs["zero"] = "length"
    big = root.create_dataset("big", shape=(10,), chunks=(3,), dtype=">u8",
                              fill_value=2**64 - 1, write_empty_chunks=False)
    big[0:3] = 1  # chunks 1..3 stay missing
    if consolidate:
        zarr.consolidate_metadata(path)


def root_array():
    """An array at the root of the store."""
    path = fresh("v2_root_array")
    arr = zarr.open_array(path, mode="w", shape=(5, 3), chunks=(2, 2), dtype="<i4",
                          fill_value=-1)
    arr[:] = np.arange(15, dtype="<i4").reshape(5, 3)
    arr.attrs["at"] = "root"


def main():
    xarray_consolidated()
    groups("v2_groups", consolidate=False)
    groups("v2_groups_consolidated", consolidate=True)
    root_array()


if __name__ == "__main__":
    main()
