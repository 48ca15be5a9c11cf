package integration

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The disk cache (--cache-dir): remounts read from it, changed stores and
// damaged entries are fetched again, a killed mount leaves nothing wrong,
// and mounts share it within its cap.

// diskStore writes datasource id in data: a consolidated v2 store with one
// uncompressed 1-d array "v" of n chunks of size bytes, filled from seed;
// note goes into the metadata, so another note is another store version.
// It returns the chunk files' bytes by path relative to the mount ("id/v/3").
func diskStore(t *testing.T, data, id string, n, size int, seed uint64, note string) map[string][]byte {
	t.Helper()
	dir := filepath.Join(data, id)
	zarray := fmt.Sprintf(`{"chunks": [%d], "compressor": null, "dtype": "|u1", "fill_value": 0, "filters": null, "order": "C", "shape": [%d], "zarr_format": 2}`, size, n*size)
	zattrs := fmt.Sprintf(`{"_ARRAY_DIMENSIONS": ["x"], "note": %q}`, note)
	files := map[string][]byte{
		".zgroup":    []byte(`{"zarr_format": 2}`),
		".zattrs":    []byte(`{}`),
		"v/.zarray":  []byte(zarray),
		"v/.zattrs":  []byte(zattrs),
		".zmetadata": fmt.Appendf(nil, `{"metadata": {".zgroup": {"zarr_format": 2}, ".zattrs": {}, "v/.zarray": %s, "v/.zattrs": %s}, "zarr_consolidated_format": 1}`, zarray, zattrs),
	}
	chunks := map[string][]byte{}
	r := rand.New(rand.NewPCG(seed, 15))
	for i := range n {
		b := make([]byte, size)
		for j := range b {
			b[j] = byte(r.UintN(256))
		}
		files[fmt.Sprintf("v/%d", i)] = b
		chunks[fmt.Sprintf("%s/v/%d", id, i)] = b
	}
	for rel, body := range files {
		p := filepath.Join(dir, rel)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		replaceFile(t, p, body)
	}
	return chunks
}

// keyRequests counts the gateway's requests of datasource id's keys:
// chunks, and metadata documents.
func keyRequests(c counters, id string) (chunks, metadata int64) {
	for k, n := range c.ZarrKeys {
		key, ok := strings.CutPrefix(k, id+"/")
		if !ok {
			continue
		}
		key, _, _ = strings.Cut(key, " ")
		if isMetadata(key) {
			metadata += n
		} else {
			chunks += n
		}
	}
	return chunks, metadata
}

// stopMount unmounts m, waits for its process to exit cleanly, and returns
// its log.
func stopMount(t *testing.T, m *mount) string {
	t.Helper()
	require.Eventually(t, func() bool { return syscall.Unmount(m.Dir, 0) == nil }, 10*time.Second, 50*time.Millisecond,
		"unmounting %s", m.Dir)
	trackMount(m.Dir, false)
	require.Equal(t, 0, m.proc.wait(t, 15*time.Second), m.proc.out.String())
	return m.proc.out.String()
}

// totals is a figure of the "cache totals" line of a mount's log.
func totals(t *testing.T, log, name string) int64 {
	t.Helper()
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, `msg="cache totals"`) {
			continue
		}
		m := regexp.MustCompile(`\b` + name + `=(\d+)`).FindStringSubmatch(line)
		require.NotNil(t, m, "%s in %s", name, line)
		n, err := strconv.ParseInt(m[1], 10, 64)
		require.NoError(t, err)
		return n
	}
	t.Fatalf("no cache totals in the log:\n%s", log)
	return 0
}

// readPaths reads every path (relative to dir) by name: lookups and reads,
// no listing.
func readPaths(t *testing.T, dir string, paths map[string][]byte) {
	t.Helper()
	for rel, want := range paths {
		got, err := os.ReadFile(filepath.Join(dir, rel))
		require.NoError(t, err, rel)
		require.Equal(t, want, got, "%s: bytes differ", rel)
	}
}

// readTree reads every file of the datasources ids through the mount,
// keyed like diskStore's answer.
func readTree(t *testing.T, dir string, ids ...string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, id := range ids {
		for rel, b := range readAll(t, filepath.Join(dir, id)) {
			out[id+"/"+rel] = b
		}
	}
	return out
}

func TestDiskCacheServesARemount(t *testing.T) {
	data := t.TempDir()
	src := diskStore(t, data, "dc_a", 24, 16<<10, 1, "a")
	for k, v := range diskStore(t, data, "dc_b", 24, 16<<10, 2, "b") {
		src[k] = v
	}
	g := startGateway(t, data)
	cacheDir := filepath.Join(t.TempDir(), "cache")

	first := mountForeground(t, g, "--cache-dir", cacheDir)
	files := readTree(t, first.Dir, "dc_a", "dc_b")
	for k, want := range src {
		require.Equal(t, want, files[k], k)
	}
	log := stopMount(t, first)
	assert.Equal(t, int64(48), totals(t, log, "disk_writes"), "every chunk written to the disk")
	fi, err := os.Stat(cacheDir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())

	g.resetCounters(t)
	env := []string{"XDG_RUNTIME_DIR=" + t.TempDir()}
	again := mountForegroundEnv(t, g, env, "--cache-dir", cacheDir)
	readPaths(t, again.Dir, files)
	c := g.counters(t)
	for _, id := range []string{"dc_a", "dc_b"} {
		chunks, meta := keyRequests(c, id)
		assert.Zero(t, chunks, "%s: no chunk request on a remount", id)
		assert.LessOrEqual(t, meta, int64(1), "%s: at most one metadata request", id)
	}
	st := dmfsStatus(t, env, again.Dir)
	require.NotNil(t, st.Cache)
	require.NotNil(t, st.Cache.Disk, "dmfs status shows the disk tier")
	assert.GreaterOrEqual(t, st.Cache.Disk.Hits, int64(48))
	assert.Equal(t, int64(10<<30), st.Cache.Disk.MaxBytes)
	assert.Positive(t, st.Cache.Disk.Bytes)
	assert.Zero(t, st.Cache.Fetches)
	log = stopMount(t, again)
	assert.GreaterOrEqual(t, totals(t, log, "disk_hits"), int64(48))
	assert.Zero(t, totals(t, log, "fetches"))
}

func TestDiskCacheNeverServesAChangedStore(t *testing.T) {
	data := t.TempDir()
	diskStore(t, data, "dc_a", 12, 8<<10, 1, "first")
	srcB := diskStore(t, data, "dc_b", 12, 8<<10, 2, "b")
	g := startGateway(t, data)
	cacheDir := filepath.Join(t.TempDir(), "cache")
	first := mountForeground(t, g, "--cache-dir", cacheDir)
	readTree(t, first.Dir, "dc_a", "dc_b")
	stopMount(t, first)

	// A new version of dc_a: new .zmetadata, new bytes under the same keys.
	srcA := diskStore(t, data, "dc_a", 12, 8<<10, 3, "second")
	g.resetCounters(t)
	next := mountForeground(t, g, "--cache-dir", cacheDir)
	readPaths(t, next.Dir, srcA)
	readPaths(t, next.Dir, srcB)
	c := g.counters(t)
	chunks, _ := keyRequests(c, "dc_a")
	assert.Equal(t, int64(12), chunks, "every chunk of the changed store is fetched again, once")
	chunks, _ = keyRequests(c, "dc_b")
	assert.Zero(t, chunks, "the unchanged store is read from the disk")
	stopMount(t, next)
}

func TestDiskCacheDamagedEntryIsFetchedAgain(t *testing.T) {
	data := t.TempDir()
	src := diskStore(t, data, "dc_a", 12, 8<<10, 1, "a")
	g := startGateway(t, data)
	cacheDir := filepath.Join(t.TempDir(), "cache")
	first := mountForeground(t, g, "--cache-dir", cacheDir)
	readPaths(t, first.Dir, src)
	stopMount(t, first)

	entries, err := os.ReadDir(filepath.Join(cacheDir, "entries"))
	require.NoError(t, err)
	require.Len(t, entries, 12)
	flipped := filepath.Join(cacheDir, "entries", entries[0].Name())
	f, err := os.OpenFile(flipped, os.O_RDWR, 0)
	require.NoError(t, err)
	b := make([]byte, 1)
	_, err = f.ReadAt(b, 4000)
	require.NoError(t, err)
	b[0] ^= 0x01
	_, err = f.WriteAt(b, 4000)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.NoError(t, os.Truncate(filepath.Join(cacheDir, "entries", entries[1].Name()), 3000))

	g.resetCounters(t)
	next := mountForeground(t, g, "--cache-dir", cacheDir)
	readPaths(t, next.Dir, src)
	chunks, _ := keyRequests(g.counters(t), "dc_a")
	assert.Equal(t, int64(2), chunks, "exactly the two damaged chunks are fetched again")
	log := stopMount(t, next)
	assert.Equal(t, int64(2), totals(t, log, "disk_corrupt"))
	assert.Contains(t, log, "damaged entry removed")
}

func TestDiskCacheAfterAMountKilledDuringACopy(t *testing.T) {
	data := t.TempDir()
	src := diskStore(t, data, "dc_a", 60, 4<<10, 1, "a")
	// Slow enough that the copy is under way when the mount is killed.
	g := startGateway(t, data, "--latency", "30ms")
	cacheDir := filepath.Join(t.TempDir(), "cache")
	first := mountForeground(t, g, "--cache-dir", cacheDir, "--readahead", "0")
	cp := exec.Command("cp", "-r", filepath.Join(first.Dir, "dc_a"), filepath.Join(t.TempDir(), "copy"))
	require.NoError(t, cp.Start())
	cpDone := make(chan struct{})
	go func() {
		cp.Wait()
		close(cpDone)
	}()
	entries := func() int {
		names, _ := os.ReadDir(filepath.Join(cacheDir, "entries"))
		return len(names)
	}
	require.Eventually(t, func() bool { return entries() >= 5 }, 20*time.Second, 5*time.Millisecond)
	require.NoError(t, first.proc.cmd.Process.Kill())
	first.proc.wait(t, 10*time.Second)
	first.unmountQuietly() // the dead mount's connection is dropped; cp fails
	select {
	case <-cpDone:
	case <-time.After(10 * time.Second):
		cp.Process.Kill()
		<-cpDone
	}
	kept := entries()
	require.Less(t, kept, 60, "the mount was killed before the copy ended")

	g.resetCounters(t)
	next := mountForeground(t, g, "--cache-dir", cacheDir)
	readPaths(t, next.Dir, src)
	chunks, _ := keyRequests(g.counters(t), "dc_a")
	assert.LessOrEqual(t, chunks, int64(60-kept), "what the killed mount wrote is read from the disk")
	tmp, err := os.ReadDir(filepath.Join(cacheDir, "tmp"))
	require.NoError(t, err)
	for _, e := range tmp {
		assert.True(t, strings.HasSuffix(e.Name(), ".lock"), "no temp file of the killed mount is left: %s", e.Name())
	}
	assert.Len(t, tmp, 1, "only the live mount's lock")
	log := stopMount(t, next)
	assert.GreaterOrEqual(t, totals(t, log, "disk_hits"), int64(kept), "every entry the killed mount wrote is used")
	assert.Zero(t, totals(t, log, "disk_corrupt"))
}

func TestDiskCacheSharedByTwoMountsWithinItsCap(t *testing.T) {
	data := t.TempDir()
	const chunk = 16 << 10
	src := diskStore(t, data, "dc_a", 48, chunk, 1, "a")
	for k, v := range diskStore(t, data, "dc_b", 48, chunk, 2, "b") {
		src[k] = v
	}
	g := startGateway(t, data)
	cacheDir := filepath.Join(t.TempDir(), "cache")
	const capBytes = 1 << 20 // the data is 1.5 MiB
	args := []string{"--cache-dir", cacheDir, "--cache-dir-size", "1MiB"}
	mounts := []*mount{mountForeground(t, g, args...), mountForeground(t, g, args...)}
	var wg sync.WaitGroup
	for i, m := range mounts {
		ids := []string{"dc_a", "dc_b"}
		if i == 1 {
			ids = []string{"dc_b", "dc_a"}
		}
		wg.Go(func() {
			for round := range 2 {
				got := readTree(t, m.Dir, ids...)
				for k, want := range src {
					assert.Equal(t, want, got[k], "mount %d, round %d: %s", i, round, k)
				}
			}
		})
	}
	wg.Wait()
	var evictions int64
	for _, m := range mounts {
		log := stopMount(t, m)
		evictions += totals(t, log, "disk_evictions")
		assert.Zero(t, totals(t, log, "disk_corrupt"))
	}
	assert.Positive(t, evictions, "the cap was reached")
	du := strings.Fields(runCmd(t, "du", "-sb", cacheDir))
	n, err := strconv.ParseInt(du[0], 10, 64)
	require.NoError(t, err)
	assert.LessOrEqual(t, n, int64(capBytes+chunk+64), "du -sb of the shared folder")

	// What they left is whole: a third mount reads right, partly from it.
	third := mountForeground(t, g, args...)
	readPaths(t, third.Dir, src)
	log := stopMount(t, third)
	assert.Positive(t, totals(t, log, "disk_hits"))
	assert.Zero(t, totals(t, log, "disk_corrupt"))
}

func TestDiskCacheKeepsQueryChunks(t *testing.T) {
	g := startGateway(t, "")
	cacheDir := filepath.Join(t.TempDir(), "cache")
	const name = "demo_archive@time=2016-01-01,2016-03-31@bbox=-60,-30,60,30@vars=sst"
	first := mountForeground(t, g, "--cache-dir", cacheDir)
	files := readTree(t, first.Dir, name)
	require.NotEmpty(t, files)
	stopMount(t, first)

	g.resetCounters(t)
	again := mountForeground(t, g, "--cache-dir", cacheDir)
	readPaths(t, again.Dir, files)
	c := g.counters(t)
	assert.Equal(t, int64(1), c.ByRoute["stage"], "staged once by this mount")
	var chunks, meta int64
	for k, n := range c.QueryKeys { // "QHASH/KEY GET"
		key, _, _ := strings.Cut(k, " ")
		if _, key, _ = strings.Cut(key, "/"); isMetadata(key) {
			meta += n
		} else {
			chunks += n
		}
	}
	assert.Zero(t, chunks, "no query chunk requested again: %v", c.QueryKeys)
	assert.LessOrEqual(t, meta, int64(1), "at most one metadata request")
	log := stopMount(t, again)
	assert.Positive(t, totals(t, log, "disk_hits"))
}

func TestUnsafeCacheDirIsRefused(t *testing.T) {
	g := startGateway(t, "")
	dir := filepath.Join(t.TempDir(), "shared")
	require.NoError(t, os.Mkdir(dir, 0o700))
	require.NoError(t, os.Chmod(dir, 0o777))
	mp := trackedMountPoint(t)
	cmd := exec.Command(dmfsBin, "mount", "--service", g.URL, "--cache-dir", dir, mp)
	cmd.Env = append(os.Environ(), "DATAMESH_TOKEN="+testToken)
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr, string(out))
	assert.Equal(t, 2, exitErr.ExitCode(), string(out))
	assert.Contains(t, string(out), "is writable by group or others")
	assert.False(t, isMounted(mp))
	assert.Zero(t, g.counters(t).Sessions.Acquired, "refused before a session")
}

// Tables, whole or queried, are kept too: a remount asks the gateway
// whether each changed (a 304, no body) and serves the kept copy.
func TestDiskCacheKeepsTables(t *testing.T) {
	g := startGateway(t, "")
	cacheDir := filepath.Join(t.TempDir(), "cache")
	files := map[string][]byte{}
	paths := []string{"demo_table/demo_table.parquet", "demo_table@time=2020-01-05,2020-01-06/demo_table.parquet"}
	first := mountForeground(t, g, "--cache-dir", cacheDir)
	for _, p := range paths {
		b, err := os.ReadFile(filepath.Join(first.Dir, p))
		require.NoError(t, err)
		require.NotEmpty(t, b)
		files[p] = b
	}
	stopMount(t, first)

	g.resetCounters(t)
	again := mountForeground(t, g, "--cache-dir", cacheDir)
	readPaths(t, again.Dir, files)
	c := g.counters(t)
	assert.Equal(t, int64(1), c.ByRouteStatus["data 304"], "the whole table: unchanged, not sent: %v", c.ByRouteStatus)
	assert.Equal(t, int64(1), c.ByRouteStatus["oceanql 304"], "the query's table: unchanged, not sent: %v", c.ByRouteStatus)
	assert.Zero(t, c.ByRouteStatus["data 200"]+c.ByRouteStatus["oceanql 200"])
	log := stopMount(t, again)
	assert.Equal(t, 2, strings.Count(log, "served from the disk cache"), "both tables from the disk")
}
