package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// sourceFiles lists the keys of a datasource folder as relative paths.
func sourceFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for rel := range readAll(t, dir) {
		if strings.HasPrefix(filepath.Base(rel), ".dmfs") { // the demo generator's stamp
			continue
		}
		out = append(out, rel)
	}
	sort.Strings(out)
	return out
}

// isMetadata reports whether a key is a Zarr metadata document.
func isMetadata(rel string) bool {
	base := filepath.Base(rel)
	return base == ".zgroup" || base == ".zarray" || base == ".zattrs" || base == "zarr.json" || base == ".zmetadata"
}

// nonFinite matches the bare NaN/Infinity that zarr writes into JSON, which
// encoding/json rejects; both sides are rewritten alike before comparing.
var nonFinite = regexp.MustCompile(`-?Infinity|NaN`)

// assertSameFile compares a file read through the mount with the source:
// chunks and .zmetadata byte for byte, other metadata as JSON values (they
// are served as canonical JSON from the consolidated document).
func assertSameFile(t *testing.T, rel string, want, got []byte) {
	t.Helper()
	if isMetadata(rel) && filepath.Base(rel) != ".zmetadata" {
		var w, g any
		require.NoError(t, json.Unmarshal(nonFinite.ReplaceAll(want, []byte("null")), &w), rel)
		require.NoError(t, json.Unmarshal(nonFinite.ReplaceAll(got, []byte("null")), &g), rel)
		assert.Equal(t, w, g, rel)
		return
	}
	assert.True(t, string(want) == string(got), "%s differs: %d bytes in the source, %d through the mount", rel, len(want), len(got))
}

// arrayCount counts the arrays among files (their .zarray).
func arrayCount(files []string) int {
	n := 0
	for _, f := range files {
		if filepath.Base(f) == ".zarray" {
			n++
		}
	}
	return n
}

func chunkCount(files []string) int {
	n := 0
	for _, f := range files {
		if !isMetadata(f) {
			n++
		}
	}
	return n
}

func sumRoutes(c counters, routes ...string) int64 {
	var n int64
	for _, r := range routes {
		n += c.ByRoute[r]
	}
	return n
}

func TestListingCostsOnlyConsolidatedMetadata(t *testing.T) {
	g := startGateway(t, "")
	m := mountForeground(t, g)

	root := strings.Fields(runCmd(t, "ls", m.Dir))
	assert.Equal(t, []string{"demo_archive", "demo_grid", "demo_large", "demo_sparse", "demo_stations", "demo_table"}, root)

	ds := filepath.Join(m.Dir, "demo_grid")
	g.resetCounters(t)
	runCmd(t, "ls", "-R", ds)
	found := strings.Split(strings.TrimSpace(runCmd(t, "find", ds, "-type", "f")), "\n")
	c := g.counters(t)
	src := sourceFiles(t, filepath.Join(demoDir, "demo_grid"))
	assert.Equal(t, int64(1), c.ByRoute["zarr_get"], "ls -R and find: one .zmetadata request")
	assert.Equal(t, int64(1), c.ZarrKeys["demo_grid/.zmetadata GET"])
	assert.Zero(t, c.ByRoute["zarr_head"], "names only: no HEAD")
	// One listing per chunk folder, so that a sparse array lists only the
	// chunks that exist (demo_grid's arrays are flat: one folder each).
	assert.LessOrEqual(t, c.ByRoute["zarr_list"], int64(arrayCount(src)))
	assert.Positive(t, c.ByRoute["zarr_list"])

	// find sees every key of the source (all demo_grid chunks exist).
	var rels []string
	for _, f := range found {
		if rel, _ := filepath.Rel(ds, f); rel != infoFile {
			rels = append(rels, rel)
		}
	}
	sort.Strings(rels)
	assert.Equal(t, src, rels)

	// ls -lR: at most one HEAD per chunk, never a body.
	g.resetCounters(t)
	out := runCmd(t, "ls", "-laR", ds)
	c = g.counters(t)
	assert.Zero(t, c.ByRoute["zarr_get"], "ls -lR downloads no chunk")
	assert.LessOrEqual(t, c.ByRoute["zarr_head"], int64(chunkCount(src)))
	assert.Contains(t, out, ".zmetadata")

	// Sizes are exact for every stat.
	for _, rel := range src {
		want, err := os.Stat(filepath.Join(demoDir, "demo_grid", rel))
		require.NoError(t, err)
		got, err := os.Stat(filepath.Join(ds, rel))
		require.NoError(t, err, rel)
		if filepath.Base(rel) == ".zmetadata" || !isMetadata(rel) {
			assert.Equal(t, want.Size(), got.Size(), rel)
		}
		assert.False(t, got.IsDir(), rel)
	}
	g.resetCounters(t)
	runCmd(t, "ls", "-laR", ds)
	assert.Zero(t, sumRoutes(g.counters(t), "zarr_get", "zarr_head", "zarr_list"), "a second ls -lR costs nothing")
}

func TestCopyIsByteExactAndCheap(t *testing.T) {
	g := startGateway(t, "")
	m := mountForeground(t, g)
	for _, ds := range []string{"demo_grid", "demo_stations"} {
		t.Run(ds, func(t *testing.T) {
			g.resetCounters(t)
			dst := filepath.Join(t.TempDir(), ds)
			runCmd(t, "cp", "-r", filepath.Join(m.Dir, ds), dst)
			c := g.counters(t)

			src := readAll(t, filepath.Join(demoDir, ds))
			got := readAll(t, dst)
			for rel, want := range src {
				if strings.HasPrefix(filepath.Base(rel), ".dmfs") {
					continue
				}
				b, ok := got[rel]
				if assert.True(t, ok, "%s not copied", rel) {
					assertSameFile(t, rel, want, b)
				}
			}
			chunks := chunkCount(sourceFiles(t, filepath.Join(demoDir, ds)))
			for key, n := range c.ZarrKeys {
				if strings.HasSuffix(key, " GET") {
					assert.Equal(t, int64(1), n, "%s fetched %d times", key, n)
				}
			}
			perChunk := float64(sumRoutes(c, "zarr_get", "zarr_head")-1) / float64(chunks)
			t.Logf("cold cp -r of %s: %d GET, %d HEAD for %d chunks (%.3f requests per chunk)",
				ds, c.ByRoute["zarr_get"], c.ByRoute["zarr_head"], chunks, perChunk)
			assert.LessOrEqual(t, perChunk, 1.1)

			// Warm: reading everything again costs no request.
			g.resetCounters(t)
			runCmd(t, "md5sum", listFiles(t, filepath.Join(m.Dir, ds))...)
			c = g.counters(t)
			assert.Zero(t, sumRoutes(c, "zarr_get", "zarr_head"), "warm re-read")
		})
	}
}

func listFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	require.NoError(t, filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			out = append(out, p)
		}
		return err
	}))
	return out
}

// compareXarray opens each datasource through the mount and from the source
// folder and checks that every variable is identical.
const compareXarray = `
import sys, xarray as xr, numpy as np
mnt, src = sys.argv[1], sys.argv[2]
for ds in sys.argv[3:]:
    a = xr.open_zarr(f"{mnt}/{ds}").load()
    b = xr.open_zarr(f"{src}/{ds}").load()
    xr.testing.assert_identical(a, b)
    for name, v in a.data_vars.items():
        assert v.size > 0, name
    print(ds, "ok", sorted(a.data_vars))
`

func TestXarrayReadsTheSameValues(t *testing.T) {
	requirePrereq(t, pythonOK, "/usr/bin/python3 with xarray")
	g := startGateway(t, "")
	m := mountForeground(t, g)
	g.resetCounters(t)
	out := python(t, compareXarray, m.Dir, demoDir, "demo_grid", "demo_stations", "demo_sparse")
	assert.Equal(t, 3, strings.Count(out, " ok "), out)
	c := g.counters(t)
	for key, n := range c.ZarrKeys {
		if strings.HasSuffix(key, " GET") {
			assert.Equal(t, int64(1), n, "%s fetched %d times: a cold read is one request per chunk", key, n)
		}
	}
	assert.Zero(t, c.ByRoute["zarr_head"], "a reader never pays a HEAD")
	assert.Zero(t, c.ZarrWithoutSession)
}

func TestSparseArrayMissingChunksAreENOENT(t *testing.T) {
	g := startGateway(t, "")
	m := mountForeground(t, g)
	ds := filepath.Join(m.Dir, "demo_sparse")
	src := map[string]bool{}
	for _, rel := range sourceFiles(t, filepath.Join(demoDir, "demo_sparse")) {
		src[rel] = true
	}
	// The listing shows exactly the keys that exist, and each stats.
	var listed []string
	for _, p := range strings.Split(strings.TrimSpace(runCmd(t, "find", ds, "-type", "f")), "\n") {
		rel, _ := filepath.Rel(ds, p)
		_, err := os.Stat(p)
		assert.NoError(t, err, rel)
		if rel != infoFile {
			listed = append(listed, rel)
		}
	}
	sort.Strings(listed)
	assert.Equal(t, sourceFiles(t, filepath.Join(demoDir, "demo_sparse")), listed)
	// Absent chunks of the grid (field is 4x4 chunks, "/" keys) are ENOENT.
	missing := 0
	for i := range 4 {
		for j := range 4 {
			rel := fmt.Sprintf("field/%d/%d", i, j)
			if src[rel] {
				continue
			}
			missing++
			_, err := os.Stat(filepath.Join(ds, rel))
			assert.True(t, errors.Is(err, syscall.ENOENT), "%s: want ENOENT, got %v", rel, err)
		}
	}
	assert.Positive(t, missing, "demo_sparse has absent chunks")
}

func TestChunkWrittenLaterAppearsAfterTheTTL(t *testing.T) {
	// A writer fills a chunk of a sparse array: no metadata changes, only a
	// new key. Like gcsfuse's negative stat cache, its absence is believed
	// for --metadata-ttl, then the chunk appears without a remount.
	dir := t.TempDir()
	runCmd(t, "cp", "-r", filepath.Join(demoDir, "demo_sparse"), dir)
	src := filepath.Join(dir, "demo_sparse")
	g := startGateway(t, dir)
	m := mountForeground(t, g, "--metadata-ttl", "1s")
	ds := filepath.Join(m.Dir, "demo_sparse")

	present := map[string]bool{}
	for _, rel := range sourceFiles(t, src) {
		present[rel] = true
	}
	// demo_sparse's field is a 4x4 grid of chunks with "/" keys; listings
	// show only those that exist, so the absent one is found from the grid.
	var absent, sibling string
	for i := 0; i < 4 && absent == ""; i++ {
		for j := 0; j < 4; j++ {
			rel := fmt.Sprintf("field/%d/%d", i, j)
			if present[rel] {
				continue
			}
			for other := range present {
				if !isMetadata(other) && filepath.Dir(other) == filepath.Dir(rel) {
					absent, sibling = rel, other
					break
				}
			}
			if absent != "" {
				break
			}
		}
	}
	listed := strings.Fields(runCmd(t, "ls", filepath.Join(ds, filepath.Dir(absent))))
	require.NotContains(t, listed, filepath.Base(absent), "a listing shows only chunks that exist")
	require.NotEmpty(t, absent, "demo_sparse has an absent chunk beside a present one")

	_, err := os.Stat(filepath.Join(ds, absent))
	require.True(t, errors.Is(err, syscall.ENOENT), "%s: want ENOENT, got %v", absent, err)
	body, err := os.ReadFile(filepath.Join(src, sibling))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(src, absent), body, 0o644))

	require.Eventually(t, func() bool {
		got, err := os.ReadFile(filepath.Join(ds, absent))
		return err == nil && string(got) == string(body)
	}, 20*time.Second, 200*time.Millisecond, "%s written at the source never appeared through the mount", absent)
}

func TestWritesAreEROFS(t *testing.T) {
	g := startGateway(t, "")
	m := mountForeground(t, g)
	ds := filepath.Join(m.Dir, "demo_grid")
	_, err := os.ReadDir(ds)
	require.NoError(t, err)
	checks := map[string]error{}
	_, checks["create"] = os.Create(filepath.Join(ds, "new"))
	checks["mkdir"] = os.Mkdir(filepath.Join(ds, "d"), 0o755)
	checks["remove"] = os.Remove(filepath.Join(ds, ".zgroup"))
	checks["rename"] = os.Rename(filepath.Join(ds, ".zgroup"), filepath.Join(ds, "g"))
	checks["chmod"] = os.Chmod(filepath.Join(ds, ".zgroup"), 0o777)
	_, checks["open for write"] = os.OpenFile(filepath.Join(ds, ".zgroup"), os.O_WRONLY, 0)
	checks["setxattr"] = syscall.Setxattr(filepath.Join(ds, ".zgroup"), "user.x", []byte("1"), 0)
	for op, err := range checks {
		assert.True(t, errors.Is(err, syscall.EROFS), "%s: want EROFS, got %v", op, err)
	}
}

// TestSessionClosedOnEveryUnmountPath ends a mount each way a user can and
// checks the session was released and the process exited promptly.
func TestSessionClosedOnEveryUnmountPath(t *testing.T) {
	g := startGateway(t, "")
	paths := map[string]func(t *testing.T, m *mount){
		"dmfs unmount": func(t *testing.T, m *mount) {
			out, err := exec.Command(dmfsBin, "unmount", m.Dir).CombinedOutput()
			require.NoError(t, err, string(out))
		},
		"umount": func(t *testing.T, m *mount) { require.NoError(t, syscall.Unmount(m.Dir, 0)) },
		"SIGINT": func(t *testing.T, m *mount) { require.NoError(t, m.proc.cmd.Process.Signal(syscall.SIGINT)) },
		"SIGTERM": func(t *testing.T, m *mount) {
			require.NoError(t, m.proc.cmd.Process.Signal(syscall.SIGTERM))
		},
	}
	if _, err := exec.LookPath("fusermount3"); err == nil {
		paths["fusermount3 -u"] = func(t *testing.T, m *mount) {
			out, err := exec.Command("fusermount3", "-u", m.Dir).CombinedOutput()
			require.NoError(t, err, string(out))
		}
	}
	for name, end := range paths {
		t.Run(name, func(t *testing.T) {
			before := g.counters(t)
			m := mountForeground(t, g)
			runCmd(t, "ls", filepath.Join(m.Dir, "demo_grid"))
			mid := g.counters(t)
			assert.Equal(t, before.Sessions.Acquired+1, mid.Sessions.Acquired, "one session per mount")
			start := time.Now()
			end(t, m)
			assert.Equal(t, 0, m.proc.wait(t, 10*time.Second))
			assert.Less(t, time.Since(start), 5*time.Second, "exit within 5 s")
			assert.False(t, isMounted(m.Dir))
			after := g.counters(t)
			assert.Zero(t, after.Sessions.Open, "no session left open")
			assert.Zero(t, after.ZarrWithoutSession)
		})
	}
}

func TestSessionOfAKilledMountIsClosedByTheNextRun(t *testing.T) {
	// SIGKILL (or the OOM killer) gives dmfs no chance to close its session.
	// The mount records it beside its pid file; the next `dmfs unmount` or
	// `dmfs mount` of the same mount point closes it.
	g := startGateway(t, "")
	killed := func(t *testing.T) *mount {
		m := mountForeground(t, g)
		runCmd(t, "ls", m.Dir)
		require.NoError(t, m.proc.cmd.Process.Kill())
		m.proc.wait(t, 10*time.Second)
		require.Equal(t, int64(1), g.counters(t).Sessions.Open, "the killed mount's session is still open")
		return m
	}
	unmount := func(t *testing.T, mp string, env ...string) (string, int) {
		cmd := exec.Command(dmfsBin, "unmount", mp)
		cmd.Env = append(append(os.Environ(), "DATAMESH_SERVICE="+g.URL), env...)
		out, err := cmd.CombinedOutput()
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			return string(out), exitErr.ExitCode()
		}
		require.NoError(t, err, string(out))
		return string(out), 0
	}

	t.Run("dmfs unmount of the stale mount", func(t *testing.T) {
		m := killed(t)
		out, code := unmount(t, m.Dir, "DATAMESH_TOKEN="+testToken)
		assert.Equal(t, 0, code, out)
		assert.Contains(t, out, "closed the session a killed mount left open")
		assert.False(t, isMounted(m.Dir))
		assert.Zero(t, g.counters(t).Sessions.Open)
	})
	t.Run("without a token it says until when the session stays open", func(t *testing.T) {
		m := killed(t)
		out, code := unmount(t, m.Dir, "DATAMESH_TOKEN=")
		assert.Equal(t, 0, code, out)
		assert.Contains(t, out, "left session")
		assert.Contains(t, out, "DATAMESH_TOKEN")
		assert.False(t, isMounted(m.Dir))
		assert.Equal(t, int64(1), g.counters(t).Sessions.Open)
		// Once a token is at hand, `dmfs unmount` of the (no longer mounted)
		// point still closes it.
		out, code = unmount(t, m.Dir, "DATAMESH_TOKEN="+testToken)
		assert.Equal(t, 7, code, out)
		assert.Contains(t, out, "closed the session a killed mount left open")
		assert.Zero(t, g.counters(t).Sessions.Open)
	})
	t.Run("the next dmfs mount", func(t *testing.T) {
		m := killed(t)
		require.NoError(t, syscall.Unmount(m.Dir, syscall.MNT_DETACH)) // umount -l by hand
		before := g.counters(t).Sessions
		next := mountForegroundAt(t, g, m.Dir)
		runCmd(t, "ls", next.Dir)
		after := g.counters(t).Sessions
		assert.Equal(t, before.Acquired+1, after.Acquired)
		assert.Equal(t, before.Closed+1, after.Closed, "the killed mount's session is closed")
		assert.Equal(t, int64(1), after.Open, "only the new mount's session is open")
		out, code := unmount(t, next.Dir)
		assert.Equal(t, 0, code, out)
		assert.Zero(t, g.counters(t).Sessions.Open)
	})
}

func TestBackgroundMountAndUnmount(t *testing.T) {
	requireFUSE(t)
	g := startGateway(t, "")
	runtime := t.TempDir()
	mp := trackedMountPoint(t)
	cmd := exec.Command(dmfsBin, "mount", "--service", g.URL, mp)
	cmd.Env = append(os.Environ(), "DATAMESH_TOKEN="+testToken, "XDG_RUNTIME_DIR="+runtime)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, string(out))
	assert.True(t, isMounted(mp), "dmfs mount returns only once the mount serves")
	pids, _ := filepath.Glob(filepath.Join(runtime, "dmfs", "*.pid"))
	require.Len(t, pids, 1)
	b, err := os.ReadFile(pids[0])
	require.NoError(t, err)
	var pid int
	_, err = fmt.Sscan(strings.TrimSpace(string(b)), &pid)
	require.NoError(t, err)
	track(pid)
	t.Cleanup(func() { untrack(pid) })

	assert.Contains(t, runCmd(t, "ls", mp), "demo_grid")
	assert.Equal(t, int64(1), g.counters(t).Sessions.Open)

	// Busy: an open file makes unmount fail clearly, not hang.
	f, err := os.Open(filepath.Join(mp, "demo_grid", ".zmetadata"))
	require.NoError(t, err)
	un := exec.Command(dmfsBin, "unmount", mp)
	un.Env = cmd.Env
	out, err = un.CombinedOutput()
	f.Close()
	var exitErr *exec.ExitError
	require.True(t, errors.As(err, &exitErr), "unmount of a busy mount must fail: %s", out)
	assert.Equal(t, 6, exitErr.ExitCode())
	assert.Contains(t, string(out), "busy")

	un = exec.Command(dmfsBin, "unmount", mp)
	un.Env = cmd.Env
	start := time.Now()
	out, err = un.CombinedOutput()
	require.NoError(t, err, string(out))
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.False(t, isMounted(mp))
	assert.False(t, running(pid), "the mount process has exited")
	assert.Zero(t, g.counters(t).Sessions.Open, "session closed before unmount returned")

	// Unmounting what is not a dmfs mount is refused clearly.
	un = exec.Command(dmfsBin, "unmount", mp)
	out, err = un.CombinedOutput()
	require.True(t, errors.As(err, &exitErr), string(out))
	assert.Equal(t, 7, exitErr.ExitCode())
}

func TestStartupErrorsAreClearAndLeaveNoMount(t *testing.T) {
	requireFUSE(t)
	g := startGateway(t, "")
	empty := func(t *testing.T) string {
		return newMountPoint(t)
	}
	notEmpty := func(t *testing.T) string {
		mp := empty(t)
		require.NoError(t, os.WriteFile(filepath.Join(mp, "x"), nil, 0o644))
		return mp
	}
	cases := []struct {
		name     string
		env      []string
		args     []string
		mp       func(t *testing.T) string
		code     int
		contains []string
	}{
		{"no token", []string{"DATAMESH_TOKEN="}, []string{"--service", g.URL}, empty, 3,
			[]string{"DATAMESH_TOKEN", "--token-file", "dmfs serve --demo"}},
		{"bad token", []string{"DATAMESH_TOKEN=wrong-token-value"}, []string{"--service", g.URL}, empty, 3, []string{"session"}},
		{"unreachable gateway", []string{"DATAMESH_TOKEN=" + testToken, "DATAMESH_CONNECT_TIMEOUT=1"},
			[]string{"--service", "http://127.0.0.1:9"}, empty, 4, []string{"127.0.0.1:9", "connection refused"}},
		{"missing mount point", []string{"DATAMESH_TOKEN=" + testToken}, []string{"--service", g.URL},
			func(t *testing.T) string { return filepath.Join(t.TempDir(), "nope") }, 5, []string{"does not exist"}},
		{"mount point not empty", []string{"DATAMESH_TOKEN=" + testToken}, []string{"--service", g.URL}, notEmpty, 5, []string{"not empty"}},
		{"unknown datasource", []string{"DATAMESH_TOKEN=" + testToken}, []string{"--service", g.URL, "--datasource", "no_such_ds"}, empty, 2, []string{"no_such_ds"}},
		{"datasource id with a space", []string{"DATAMESH_TOKEN=" + testToken}, []string{"--service", g.URL, "--datasource", "Bad ID"}, empty, 2,
			[]string{`"Bad ID" not found`}},
		{"session duration 0s", []string{"DATAMESH_TOKEN=" + testToken}, []string{"--service", g.URL, "--session-duration", "0s"}, empty, 2,
			[]string{"--session-duration must be at least 1s"}},
		{"session duration -1h", []string{"DATAMESH_TOKEN=" + testToken}, []string{"--service", g.URL, "--session-duration", "-1h"}, empty, 2,
			[]string{"--session-duration must be at least 1s"}},
		{"readahead -5", []string{"DATAMESH_TOKEN=" + testToken}, []string{"--service", g.URL, "--readahead", "-5"}, empty, 2,
			[]string{"--readahead must not be negative"}},
		{"metadata-ttl -1s", []string{"DATAMESH_TOKEN=" + testToken}, []string{"--service", g.URL, "--metadata-ttl", "-1s"}, empty, 2,
			[]string{"--metadata-ttl must be more than 0"}},
		{"cache-size 0", []string{"DATAMESH_TOKEN=" + testToken}, []string{"--service", g.URL, "--cache-size", "0"}, empty, 2,
			[]string{"--cache-size must be more than 0"}},
		{"log file in a missing folder", []string{"DATAMESH_TOKEN=" + testToken},
			[]string{"--service", g.URL, "--log-file", "/nonexistent-dmfs-folder/dmfs.log"}, empty, 2,
			[]string{"--log-file", "/nonexistent-dmfs-folder/dmfs.log", "no such file or directory"}},
	}
	for _, c := range cases {
		for _, mode := range []string{"background", "foreground"} {
			t.Run(c.name+"/"+mode, func(t *testing.T) {
				mp := c.mp(t)
				args := append([]string{"mount"}, c.args...)
				if mode == "foreground" {
					args = append(args, "--foreground")
				}
				cmd := exec.Command(dmfsBin, append(args, mp)...)
				cmd.Env = append(append(os.Environ(), "XDG_RUNTIME_DIR="+t.TempDir()), c.env...)
				done := make(chan struct{})
				var out []byte
				var err error
				go func() { out, err = cmd.CombinedOutput(); close(done) }()
				select {
				case <-done:
				case <-time.After(60 * time.Second):
					cmd.Process.Kill()
					t.Fatal("dmfs mount hung")
				}
				var exitErr *exec.ExitError
				require.True(t, errors.As(err, &exitErr), "want failure, got %v: %s", err, out)
				assert.Equal(t, c.code, exitErr.ExitCode(), string(out))
				for _, s := range c.contains {
					assert.Contains(t, string(out), s)
				}
				assert.NotContains(t, string(out), testToken)
				assert.NotContains(t, string(out), "wrong-token-value")
				if mode == "background" { // --foreground logs to stderr
					assert.NotContains(t, string(out), "level=", "a message, not log lines")
				}
				assert.Equal(t, 1, strings.Count(string(out), "dmfs mount:"), "one message: %s", out)
				assert.False(t, isMounted(mp))
			})
		}
	}
	assert.Zero(t, g.counters(t).Sessions.Open, "failed mounts leave no session open")
}

func TestFaultsAndSessionExpiryAreSurvived(t *testing.T) {
	requirePrereq(t, pythonOK, "/usr/bin/python3 with xarray")
	g := startGateway(t, "", "--fail-rate", "0.1", "--session-ttl", "10s")
	m := mountForeground(t, g, "--cache-size", "4MiB")
	start := time.Now()
	check := func(ds string) {
		dst := filepath.Join(t.TempDir(), ds)
		runCmd(t, "cp", "-r", filepath.Join(m.Dir, ds), dst)
		got := readAll(t, dst)
		for rel, want := range readAll(t, filepath.Join(demoDir, ds)) {
			if !strings.HasPrefix(filepath.Base(rel), ".dmfs") {
				assertSameFile(t, rel, want, got[rel])
			}
		}
	}
	check("demo_grid")
	python(t, compareXarray, m.Dir, demoDir, "demo_sparse")
	// Outlive the 10 s session, then read data never read before.
	time.Sleep(time.Until(start.Add(12 * time.Second)))
	check("demo_stations")
	c := g.counters(t)
	assert.GreaterOrEqual(t, c.Sessions.Acquired, int64(2), "the session was renewed")
	assert.Positive(t, c.ByStatus["503"], "faults were injected")
	assert.Zero(t, c.ZarrWithoutSession)
}

// running reports whether pid is alive; an exited child of a reparented
// daemon may linger as a zombie, which counts as ended.
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// TestGatewayGoneGivesEIOAndCleanExit: reads fail with EIO after the
// retries (never a hang, never fill values), and the mount still ends
// promptly on SIGTERM even though its session cannot be closed.
func TestGatewayGoneGivesEIOAndCleanExit(t *testing.T) {
	g := startGateway(t, "")
	// A gateway down is waited out for --retry-budget (5 min by default,
	// as the Python client waits out restarts); shortened here.
	m := mountForeground(t, g, "--retry-budget", "15s")
	ds := filepath.Join(m.Dir, "demo_grid")
	runCmd(t, "ls", ds) // metadata loaded while the gateway lives
	chunk := filepath.Join(ds, "u10", "0.0.0")
	g.proc.stop(t)

	done := make(chan error, 1)
	go func() {
		_, err := os.ReadFile(chunk)
		done <- err
	}()
	select {
	case err := <-done:
		assert.True(t, errors.Is(err, syscall.EIO), "want EIO, got %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("read hung with the gateway gone")
	}
	// What is known still answers: names come from the metadata.
	assert.Contains(t, runCmd(t, "ls", ds), "u10")

	require.NoError(t, m.proc.cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, 0, m.proc.wait(t, 10*time.Second))
	assert.False(t, isMounted(m.Dir))
}

// A root mount asks the kernel for 4 MiB of readahead instead of FUSE's 128
// KiB, so that one large read() of a chunk is not 32 round trips in a row.
func TestRootMountRaisesKernelReadahead(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root may set a mount's readahead")
	}
	g := startGateway(t, "")
	m := mountForeground(t, g)
	var st syscall.Stat_t
	require.NoError(t, syscall.Stat(m.Dir, &st))
	ra, err := os.ReadFile(fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev)))
	require.NoError(t, err)
	assert.Equal(t, "4096", strings.TrimSpace(string(ra)))
}

// A root mount hands large chunks to the kernel (FUSE passthrough): their
// opens fetch them, and their reads never reach dmfs. Small files are
// still read through dmfs, keeping their page cache.
func TestRootMountReadsLargeChunksByPassthrough(t *testing.T) {
	m := passthroughMount(t)
	assert.Equal(t, int64(1<<20), dmfsStatus(t, nil, m.Dir).PassthroughMinBytes)
	field := filepath.Join(m.Dir, "demo_large", "field")
	reads := func() int { return strings.Count(m.proc.out.String(), ": READ n") }
	// The log reaches the test a moment late: a lookup of this name, once
	// logged, says that what came before it is in.
	logged := func(sentinel string) {
		_, err := os.Stat(filepath.Join(field, sentinel))
		require.ErrorIs(t, err, os.ErrNotExist)
		m.waitLog(t, sentinel)
	}

	for _, name := range []string{"0.0.0", "1.0.0", "2.0.0", "0.0.0"} {
		got, err := os.ReadFile(filepath.Join(field, name))
		require.NoError(t, err)
		want := mustRead(t, filepath.Join(demoDir, "demo_large", "field", name))
		require.Len(t, want, 4<<20)
		assert.True(t, bytes.Equal(want, got), "%s is byte-exact", name)
	}
	// Two readers of one chunk at once share the kernel's backing file.
	f1, err := os.Open(filepath.Join(field, "1.0.0"))
	require.NoError(t, err)
	f2, err := os.Open(filepath.Join(field, "1.0.0"))
	require.NoError(t, err)
	b1, b2 := make([]byte, 4096), make([]byte, 4096)
	_, err = f1.ReadAt(b1, 4<<20-4096)
	require.NoError(t, err)
	_, err = f2.ReadAt(b2, 4<<20-4096)
	require.NoError(t, err)
	assert.Equal(t, b1, b2)
	require.NoError(t, f1.Close())
	require.NoError(t, f2.Close())
	logged("sentinel-after-chunks")
	assert.Zero(t, reads(), "no READ of a large chunk reached dmfs")

	// A small file is read through dmfs.
	meta, err := os.ReadFile(filepath.Join(field, ".zarray"))
	require.NoError(t, err)
	// Served from .zmetadata, so compared as JSON.
	assert.JSONEq(t, string(mustRead(t, filepath.Join(demoDir, "demo_large", "field", ".zarray"))), string(meta))
	logged("sentinel-after-metadata")
	assert.Positive(t, reads())
	assert.Contains(t, m.proc.out.String(), "PASSTHROUGH", "opens answered for passthrough")
}

// passthroughMount mounts the demo data as root with --fuse-debug, and
// waits until the mount says it uses passthrough.
func passthroughMount(t *testing.T) *mount {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("only root may hand the kernel backing files")
	}
	m := mountForeground(t, startGateway(t, ""), "--fuse-debug")
	m.waitLog(t, "FUSE passthrough")
	return m
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

// --passthrough=false keeps the no-open mode: chunks are read through dmfs.
func TestPassthroughCanBeTurnedOff(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root mounts use passthrough")
	}
	g := startGateway(t, "")
	m := mountForeground(t, g, "--fuse-debug", "--passthrough=false")
	m.waitLog(t, `why="turned off"`)
	assert.Zero(t, dmfsStatus(t, nil, m.Dir).PassthroughMinBytes)
	for _, k := range []string{"2.0.0", "1.0.0"} {
		name := filepath.Join("demo_large", "field", k)
		got, err := os.ReadFile(filepath.Join(m.Dir, name))
		require.NoError(t, err)
		assert.True(t, bytes.Equal(mustRead(t, filepath.Join(demoDir, name)), got))
	}
	_, err := os.Stat(filepath.Join(m.Dir, "demo_large", "sentinel-after-reads"))
	require.ErrorIs(t, err, os.ErrNotExist)
	m.waitLog(t, "sentinel-after-reads")
	out := m.proc.out.String()
	assert.Contains(t, out, ": READ n")
	// go-fuse opens a file of its own at mount; then the first chunk's
	// OPEN is refused, and the kernel opens files itself from then on.
	assert.Equal(t, 2, strings.Count(out, ": OPEN n"), "OPENs")
}

// A reader of many small chunks makes a passthrough mount go back to
// opening files without asking dmfs: large chunks are then read through
// dmfs, byte-exact.
func TestSmallChunksEndPassthrough(t *testing.T) {
	m := passthroughMount(t)
	var small []string
	require.NoError(t, filepath.WalkDir(filepath.Join(demoDir, "demo_grid"), func(path string, d iofs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasPrefix(d.Name(), ".") {
			return err
		}
		small = append(small, path)
		return nil
	}))
	require.Greater(t, len(small), 100, "demo_grid's chunks")
	for _, path := range small[:100] {
		rel, err := filepath.Rel(demoDir, path)
		require.NoError(t, err)
		got, err := os.ReadFile(filepath.Join(m.Dir, rel))
		require.NoError(t, err)
		require.Equal(t, mustRead(t, path), got, rel)
	}
	m.waitLog(t, "files are opened without asking dmfs from now on")
	assert.Zero(t, dmfsStatus(t, nil, m.Dir).PassthroughMinBytes)

	name := filepath.Join("demo_large", "field", "1.0.0")
	got, err := os.ReadFile(filepath.Join(m.Dir, name))
	require.NoError(t, err)
	assert.True(t, bytes.Equal(mustRead(t, filepath.Join(demoDir, name)), got))
	m.waitLog(t, "[1048576 +") // a READ past 1 MiB: of the large chunk
}
