package integration

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// inArray reports whether a source file lies in (or under) an array's folder
// of store dir: only metadata files and such keys are part of a Zarr store.
func inArray(dir, rel string) bool {
	for d := filepath.Dir(rel); ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(dir, d, ".zarray")); err == nil {
			return true
		}
		if b, err := os.ReadFile(filepath.Join(dir, d, "zarr.json")); err == nil &&
			strings.Contains(strings.ReplaceAll(string(b), " ", ""), `"node_type":"array"`) {
			return true
		}
		if d == "." || d == "/" {
			return false
		}
	}
}

// TestZarrFixturesThroughTheMount serves the stores written by zarr 2.13 and
// the hand-written v3 ones (zarr/testdata) and reads every key through the
// kernel: v2 with and without .zmetadata (walked through the gateway's
// listings), "/" separators, 0-d arrays, groups, v3 "c/" keys, "." and v2
// encodings, sharding.
func TestZarrFixturesThroughTheMount(t *testing.T) {
	src, err := filepath.Abs("../zarr/testdata")
	require.NoError(t, err)
	g := startGateway(t, src)
	m := mountForeground(t, g)
	entries, err := os.ReadDir(src)
	require.NoError(t, err)
	stores := 0
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		stores++
		t.Run(e.Name(), func(t *testing.T) {
			dir := filepath.Join(src, e.Name())
			mnt := filepath.Join(m.Dir, e.Name())
			for rel, want := range readAll(t, dir) {
				got, err := os.ReadFile(filepath.Join(mnt, rel))
				if !isMetadata(rel) && !inArray(dir, rel) {
					assert.True(t, errors.Is(err, syscall.ENOENT), "%s is not part of the store, got %v", rel, err)
					continue
				}
				if assert.NoError(t, err, rel) {
					assertSameFile(t, rel, want, got)
				}
			}
			// Every chunk name the mount lists exists at the source, or is
			// absent there and ENOENT here (fill value).
			listed := strings.Fields(runCmd(t, "find", mnt, "-type", "f"))
			require.NotEmpty(t, listed)
			for _, p := range listed {
				rel, _ := filepath.Rel(mnt, p)
				if _, err := os.Stat(filepath.Join(dir, rel)); err == nil || isMetadata(rel) || rel == infoFile {
					continue // node metadata may come from the consolidated document alone
				}
				_, err := os.Stat(p)
				assert.True(t, errors.Is(err, syscall.ENOENT), "%s listed, absent at the source, got %v", rel, err)
			}
		})
	}
	assert.GreaterOrEqual(t, stores, 7)
}

// compareZarr opens each store with zarr-python through the mount (without
// consolidated metadata, so zarr lists folders and reads every node's
// metadata) and from the source, and compares every array and attribute.
const compareZarr = `
import sys, zarr, numpy as np
mnt, src = sys.argv[1], sys.argv[2]
for name in sys.argv[3:]:
    a, b = zarr.open(f"{mnt}/{name}", mode="r"), zarr.open(f"{src}/{name}", mode="r")
    def arrays(g, prefix=""):
        if isinstance(g, zarr.Array):
            yield prefix, g
            return
        for k, v in g.arrays():
            yield prefix + k, v
        for k, v in g.groups():
            yield from arrays(v, prefix + k + "/")
    got, want = dict(arrays(a)), dict(arrays(b))
    assert sorted(got) == sorted(want), (name, sorted(got), sorted(want))
    for k in want:
        assert dict(got[k].attrs) == dict(want[k].attrs) or str(dict(got[k].attrs)) == str(dict(want[k].attrs)), k
        np.testing.assert_array_equal(got[k][...], want[k][...], err_msg=f"{name}/{k}")
    print(name, "ok", len(want))
`

func TestZarrPythonReadsFixturesThroughTheMount(t *testing.T) {
	requirePrereq(t, pythonOK, "/usr/bin/python3 with zarr")
	src, err := filepath.Abs("../zarr/testdata")
	require.NoError(t, err)
	g := startGateway(t, src)
	m := mountForeground(t, g)
	stores := []string{"v2_groups", "v2_groups_consolidated", "v2_root_array", "v2_xarray"}
	out := python(t, compareZarr, append([]string{m.Dir, src}, stores...)...)
	assert.Equal(t, len(stores), strings.Count(out, " ok "), out)
}
