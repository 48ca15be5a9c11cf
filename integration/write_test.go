package integration

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The write side of dmfs (DESIGN §3 "Writing", README "Writing"), end to
// end: `dmfs mount --write` through the kernel against `dmfs serve`, whose
// counters give the exact requests and the fate of every staged write.

// writeScript is Debian's xarray/zarr 2.13 doing the writes of the tests:
//
//	local STEPS NEW COPY  the same steps on a local folder, each through a
//	                      DirectoryStore that counts __setitem__ per key
//	                      (printed as JSON, one object per step); checks
//	                      the result against the dataset computed in
//	                      memory; writes the store COPY that tests cp -r
//	step N PATH           step N to_zarr on PATH (1: mode="w", 2: mode="a"
//	                      with append_dim, 3: a region= write)
//	failing PATH DATA     step 1's dataset, with numpy or dask DATA, to
//	                      PATH: prints the errno of the OSError it raises
//	compare GOT WANT...   xarray.testing.assert_identical of each pair
const writeScript = `
import sys, json, errno, collections
import numpy as np, xarray as xr, zarr

CHUNKS = {"time": 4, "lat": 2, "lon": 5}

def make(n, start, off):
    t = (np.datetime64("2020-01-01") + np.arange(start, start + n)).astype("datetime64[ns]")
    temp = np.arange(n * 20, dtype="float32").reshape(n, 4, 5) / 7 + off
    count = np.arange(n * 20, dtype="int32").reshape(n, 4, 5) * 3 + off
    return xr.Dataset(
        {"temp": (("time", "lat", "lon"), temp, {"units": "K"}),
         "count": (("time", "lat", "lon"), count)},
        coords={"time": t, "lat": np.linspace(-10, 10, 4), "lon": np.linspace(0, 40, 5)},
        attrs={"title": "dmfs write test"})

def step(n, store, path):
    if n == 1:
        make(6, 0, 0).chunk(CHUNKS).to_zarr(store, mode="w", consolidated=True)
    elif n == 2:
        make(4, 6, 1000).chunk(CHUNKS).to_zarr(store, mode="a", append_dim="time", consolidated=True)
    else:
        cur = xr.open_zarr(path).isel(time=slice(2, 6))
        region = xr.Dataset({"temp": -cur["temp"], "count": cur["count"] + 7}).drop_vars(["time", "lat", "lon"])
        region.chunk(CHUNKS).to_zarr(store, region={"time": slice(2, 6)}, consolidated=True)

def expected(steps):
    ds = make(6, 0, 0)
    if steps >= 2:
        ds = xr.concat([ds, make(4, 6, 1000)], dim="time")
    if steps >= 3:
        sel = {"time": slice(2, 6)}
        ds["temp"][sel] = -ds["temp"][sel]
        ds["count"][sel] = ds["count"][sel] + 7
    return ds

def make_copy(path):
    ds = xr.Dataset({"wave": (("t", "x"), np.arange(120, dtype="float64").reshape(12, 10) ** 1.5, {"long_name": "wave height"})},
                    coords={"t": np.arange(12), "x": np.arange(10) * 0.5}, attrs={"source": "cp -r"})
    ds.chunk({"t": 4, "x": 5}).to_zarr(path, mode="w", consolidated=False)
    g = zarr.open_group(path, mode="a")
    a = g.create_dataset("nested", shape=(4, 6), chunks=(2, 3), dtype="i2", dimension_separator="/")
    a[...] = np.arange(24, dtype="i2").reshape(4, 6)
    a.attrs["_ARRAY_DIMENSIONS"] = ["a", "b"]
    zarr.consolidate_metadata(path)

cmd = sys.argv[1]
if cmd == "local":
    steps, path, copy = int(sys.argv[2]), sys.argv[3], sys.argv[4]
    counts = []
    class Counting(zarr.storage.DirectoryStore):
        def __setitem__(self, key, value):
            counts[-1][key] += 1
            super().__setitem__(key, value)
        def __delitem__(self, key):
            counts[-1]["DELETE " + key] += 1
            super().__delitem__(key)
    for n in range(1, steps + 1):
        counts.append(collections.Counter())
        step(n, Counting(path), path)
    xr.testing.assert_identical(xr.open_zarr(path).load(), expected(steps))
    make_copy(copy)
    print(json.dumps([dict(c) for c in counts]))
elif cmd == "step":
    step(int(sys.argv[2]), sys.argv[3], sys.argv[3])
    print("step", sys.argv[2], "ok")
elif cmd == "failing":
    try:
        ds = make(6, 0, 0)
        if sys.argv[3] == "dask":
            # Enough chunks that the failure is known before the last of
            # them is closed and renamed (dask writes them after
            # .zmetadata, so only a later close or rename can fail).
            make(160, 0, 0).chunk(CHUNKS).to_zarr(sys.argv[2], mode="w", consolidated=True)
        else:
            enc = {v: {"chunks": (4, 2, 5)} for v in ("temp", "count")}
            ds.to_zarr(sys.argv[2], mode="w", consolidated=True, encoding=enc)
    except OSError as e:
        print("raised", errno.errorcode.get(e.errno, e.errno), e)
    else:
        print("no error")
elif cmd == "compare":
    pairs = sys.argv[2:]
    for got, want in zip(pairs[::2], pairs[1::2]):
        xr.testing.assert_identical(xr.open_zarr(got).load(), xr.open_zarr(want).load())
        print("identical", got)
`

// localWrites runs the to_zarr steps 1..steps on a local folder and returns
// the local store, the store for cp -r, and the keys each step wrote (how
// many times zarr's DirectoryStore set each).
func localWrites(t *testing.T, steps int) (store, copySrc string, perStep []map[string]int64) {
	t.Helper()
	dir := t.TempDir()
	store, copySrc = filepath.Join(dir, "new_ds"), filepath.Join(dir, "copied_ds")
	out := python(t, writeScript, "local", strconv.Itoa(steps), store, copySrc)
	require.NoError(t, json.Unmarshal([]byte(strings.TrimSpace(out)), &perStep), out)
	require.Len(t, perStep, steps)
	for _, c := range perStep {
		for k := range c {
			require.False(t, strings.HasPrefix(k, "DELETE "), "the local steps delete nothing: %v", c)
		}
	}
	return store, copySrc, perStep
}

// writeEnv gives a test its own state folder (pid files, session and result
// records, spool), shared by its mounts and its `dmfs unmount`s.
func writeEnv(t *testing.T) []string {
	t.Helper()
	return []string{"XDG_RUNTIME_DIR=" + t.TempDir()}
}

// mountWrite mounts the gateway with --write (and extra flags) in env.
func mountWrite(t *testing.T, g *gatewayProc, env []string, extra ...string) *mount {
	t.Helper()
	return mountForegroundAtEnv(t, g, newMountPoint(t), env, append([]string{"--write"}, extra...)...)
}

// dmfsUnmount runs `dmfs unmount mp` in env (with the token and the
// gateway, to close a killed mount's session) and returns what it printed
// and its exit code.
func dmfsUnmount(t *testing.T, g *gatewayProc, env []string, mp string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, dmfsBin, "unmount", mp)
	cmd.Env = append(append(os.Environ(), "DATAMESH_TOKEN="+testToken, "DATAMESH_SERVICE="+g.URL), env...)
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return string(out), exitErr.ExitCode()
	}
	require.NoError(t, err, string(out))
	return string(out), 0
}

// keyCounts returns, for datasource ds, the requests per key with the given
// method (GET, HEAD, POST, PUT, DELETE), by key.
func keyCounts(c counters, ds, method string) map[string]int64 {
	out := map[string]int64{}
	for k, n := range c.ZarrKeys {
		i := strings.LastIndexByte(k, ' ')
		if i < 0 || k[i+1:] != method || !strings.HasPrefix(k[:i], ds+"/") {
			continue
		}
		key := k[:i]
		out[strings.TrimPrefix(key, ds+"/")] += n
	}
	return out
}

func total(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// waitPosts waits until the gateway has answered exactly want POSTs for
// datasource ds (the uploads after --write-back), failing at once if there
// are more.
func waitPosts(t *testing.T, g *gatewayProc, ds string, want int64) {
	t.Helper()
	waitFor(t, 60*time.Second, func() (struct{}, bool) {
		got := total(keyCounts(g.counters(t), ds, "POST"))
		require.LessOrEqual(t, got, want, "more POSTs for %s than keys written", ds)
		return struct{}{}, got == want
	})
}

// storeFiles returns the files of a local store by key ("/" separated).
func storeFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for rel, b := range readAll(t, dir) {
		out[filepath.ToSlash(rel)] = b
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// sameStore asserts that the store read at got (through a mount) holds
// exactly the keys of the local store want, byte for byte. The mount's
// .datasource.json is not a key.
func sameStore(t *testing.T, want, got string) {
	t.Helper()
	gotFiles := storeFiles(t, got)
	delete(gotFiles, ".datasource.json")
	sameFiles(t, storeFiles(t, want), gotFiles, got)
}

// sameBytes asserts that two folders hold the same files, byte for byte
// (the gateway's folder after a commit against the local store).
func sameBytes(t *testing.T, want, got string) {
	t.Helper()
	sameFiles(t, storeFiles(t, want), storeFiles(t, got), got)
}

func sameFiles(t *testing.T, want, got map[string][]byte, where string) {
	t.Helper()
	require.Equal(t, sortedKeys(want), sortedKeys(got), "keys of %s", where)
	for rel, b := range want {
		assert.True(t, string(b) == string(got[rel]), "%s/%s differs: %d bytes written, %d read", where, rel, len(b), len(got[rel]))
	}
}

// assertNoPartialKeys asserts that no *.partial key ever reached the
// gateway, by any method.
func assertNoPartialKeys(t *testing.T, c counters) {
	t.Helper()
	for k := range c.ZarrKeys {
		assert.NotContains(t, k, ".partial", "a temporary file reached the gateway: %s", k)
	}
}

// TestToZarrWriteAppendRegionThroughTheMount: to_zarr mode="w"
// (consolidated), then mode="a" with append_dim, then a region= write, and
// cp -r of a local store: one POST per key set (as counted on a local
// DirectoryStore doing the same), no .partial key, no request to read its
// own writes, finalised at unmount, and read back identical and byte-exact.
func TestToZarrWriteAppendRegionThroughTheMount(t *testing.T) {
	requirePrereq(t, pythonOK, "/usr/bin/python3 with xarray, zarr, numpy")
	local, copySrc, perStep := localWrites(t, 3)
	copyFiles := storeFiles(t, copySrc)

	dir := t.TempDir()
	g := startGateway(t, dir)
	env := writeEnv(t)
	m := mountWrite(t, g, env)
	g.resetCounters(t)

	// Each to_zarr call costs exactly one POST per key it set, under the
	// key's final name: waited for after each call, so that a key set by
	// two calls is seen sent twice.
	want := map[string]int64{}
	var sent int64
	newDS := filepath.Join(m.Dir, "new_ds")
	for i, keys := range perStep {
		python(t, writeScript, "step", strconv.Itoa(i+1), newDS)
		for k, n := range keys {
			want[k] += n
			sent += n
		}
		waitPosts(t, g, "new_ds", sent)
		assert.Equal(t, want, keyCounts(g.counters(t), "new_ds", "POST"), "POSTs per key after step %d", i+1)
	}

	// cp -r of a local store: one POST per file.
	runCmd(t, "cp", "-r", copySrc, filepath.Join(m.Dir, "copied_ds"))
	waitPosts(t, g, "copied_ds", int64(len(copyFiles)))
	wantCopy := map[string]int64{}
	for k := range copyFiles {
		wantCopy[k] = 1
	}
	assert.Equal(t, wantCopy, keyCounts(g.counters(t), "copied_ds", "POST"))

	// The mount reads its own writes without a request.
	out := python(t, writeScript, "compare", newDS, local, filepath.Join(m.Dir, "copied_ds"), copySrc)
	assert.Equal(t, 2, strings.Count(out, "identical"), out)
	sameStore(t, local, newDS)
	sameStore(t, copySrc, filepath.Join(m.Dir, "copied_ds"))
	c := g.counters(t)
	assertNoPartialKeys(t, c)
	for _, ds := range []string{"new_ds", "copied_ds"} {
		for _, method := range []string{"GET", "HEAD", "PUT", "DELETE"} {
			assert.Empty(t, keyCounts(c, ds, method), "%s requests for %s while the mount that wrote it reads it", method, ds)
		}
	}
	assert.Zero(t, c.ByRoute["zarr_get"]+c.ByRoute["zarr_head"], "reading its own writes costs no request")
	assert.Zero(t, c.Writes.CommittedKeys, "nothing is final before the session is finalised")
	assert.Zero(t, c.ZarrWithoutSession)

	// dmfs unmount waits for the uploads and finalises.
	uout, code := dmfsUnmount(t, g, env, m.Dir)
	assert.Equal(t, 0, code, uout)
	assert.Contains(t, uout, "writes finalised")
	assert.Equal(t, 0, m.proc.wait(t, 30*time.Second))
	assert.Contains(t, m.proc.out.String(), "writes finalised")
	c = g.counters(t)
	posts := sent + int64(len(copyFiles))
	assert.Equal(t, posts, c.ByRoute["zarr_write"], "one POST per key written, nothing else")
	assert.Equal(t, int64(1), c.Writes.SessionsFinalised)
	assert.Zero(t, c.Writes.SessionsDiscarded)
	assert.Equal(t, posts, c.Writes.StagedKeys)
	assert.Equal(t, int64(len(want)+len(copyFiles)), c.Writes.CommittedKeys, "each key committed once, at its last value")
	assert.Equal(t, posts-int64(len(want)+len(copyFiles)), c.Writes.DiscardedKeys, "earlier values of keys written again")
	assert.Zero(t, c.Sessions.Open)
	assertNoPartialKeys(t, c)

	// The gateway's folder holds exactly what zarr wrote locally.
	sameBytes(t, local, filepath.Join(dir, "new_ds"))
	sameBytes(t, copySrc, filepath.Join(dir, "copied_ds"))

	// A fresh read-only mount reads it all back.
	m2 := mountForeground(t, g)
	assert.Equal(t, []string{"copied_ds", "new_ds"}, strings.Fields(runCmd(t, "ls", m2.Dir)))
	out = python(t, writeScript, "compare", filepath.Join(m2.Dir, "new_ds"), local, filepath.Join(m2.Dir, "copied_ds"), copySrc)
	assert.Equal(t, 2, strings.Count(out, "identical"), out)
	sameStore(t, local, filepath.Join(m2.Dir, "new_ds"))
	sameStore(t, copySrc, filepath.Join(m2.Dir, "copied_ds"))
}

// fixtureStore is a small consolidated store written by zarr 2.13 (groups
// of arrays, 2-d chunks): what the tests without python copy with cp -r.
func fixtureStore(t *testing.T) string {
	t.Helper()
	src, err := filepath.Abs("../zarr/testdata/v2_xarray")
	require.NoError(t, err)
	return src
}

// TestSecondMountSeesWritesOnlyAfterFinalise: another session (a read-only
// mount) sees nothing of a write mount's uploads until they are finalised.
func TestSecondMountSeesWritesOnlyAfterFinalise(t *testing.T) {
	src := fixtureStore(t)
	files := storeFiles(t, src)
	dir := t.TempDir()
	g := startGateway(t, dir)
	env := writeEnv(t)
	a := mountWrite(t, g, env, "--write-back", "0")
	b := mountForeground(t, g, "--metadata-ttl", "1s")
	require.Empty(t, strings.Fields(runCmd(t, "ls", b.Dir)), "the gateway starts empty")

	g.resetCounters(t)
	runCmd(t, "cp", "-r", src, filepath.Join(a.Dir, "fresh_ds"))
	waitPosts(t, g, "fresh_ds", int64(len(files)))
	sameStore(t, src, filepath.Join(a.Dir, "fresh_ds")) // A reads its own writes
	c := g.counters(t)
	assert.Equal(t, int64(len(files)), c.Writes.StagedKeys)
	assert.Zero(t, c.Writes.CommittedKeys)

	// B (another session) does not see the staged datasource: not at once,
	// and not after its catalog was fetched again (its TTL passed).
	notThere := func() {
		t.Helper()
		assert.NotContains(t, strings.Fields(runCmd(t, "ls", b.Dir)), "fresh_ds")
		_, err := os.Stat(filepath.Join(b.Dir, "fresh_ds"))
		assert.True(t, errors.Is(err, syscall.ENOENT), "stat through B before the finalise: want ENOENT, got %v", err)
		_, err = os.Stat(filepath.Join(b.Dir, "fresh_ds", ".zmetadata"))
		assert.True(t, errors.Is(err, syscall.ENOENT), "want ENOENT, got %v", err)
	}
	notThere()
	catalogs := g.counters(t).ByRoute["catalog"]
	waitFor(t, 30*time.Second, func() (struct{}, bool) {
		runCmd(t, "ls", b.Dir)
		return struct{}{}, g.counters(t).ByRoute["catalog"] > catalogs
	})
	notThere()
	assert.Empty(t, keyCounts(g.counters(t), "fresh_ds", "GET"), "B fetched nothing of it")

	out, code := dmfsUnmount(t, g, env, a.Dir)
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "writes finalised")
	c = g.counters(t)
	assert.Equal(t, int64(1), c.Writes.SessionsFinalised)
	assert.Equal(t, int64(len(files)), c.Writes.CommittedKeys)
	assert.Zero(t, c.Writes.DiscardedKeys)
	sameBytes(t, src, filepath.Join(dir, "fresh_ds"))

	// B sees it all after its TTL, without a remount; a new mount at once.
	// (A lookup by name may see it before the catalog listing is fetched
	// again: both within the TTL.)
	waitFor(t, 30*time.Second, func() (struct{}, bool) {
		_, err := os.Stat(filepath.Join(b.Dir, "fresh_ds", ".zmetadata"))
		return struct{}{}, err == nil && slices.Contains(strings.Fields(runCmd(t, "ls", b.Dir)), "fresh_ds")
	})
	sameStore(t, src, filepath.Join(b.Dir, "fresh_ds"))
	b2 := mountForeground(t, g)
	assert.Equal(t, []string{"fresh_ds"}, strings.Fields(runCmd(t, "ls", b2.Dir)))
	sameStore(t, src, filepath.Join(b2.Dir, "fresh_ds"))
}

// TestRetryableWriteFaultsLoseNothing: 10% of writes answered 503 are
// retried; everything is finalised, byte-exact.
func TestRetryableWriteFaultsLoseNothing(t *testing.T) {
	requirePrereq(t, pythonOK, "/usr/bin/python3 with xarray, zarr, numpy")
	local, copySrc, perStep := localWrites(t, 1)
	copyFiles := storeFiles(t, copySrc)
	dir := t.TempDir()
	g := startGateway(t, dir, "--write-fail-rate", "0.1", "--fail-retry-after", "1s")
	env := writeEnv(t)
	m := mountWrite(t, g, env)
	g.resetCounters(t)

	python(t, writeScript, "step", "1", filepath.Join(m.Dir, "new_ds"))
	runCmd(t, "cp", "-r", copySrc, filepath.Join(m.Dir, "copied_ds"))
	out, code := dmfsUnmount(t, g, env, m.Dir)
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "writes finalised")
	assert.Equal(t, 0, m.proc.wait(t, 30*time.Second))

	c := g.counters(t)
	keys := int64(len(perStep[0]) + len(copyFiles))
	injected := c.ByRouteStatus["zarr_write 503"]
	t.Logf("%d keys written, %d injected 503s", keys, injected)
	assert.Positive(t, injected, "faults were injected")
	assert.Equal(t, keys+injected, c.ByRoute["zarr_write"], "each key is sent once more per 503, never more")
	assert.Equal(t, keys, c.ByRouteStatus["zarr_write 200"]+c.ByRouteStatus["zarr_write 201"]+c.ByRouteStatus["zarr_write 204"])
	assert.Equal(t, keys, c.Writes.StagedKeys)
	assert.Equal(t, keys, c.Writes.CommittedKeys)
	assert.Zero(t, c.Writes.DiscardedKeys)
	assert.Equal(t, int64(1), c.Writes.SessionsFinalised)
	assert.Zero(t, c.Writes.SessionsDiscarded)
	assertNoPartialKeys(t, c)
	sameBytes(t, local, filepath.Join(dir, "new_ds"))
	sameBytes(t, copySrc, filepath.Join(dir, "copied_ds"))

	m2 := mountForeground(t, g)
	pout := python(t, writeScript, "compare", filepath.Join(m2.Dir, "new_ds"), local, filepath.Join(m2.Dir, "copied_ds"), copySrc)
	assert.Equal(t, 2, strings.Count(pout, "identical"), pout)
	sameStore(t, local, filepath.Join(m2.Dir, "new_ds"))
	sameStore(t, copySrc, filepath.Join(m2.Dir, "copied_ds"))
}

// TestAKeyThatFailsForGoodIsNotFinalised: a key whose upload always fails
// makes to_zarr raise, dmfs unmount exit 8 naming it, and the gateway
// discard the whole session.
func TestAKeyThatFailsForGoodIsNotFinalised(t *testing.T) {
	requirePrereq(t, pythonOK, "/usr/bin/python3 with xarray, zarr, numpy")
	dir := t.TempDir()
	g := startGateway(t, dir, "--write-fail-keys", "*/temp/0.0.0")
	// numpy: the data is in memory, zarr writes the chunks before
	// .zmetadata. dask (what open_zarr gives, and .chunk()): Debian's
	// xarray writes .zmetadata first, then dask writes the chunks.
	for _, data := range []string{"numpy", "dask"} {
		t.Run(data, func(t *testing.T) {
			env := writeEnv(t)
			m := mountWrite(t, g, env)
			g.resetCounters(t)
			ds := data + "_ds"

			// The chunk's upload fails (500, not retried); to_zarr must
			// raise (README: the call that makes the upload happen
			// returns its error, so to_zarr raises instead of losing data
			// silently).
			out := python(t, writeScript, "failing", filepath.Join(m.Dir, ds), data)
			assert.True(t, strings.HasPrefix(out, "raised EIO"), "to_zarr of %s data must raise EIO: %s", data, out)
			c := g.counters(t)
			posts := keyCounts(c, ds, "POST")
			assert.Equal(t, int64(1), posts["temp/0.0.0"], "a 500 is not retried")
			for key, n := range posts {
				assert.Equal(t, int64(1), n, "%s sent %d times", key, n)
			}

			uout, code := dmfsUnmount(t, g, env, m.Dir)
			assert.Equal(t, 8, code, uout)
			assert.Contains(t, uout, "writes NOT finalised")
			assert.Contains(t, uout, ds+"/temp/0.0.0", "the failed key is named")
			assert.Equal(t, 8, m.proc.wait(t, 30*time.Second))
			assert.Contains(t, m.proc.out.String(), ds+"/temp/0.0.0")

			c = g.counters(t)
			posts = keyCounts(c, ds, "POST")
			assert.Equal(t, int64(1), c.Writes.SessionsDiscarded)
			assert.Zero(t, c.Writes.SessionsFinalised)
			assert.Zero(t, c.Writes.CommittedKeys)
			assert.Equal(t, total(posts)-1, c.Writes.StagedKeys, "every key sent but the failed one was staged")
			assert.Equal(t, c.Writes.StagedKeys, c.Writes.DiscardedKeys, "and discarded")
			assert.Zero(t, c.Sessions.Open)
			assertNoPartialKeys(t, c)
			_, err := os.Stat(filepath.Join(dir, ds))
			assert.True(t, errors.Is(err, os.ErrNotExist), "nothing committed into the gateway's folder: %v", err)

			m2 := mountForeground(t, g)
			assert.NotContains(t, strings.Fields(runCmd(t, "ls", m2.Dir)), ds)
			_, err = os.Stat(filepath.Join(m2.Dir, ds))
			assert.True(t, errors.Is(err, syscall.ENOENT), "want ENOENT, got %v", err)
		})
	}
}

// manyChunkStore writes a consolidated store of one 1-d uint8 array of n
// chunks of 1 KiB: a copy of it takes many uploads.
func manyChunkStore(t *testing.T, n int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "many")
	zarray := `{"chunks": [1024], "compressor": null, "dtype": "|u1", "fill_value": 0, "filters": null, "order": "C", "shape": [` +
		strconv.Itoa(n*1024) + `], "zarr_format": 2}`
	zattrs := `{"_ARRAY_DIMENSIONS": ["x"]}`
	files := map[string]string{
		".zgroup":    `{"zarr_format": 2}`,
		".zattrs":    `{}`,
		"a/.zarray":  zarray,
		"a/.zattrs":  zattrs,
		".zmetadata": `{"metadata": {".zgroup": {"zarr_format": 2}, ".zattrs": {}, "a/.zarray": ` + zarray + `, "a/.zattrs": ` + zattrs + `}, "zarr_consolidated_format": 1}`,
	}
	for i := 0; i < n; i++ {
		files["a/"+strconv.Itoa(i)] = strings.Repeat(string(rune('a'+i%26)), 1024)
	}
	for rel, body := range files {
		p := filepath.Join(dir, filepath.FromSlash(rel))
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
	}
	return dir
}

// TestKilledWriteMountCommitsNothing: SIGKILL mid-copy finalises nothing;
// the next dmfs unmount or dmfs mount there closes the leftover session
// without finalising.
func TestKilledWriteMountCommitsNothing(t *testing.T) {
	src := manyChunkStore(t, 200)
	dir := t.TempDir()
	// Slow, one at a time: the uploads are far from done when the mount
	// is killed.
	g := startGateway(t, dir, "--latency", "50ms")

	// killed mounts a --write mount, copies src into it, and SIGKILLs the
	// mount's process once the gateway has some of the uploads.
	killed := func(t *testing.T, env []string, mp string) *mount {
		m := mountForegroundAtEnv(t, g, mp, env, "--write", "--write-back", "0", "--uploads", "1")
		g.resetCounters(t)
		cp := exec.Command("cp", "-r", src, filepath.Join(m.Dir, "big_ds"))
		require.NoError(t, cp.Start())
		cpDone := make(chan error, 1)
		go func() { cpDone <- cp.Wait() }()
		waitFor(t, 60*time.Second, func() (struct{}, bool) {
			return struct{}{}, g.counters(t).ByRouteStatus["zarr_write 200"] > 0
		})
		require.NoError(t, m.proc.cmd.Process.Kill())
		m.proc.wait(t, 10*time.Second)
		select {
		case err := <-cpDone:
			t.Logf("cp -r after the kill: %v", err)
		case <-time.After(60 * time.Second):
			t.Fatal("cp -r hung after the mount was killed")
		}
		c := g.counters(t)
		assert.Positive(t, c.Writes.StagedKeys)
		assert.Less(t, c.ByRoute["zarr_write"], int64(len(storeFiles(t, src))), "killed before all the uploads")
		assert.Zero(t, c.Writes.CommittedKeys)
		assert.Equal(t, int64(1), c.Sessions.Open, "the killed mount's session is still open")
		return m
	}
	// discarded checks that the killed mount's writes were dropped with
	// its session and that nothing of it is served.
	discarded := func(t *testing.T, open int64) {
		c := g.counters(t)
		assert.Equal(t, open, c.Sessions.Open)
		assert.Zero(t, c.Writes.CommittedKeys)
		assert.Zero(t, c.Writes.SessionsFinalised)
		assert.Equal(t, int64(1), c.Writes.SessionsDiscarded)
		assert.Equal(t, c.Writes.StagedKeys, c.Writes.DiscardedKeys)
		_, err := os.Stat(filepath.Join(dir, "big_ds"))
		assert.True(t, errors.Is(err, os.ErrNotExist), "nothing committed: %v", err)
	}

	t.Run("dmfs unmount of the dead mount", func(t *testing.T) {
		env := writeEnv(t)
		m := killed(t, env, newMountPoint(t))
		out, code := dmfsUnmount(t, g, env, m.Dir)
		assert.Equal(t, 8, code, out)
		assert.Contains(t, out, "writes NOT finalised")
		assert.Contains(t, out, "closed the session a killed mount left open")
		assert.False(t, isMounted(m.Dir))
		discarded(t, 0)
	})
	t.Run("umount -l, then the next dmfs mount", func(t *testing.T) {
		env := writeEnv(t)
		m := killed(t, env, newMountPoint(t))
		require.NoError(t, syscall.Unmount(m.Dir, syscall.MNT_DETACH))
		before := g.counters(t).Sessions
		next := mountForegroundAtEnv(t, g, m.Dir, env, "--write")
		next.waitLog(t, "closed the session a killed mount left open")
		after := g.counters(t).Sessions
		assert.Equal(t, before.Acquired+1, after.Acquired)
		assert.Equal(t, before.Closed+1, after.Closed, "the killed mount's session is closed")
		discarded(t, 1)
		out, code := dmfsUnmount(t, g, env, next.Dir)
		assert.Equal(t, 0, code, out)
		assert.Zero(t, g.counters(t).Sessions.Open)
	})
	t.Run("umount -l, then dmfs unmount", func(t *testing.T) {
		env := writeEnv(t)
		m := killed(t, env, newMountPoint(t))
		require.NoError(t, syscall.Unmount(m.Dir, syscall.MNT_DETACH))
		out, code := dmfsUnmount(t, g, env, m.Dir)
		assert.Contains(t, out, "closed the session a killed mount left open")
		discarded(t, 0)
		// README: "The next dmfs mount or dmfs unmount of that mount
		// point closes the leftover session without finalising, and
		// dmfs unmount exits 8 saying the writes were not finalised."
		assert.Equal(t, 8, code, out)
		assert.Contains(t, out, "NOT finalised")
	})
}

// TestLockedDatasourceIsEBUSY: two write mounts without --allow-multiwrite
// on one datasource: the second gets EBUSY (the gateway's 409).
func TestLockedDatasourceIsEBUSY(t *testing.T) {
	src := fixtureStore(t)
	files := storeFiles(t, src)
	dir := t.TempDir()
	g := startGateway(t, dir)
	env := writeEnv(t)
	a := mountWrite(t, g, env, "--write-back", "0")
	b := mountWrite(t, g, env, "--write-back", "0")
	g.resetCounters(t)

	runCmd(t, "cp", "-r", src, filepath.Join(a.Dir, "shared_ds"))
	waitPosts(t, g, "shared_ds", int64(len(files)))

	// B writes to the datasource A's session is writing: the 409 is EBUSY
	// from the call that uploads.
	require.NoError(t, os.Mkdir(filepath.Join(b.Dir, "shared_ds"), 0o755))
	f, err := os.Create(filepath.Join(b.Dir, "shared_ds", "extra.bin"))
	require.NoError(t, err)
	_, err = f.Write([]byte("written by the second mount"))
	require.NoError(t, err)
	err = f.Sync()
	assert.True(t, errors.Is(err, syscall.EBUSY), "fsync of a write to a locked datasource: want EBUSY, got %v", err)
	f.Close()
	c := g.counters(t)
	assert.Equal(t, int64(1), c.Writes.Conflicts)
	assert.Equal(t, int64(1), c.ByRouteStatus["zarr_write 409"])
	assert.Equal(t, int64(1), keyCounts(c, "shared_ds", "POST")["extra.bin"], "a 409 is not retried")
	b.waitLog(t, "being written by another session")

	bout, bcode := dmfsUnmount(t, g, env, b.Dir)
	assert.Equal(t, 8, bcode, bout)
	assert.Contains(t, bout, "shared_ds/extra.bin")
	aout, acode := dmfsUnmount(t, g, env, a.Dir)
	assert.Equal(t, 0, acode, aout)
	assert.Contains(t, aout, "writes finalised")
	c = g.counters(t)
	assert.Equal(t, int64(1), c.Writes.SessionsFinalised)
	assert.Equal(t, int64(len(files)), c.Writes.CommittedKeys)
	assert.Zero(t, c.Sessions.Open)
	sameBytes(t, src, filepath.Join(dir, "shared_ds"))

	for name, out := range map[string]string{"mount A": a.proc.out.String(), "mount B": b.proc.out.String(),
		"unmount A": aout, "unmount B": bout, "gateway": g.proc.out.String()} {
		assert.NotContains(t, out, testToken, "the token is in the output of %s", name)
	}
}

// TestWriteErrnos: EROFS, EINVAL for a bad new id, EPERM without
// --allow-delete, ENOSPC from a full spool, and rm -r with --allow-delete.
func TestWriteErrnos(t *testing.T) {
	dir := t.TempDir()
	runCmd(t, "cp", "-r", fixtureStore(t), filepath.Join(dir, "victim"))
	victim := storeFiles(t, filepath.Join(dir, "victim"))
	g := startGateway(t, dir)
	env := writeEnv(t)

	t.Run("read-only mount: EROFS", func(t *testing.T) {
		m := mountForeground(t, g)
		err := os.WriteFile(filepath.Join(m.Dir, "victim", "new.bin"), []byte("x"), 0o644)
		assert.True(t, errors.Is(err, syscall.EROFS), "write: want EROFS, got %v", err)
		err = os.Mkdir(filepath.Join(m.Dir, "new_ds"), 0o755)
		assert.True(t, errors.Is(err, syscall.EROFS), "mkdir: want EROFS, got %v", err)
	})

	t.Run("write mount without --allow-delete", func(t *testing.T) {
		// A 64 KiB spool, and uploads that wait 30 s unless room is needed.
		m := mountWrite(t, g, env, "--write-spool-size", "64KiB", "--write-back", "30s")
		g.resetCounters(t)
		for _, id := range []string{"Bad ID", "ab", "UPPER"} {
			err := os.Mkdir(filepath.Join(m.Dir, id), 0o755)
			assert.True(t, errors.Is(err, syscall.EINVAL), "mkdir %q: want EINVAL, got %v", id, err)
		}
		for _, key := range []string{"u10/0.0.0", ".zgroup"} {
			err := os.Remove(filepath.Join(m.Dir, "victim", key))
			assert.True(t, errors.Is(err, syscall.EPERM), "rm %s: want EPERM, got %v", key, err)
		}
		err := os.RemoveAll(filepath.Join(m.Dir, "victim"))
		assert.True(t, errors.Is(err, syscall.EPERM), "rm -r: want EPERM, got %v", err)
		m.waitLog(t, "delete refused")

		// The spool: a second file waits for the first one's upload to
		// free room; a file bigger than the spool is ENOSPC.
		require.NoError(t, os.Mkdir(filepath.Join(m.Dir, "spool_ds"), 0o755))
		body := func(n int, b byte) []byte { return []byte(strings.Repeat(string(rune(b)), n)) }
		require.NoError(t, os.WriteFile(filepath.Join(m.Dir, "spool_ds", "a.bin"), body(40<<10, 'a'), 0o644))
		require.NoError(t, os.WriteFile(filepath.Join(m.Dir, "spool_ds", "b.bin"), body(40<<10, 'b'), 0o644))
		big, err := os.Create(filepath.Join(m.Dir, "spool_ds", "big.bin"))
		require.NoError(t, err)
		_, err = big.Write(body(256<<10, 'c'))
		assert.True(t, errors.Is(err, syscall.ENOSPC), "a file bigger than the spool: want ENOSPC, got %v", err)
		require.NoError(t, big.Close())
		// What an application does with the file it could not write: it
		// removes it, which costs nothing, since it was never uploaded.
		require.NoError(t, os.Remove(filepath.Join(m.Dir, "spool_ds", "big.bin")))

		out, code := dmfsUnmount(t, g, env, m.Dir)
		assert.Equal(t, 0, code, out)
		assert.Contains(t, out, "writes finalised: 2 files uploaded")
		c := g.counters(t)
		assert.Zero(t, c.ByRoute["zarr_delete"])
		assert.Equal(t, map[string]int64{"a.bin": 1, "b.bin": 1}, keyCounts(c, "spool_ds", "POST"))
		assert.Equal(t, int64(2), c.Writes.CommittedKeys)
		assert.Equal(t, body(40<<10, 'a'), storeFiles(t, filepath.Join(dir, "spool_ds"))["a.bin"])
		sameBytes(t, fixtureStore(t), filepath.Join(dir, "victim"))
	})

	t.Run("write mount with --allow-delete: rm -r clears the datasource", func(t *testing.T) {
		m := mountWrite(t, g, env, "--allow-delete")
		g.resetCounters(t)
		runCmd(t, "rm", "-r", filepath.Join(m.Dir, "victim"))
		c := g.counters(t)
		assert.Equal(t, int64(1), c.ZarrKeys["victim/ DELETE"], "DELETE /zarr/victim/")
		dels := keyCounts(c, "victim", "DELETE")
		delete(dels, "")
		for key := range dels {
			assert.Contains(t, victim, key, "a DELETE of a key the store does not have")
		}
		assert.NotContains(t, strings.Fields(runCmd(t, "ls", m.Dir)), "victim")
		out, code := dmfsUnmount(t, g, env, m.Dir)
		assert.Equal(t, 0, code, out)
		c = g.counters(t)
		assert.Equal(t, int64(1), c.Writes.SessionsFinalised)
		assert.Equal(t, c.Writes.DeletesStaged, c.Writes.DeletesCommitted)
		assert.Empty(t, storeFiles(t, filepath.Join(dir, "victim")), "the store is cleared on the gateway")

		// Clearing a store leaves the datasource in the catalog (as on
		// Datamesh, where the catalog entry is deleted apart): a fresh
		// mount shows it as an empty directory, never a name that fails.
		m2 := mountForeground(t, g)
		entries, err := os.ReadDir(filepath.Join(m2.Dir, "victim"))
		require.NoError(t, err, "ls of the cleared datasource through a fresh mount")
		var names []string
		for _, e := range entries {
			if e.Name() != ".datasource.json" {
				names = append(names, e.Name())
			}
		}
		assert.Empty(t, names, "the cleared datasource holds nothing")
	})
}

// TestWritesSpanningSessionRenewals: the gateway ends every session after
// 10 s; a write mount renews it, making what it uploaded so far final (a
// checkpoint), and goes on in the next session. Nothing is lost.
func TestWritesSpanningSessionRenewals(t *testing.T) {
	requirePrereq(t, pythonOK, "/usr/bin/python3 with xarray, zarr, numpy")
	local, copySrc, _ := localWrites(t, 2)
	dir := t.TempDir()
	g := startGateway(t, dir, "--session-ttl", "10s")
	env := writeEnv(t)
	m := mountWrite(t, g, env)
	python(t, writeScript, "step", "1", filepath.Join(m.Dir, "new_ds"))
	// Outlive the first session, then write more.
	acquired := g.counters(t).Sessions.Acquired
	waitFor(t, 60*time.Second, func() (struct{}, bool) {
		return struct{}{}, g.counters(t).Sessions.Acquired > acquired
	})
	runCmd(t, "cp", "-r", copySrc, filepath.Join(m.Dir, "copied_ds"))
	python(t, writeScript, "step", "2", filepath.Join(m.Dir, "new_ds"))
	out, code := dmfsUnmount(t, g, env, m.Dir)
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "writes finalised")
	c := g.counters(t)
	assert.GreaterOrEqual(t, c.Writes.SessionsFinalised, int64(2), "a checkpoint, then the final close")
	assert.Zero(t, c.Writes.SessionsDiscarded)
	assert.Zero(t, c.Writes.DiscardedKeys)
	assert.Zero(t, c.Sessions.Open)
	sameBytes(t, local, filepath.Join(dir, "new_ds"))
	sameBytes(t, copySrc, filepath.Join(dir, "copied_ds"))
	m2 := mountForeground(t, g)
	pout := python(t, writeScript, "compare", filepath.Join(m2.Dir, "new_ds"), local, filepath.Join(m2.Dir, "copied_ds"), copySrc)
	assert.Equal(t, 2, strings.Count(pout, "identical"), pout)
}
