package fs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSmallFilesSpoolInMemoryLargeOnDisk(t *testing.T) {
	m := mountWrite(t, WriteOptions{WriteBack: time.Hour, SpoolSize: 64 << 20})
	d := filepath.Join(m.dir, "spool_run")
	require.NoError(t, os.Mkdir(d, 0o755))
	small := bytes.Repeat([]byte("s"), 1000)
	large := bytes.Repeat([]byte("L"), memSpoolFile+1)
	require.NoError(t, os.WriteFile(filepath.Join(d, "small"), small, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(d, "large"), large, 0o644))

	w := m.root.opt.writer
	ds := m.root.source("spool_run", false)
	w.mu.Lock()
	smallSpool, largeSpool, memUsed := ds.ov.files["small"].spool, ds.ov.files["large"].spool, w.memUsed
	w.mu.Unlock()
	require.NotNil(t, smallSpool)
	require.NotNil(t, largeSpool)
	_, inMem := smallSpool.bytes()
	assert.True(t, inMem, "a small file is spooled in memory")
	_, inMem = largeSpool.bytes()
	assert.False(t, inMem, "a file past memSpoolFile is moved to disk")
	assert.EqualValues(t, len(small), memUsed, "only the small file holds memory")

	// Both read back exactly before and after their upload.
	for name, want := range map[string][]byte{"small": small, "large": large} {
		got, err := os.ReadFile(filepath.Join(d, name))
		require.NoError(t, err)
		assert.True(t, bytes.Equal(want, got), name)
	}
	sum := m.finish(t)
	require.True(t, sum.OK(), "%+v", sum)
	for name, want := range map[string][]byte{"small": small, "large": large} {
		got, ok := m.store("spool_run").value(name)
		require.True(t, ok, name)
		assert.True(t, bytes.Equal(want, got), name)
		got, err := os.ReadFile(filepath.Join(d, name))
		require.NoError(t, err)
		assert.True(t, bytes.Equal(want, got), name)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	assert.Zero(t, w.memUsed, "uploaded files let their memory go")
	assert.Len(t, w.idle, 1, "the disk spool file is kept for reuse")
}

func TestMemoryShareOfTheSpoolIsBounded(t *testing.T) {
	// A 4 MiB spool keeps at most 1 MiB in memory: the fourth 300 KB file
	// goes to disk.
	m := mountWrite(t, WriteOptions{WriteBack: time.Hour, SpoolSize: 4 << 20})
	d := filepath.Join(m.dir, "share_run")
	require.NoError(t, os.Mkdir(d, 0o755))
	data := bytes.Repeat([]byte("x"), 300_000)
	for _, name := range []string{"a", "b", "c", "d"} {
		require.NoError(t, os.WriteFile(filepath.Join(d, name), data, 0o644))
	}
	w := m.root.opt.writer
	ds := m.root.source("share_run", false)
	w.mu.Lock()
	var inMem int
	for _, name := range []string{"a", "b", "c", "d"} {
		if _, ok := ds.ov.files[name].spool.bytes(); ok {
			inMem++
		}
	}
	memUsed := w.memUsed
	w.mu.Unlock()
	assert.Equal(t, 3, inMem)
	assert.LessOrEqual(t, memUsed, memShare(4<<20))
	sum := m.finish(t)
	require.True(t, sum.OK(), "%+v", sum)
	for _, name := range []string{"a", "b", "c", "d"} {
		got, ok := m.store("share_run").value(name)
		require.True(t, ok)
		assert.True(t, bytes.Equal(data, got), name)
	}
}
