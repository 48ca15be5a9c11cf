package integration

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sameTree asserts that got holds exactly the files of want, byte for byte.
func sameTree(t *testing.T, want, got string) {
	t.Helper()
	w, g := readAll(t, want), readAll(t, got)
	require.Equal(t, len(w), len(g), "file count")
	for rel, b := range w {
		if isMetadata(rel) && filepath.Base(rel) != ".zmetadata" {
			require.Contains(t, g, rel) // rebuilt: equal as JSON, not always as bytes
			continue
		}
		assert.True(t, string(b) == string(g[rel]), "%s differs", rel)
	}
}

func TestSparseArrayWithEveryTool(t *testing.T) {
	requirePrereq(t, func() bool { _, err := os.Stat("/usr/bin/rsync"); return err == nil }(), "rsync (apt-get install rsync)")
	g := startGateway(t, "")
	m := mountForeground(t, g)
	ds := filepath.Join(m.Dir, "demo_sparse")
	src := filepath.Join(demoDir, "demo_sparse")
	out := t.TempDir()

	// Every tool exits 0: no name in a listing fails to stat.
	runCmd(t, "cp", "-r", ds, filepath.Join(out, "cp"))
	sameTree(t, src, filepath.Join(out, "cp"))
	runCmd(t, "rsync", "-a", ds+"/", filepath.Join(out, "rsync")+"/")
	sameTree(t, src, filepath.Join(out, "rsync"))
	runCmd(t, "tar", "-cf", filepath.Join(out, "s.tar"), "-C", m.Dir, "demo_sparse")
	require.NoError(t, os.Mkdir(filepath.Join(out, "tar"), 0o755))
	runCmd(t, "tar", "-xf", filepath.Join(out, "s.tar"), "-C", filepath.Join(out, "tar"))
	sameTree(t, src, filepath.Join(out, "tar", "demo_sparse"))
	sizes := runCmd(t, "find", ds, "-type", "f", "-printf", "%P %s\n")
	for _, line := range strings.Split(strings.TrimSpace(sizes), "\n") {
		rel, size, _ := strings.Cut(line, " ")
		if rel == infoFile || isMetadata(rel) && rel != ".zmetadata" {
			continue
		}
		st, err := os.Stat(filepath.Join(src, rel))
		require.NoError(t, err, "find listed %s, which the source does not have", rel)
		assert.Equal(t, size, strconv.FormatInt(st.Size(), 10), rel)
	}
	runCmd(t, "du", "-s", ds)

	// zarr-python counts the chunks that exist, as on the source.
	got := python(t, `
import sys, zarr
a, b = zarr.open_array(sys.argv[1] + "/field", mode="r"), zarr.open_array(sys.argv[2] + "/field", mode="r")
print(a.nchunks_initialized, b.nchunks_initialized, a.nbytes_stored == b.nbytes_stored)
`, src, ds)
	f := strings.Fields(got)
	require.Len(t, f, 3, got)
	assert.Equal(t, f[0], f[1], "nchunks_initialized: source vs mount")
	assert.Equal(t, "True", f[2], "nbytes_stored")

	// `ls -a` shows . and ..; fsync of a file opened read-only succeeds.
	assert.Contains(t, strings.Fields(runCmd(t, "ls", "-a", ds)), "..")
	python(t, `
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.fsync(fd)
os.close(fd)
`, filepath.Join(ds, "field", ".zarray"))

	// After a remount, rsync -a finds nothing to copy: sizes and mtimes
	// are the same.
	runCmd(t, "rsync", "-a", filepath.Join(m.Dir, "demo_grid")+"/", filepath.Join(out, "grid")+"/")
	m.unmountQuietly()
	m.proc.wait(t, 10*time.Second)
	m2 := mountForeground(t, g)
	stats := runCmd(t, "rsync", "-a", "--stats", filepath.Join(m2.Dir, "demo_grid")+"/", filepath.Join(out, "grid")+"/")
	assert.Contains(t, stats, "Number of regular files transferred: 0", stats)
}

func TestDottedIDAndV3InZmetadataThroughTheKernel(t *testing.T) {
	dir := t.TempDir()
	runCmd(t, "cp", "-r", filepath.Join(demoDir, "demo_grid"), filepath.Join(dir, "era5.wind_v1.2"))
	runCmd(t, "cp", "-r", filepath.Join("..", "zarr", "testdata", "v3_zmetadata"), filepath.Join(dir, "V3.ingested"))
	g := startGateway(t, dir)
	m := mountForeground(t, g)
	assert.Equal(t, []string{"V3.ingested", "era5.wind_v1.2"}, strings.Fields(runCmd(t, "ls", m.Dir)))
	for _, ds := range []string{"era5.wind_v1.2", "V3.ingested"} {
		got := filepath.Join(t.TempDir(), "copy")
		runCmd(t, "cp", "-r", filepath.Join(m.Dir, ds), got)
		sameTree(t, filepath.Join(dir, ds), got)
	}
}

func TestGoneDatasourceReadsFailWithEIO(t *testing.T) {
	g := startGateway(t, "")
	p := newProxy(t, g)
	m := mountThrough(t, p)
	ds := filepath.Join(m.Dir, "demo_grid")
	_, err := os.ReadFile(filepath.Join(ds, "u10", ".zarray"))
	require.NoError(t, err)
	p.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/zarr/demo_grid/") {
			http.Error(w, `{"detail": "Datasource no longer exists or was deleted within your session"}`, http.StatusGone)
			return true
		}
		return false
	})
	_, err = os.ReadFile(filepath.Join(ds, "u10", "0.0.0"))
	require.True(t, errors.Is(err, syscall.EIO), "a 410 must fail the read (never a fill value): got %v", err)
	m.waitLog(t, "gone (410)")
}

func TestSlowGatewayDrippingAChunkIsReadWhole(t *testing.T) {
	g := startGateway(t, "")
	p := newProxy(t, g)
	want, err := os.ReadFile(filepath.Join(demoDir, "demo_grid", "u10", "0.0.0"))
	require.NoError(t, err)
	const pieces = 8
	p.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/zarr/demo_grid/u10/0.0.0" || r.Method != http.MethodGet {
			return false
		}
		// Each gap (0.5 s) is under the 1 s read timeout; the whole answer
		// takes 4 s, four times the timeout.
		w.Header().Set("Content-Length", strconv.Itoa(len(want)))
		w.WriteHeader(http.StatusOK)
		step := (len(want) + pieces - 1) / pieces
		for off := 0; off < len(want); off += step {
			time.Sleep(500 * time.Millisecond)
			w.Write(want[off:min(off+step, len(want))])
			w.(http.Flusher).Flush()
		}
		return true
	})
	m := mountForegroundEnv(t, &gatewayProc{URL: p.URL}, []string{"DATAMESH_CHUNK_READ_TIMEOUT=1", "DATAMESH_READ_TIMEOUT=None"})
	start := time.Now()
	got, err := os.ReadFile(filepath.Join(m.Dir, "demo_grid", "u10", "0.0.0"))
	require.NoError(t, err)
	assert.True(t, string(want) == string(got), "bytes differ")
	assert.Greater(t, time.Since(start), 3*time.Second, "the drip was slower than the timeout")
}

func TestListerAndReadersUnderGatewayQuirks(t *testing.T) {
	requirePrereq(t, pythonOK, "/usr/bin/python3 with xarray")
	g := startGateway(t, "", "--head-without-length", "--fail-rate", "0.1", "--fail-codes", "502,503,504,429",
		"--session-idle", "2s")
	m := mountForeground(t, g, "--cache-size", "4MiB")
	ds := filepath.Join(m.Dir, "demo_grid")
	// A lister gets exact sizes although HEAD tells none.
	for _, line := range strings.Split(strings.TrimSpace(runCmd(t, "find", ds, "-type", "f", "-printf", "%P %s\n")), "\n") {
		rel, size, _ := strings.Cut(line, " ")
		if rel == infoFile || isMetadata(rel) && rel != ".zmetadata" {
			continue
		}
		st, err := os.Stat(filepath.Join(demoDir, "demo_grid", rel))
		require.NoError(t, err, rel)
		assert.Equal(t, strconv.FormatInt(st.Size(), 10), size, rel)
	}
	// Readers survive mixed faults and sessions ended while idle.
	time.Sleep(2500 * time.Millisecond)
	python(t, compareXarray, m.Dir, demoDir, "demo_stations")
	c := g.counters(t)
	assert.GreaterOrEqual(t, c.Sessions.Acquired, int64(2), "the idle-ended session was replaced")
	var faults int64
	for _, code := range []string{"502", "503", "504", "429"} {
		faults += c.ByStatus[code]
	}
	assert.Positive(t, faults)
	assert.Zero(t, c.ZarrWithoutSession)
}
