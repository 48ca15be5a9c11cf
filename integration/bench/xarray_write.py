"""Times xarray writing a dataset with to_zarr, through a path (a dmfs
--write mount) or the way the Datamesh Python client writes: a
MutableMapping that POSTs each key as zarr sets it, one key at a time,
within the session, then closes the session with finalise_write=true. The
dataset is read from a local Zarr store into memory first (not timed), so
that both ways see the same serial zarr writes. Prints one JSON object.
Secrets come from the environment only."""
import http.client
import json
import os
import re
import sys
import time
import urllib.parse
from collections.abc import MutableMapping

import xarray as xr


class ClientStore(MutableMapping):
    """oceanum-python's ZarrClient (datamesh/zarr.py) with one keep-alive
    connection instead of a new one per requests.post: GET to read, POST
    to write, DELETE to delete, the HTML listing to iterate, len 0."""

    def __init__(self, base, datasource, headers):
        url = urllib.parse.urlsplit(base)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
        self.prefix = url.path.rstrip("/") + "/zarr/" + datasource
        self.headers = headers
        self.requests = 0

    def _request(self, method, key, body=None):
        self.requests += 1
        path = self.prefix + "/" + urllib.parse.quote(key)
        self.conn.request(method, path, body=body, headers=self.headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def __getitem__(self, key):
        status, body = self._request("GET", key)
        if status >= 300:
            raise KeyError(key)
        return body

    def __setitem__(self, key, value):
        status, body = self._request("POST", key, bytes(value))
        if status >= 300:
            # The official client ignores the answer; a benchmark must not.
            raise OSError("POST %s: status %d: %s" % (key, status, body[:200]))

    def __delitem__(self, key):
        self._request("DELETE", key)

    def __iter__(self):
        status, body = self._request("GET", "")
        if status >= 300:
            return
        for m in re.finditer(r"""<(a|A)\s+(?:[^>]*?\s+)?(href|HREF)=["'](?P<url>[^"']+)""", body.decode()):
            yield m.group("url")

    def __len__(self):
        return 0

    def finalise(self, session):
        self.conn.request("DELETE", "/session/%s?finalise_write=true" % urllib.parse.quote(session), headers=self.headers)
        resp = self.conn.getresponse()
        body = resp.read()
        if resp.status != 204:
            raise OSError("finalise: status %d: %s" % (resp.status, body[:200]))


def main():
    source, way, target = sys.argv[1:4]
    ds = xr.open_zarr(source, consolidated=True).load()
    start = time.monotonic()
    requests = 0
    if way == "path":
        ds.to_zarr(target, mode="w", consolidated=True)
    elif way == "client":
        base, datasource = target.rsplit("/zarr/", 1)
        token, session = os.environ["BENCH_TOKEN"], os.environ["BENCH_SESSION"]
        headers = {
            "X-DATAMESH-TOKEN": token,
            "Authorization": "Token " + token,
            "X-DATAMESH-SESSIONID": session,
        }
        store = ClientStore(base, datasource, headers)
        ds.to_zarr(store, mode="w", consolidated=True)
        store.finalise(session)
        requests = store.requests + 1
    else:
        sys.exit("way must be path or client, not %r" % way)
    print(json.dumps({"seconds": time.monotonic() - start, "requests": requests}))


main()
