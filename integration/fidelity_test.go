package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
		if isMetadata(rel) && rel != ".zmetadata" {
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
