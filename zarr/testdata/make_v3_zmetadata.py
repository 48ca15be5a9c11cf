#!/usr/bin/env python3
# Writes the v3_zmetadata fixture: usage make_v3_zmetadata.py DIR (DIR = v3_zmetadata).
import json, os, struct, sys
root = sys.argv[1]
bytes_le = [{"name": "bytes", "configuration": {"endian": "little"}}]
nodes = {
    "zarr.json": {"zarr_format": 3, "node_type": "group",
                  "attributes": {"title": "v3 with .zmetadata, as Datamesh ingestion writes it", "Conventions": "CF-1.8"}},
    "g/zarr.json": {"zarr_format": 3, "node_type": "group", "attributes": {"long_name": "Ω group"}},
    "g/temp/zarr.json": {"zarr_format": 3, "node_type": "array", "shape": [4, 6], "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2, 3]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": "NaN", "codecs": bytes_le, "attributes": {"units": "K"}, "dimension_names": ["y", "x"]},
    "v2dot/zarr.json": {"zarr_format": 3, "node_type": "array", "shape": [3, 4], "data_type": "int16",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2, 2]}},
        "chunk_key_encoding": {"name": "v2", "configuration": {"separator": "."}},
        "fill_value": -1, "codecs": bytes_le, "attributes": {}, "dimension_names": ["a", "b"]},
    "scalar/zarr.json": {"zarr_format": 3, "node_type": "array", "shape": [], "data_type": "int64",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": []}},
        "chunk_key_encoding": {"name": "default"},
        "fill_value": 0, "codecs": bytes_le, "attributes": {"note": "0-d"}},
}
def write(rel, data):
    p = os.path.join(root, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data)
for k, v in nodes.items():
    # The canonical form zarr writes, which the mount serves for each entry.
    write(k, json.dumps(v, indent=4, sort_keys=True, ensure_ascii=True, separators=(",", ": ")).encode())
# As JSON.stringify writes it (the ingestion is JavaScript): compact, unescaped.
write(".zmetadata", json.dumps({"zarr_consolidated_format": 1, "metadata": nodes},
                               separators=(",", ":"), ensure_ascii=False).encode())
# Sparse chunks: the others are absent (fill value).
write("g/temp/c/0/0", struct.pack("<6f", 1, 2, 3, 4, 5, 6))
write("g/temp/c/1/1", struct.pack("<6f", 7, 8, 9, 10, 11, 12))
write("v2dot/0.0", struct.pack("<4h", 1, 2, 3, 4))
write("v2dot/1.1", struct.pack("<4h", 5, 6, -7, -8))
write("scalar/c", struct.pack("<q", 42))
