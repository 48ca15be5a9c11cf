package fs

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWriteStatsFollowTheUploads(t *testing.T) {
	_, ok := (&Root{}).WriteStats()
	assert.False(t, ok, "a read-only mount has no uploads")

	// Uploads wait out the write-back delay, so they are seen pending.
	m := mountWrite(t, WriteOptions{WriteBack: time.Hour, SpoolSize: 1 << 20})
	st, ok := m.root.WriteStats()
	require.True(t, ok)
	assert.Equal(t, WriteStats{SpoolMax: 1 << 20}, st)

	d := filepath.Join(m.dir, "stat_run")
	require.NoError(t, os.Mkdir(d, 0o755))
	m.store("stat_run").set(func(s *writeStore) { s.failKeys = "bad" })
	makeTree(t, d, map[string]string{"a": "aaaa", "b": "bbbbbb", "bad": "x"})
	st, _ = m.root.WriteStats()
	assert.Equal(t, 3, st.Pending)
	assert.Zero(t, st.Uploaded)
	assert.Zero(t, st.Failed)
	assert.Positive(t, st.SpoolBytes, "written bytes wait in the spool")

	m.finish(t)
	st, _ = m.root.WriteStats()
	assert.Equal(t, WriteStats{Uploaded: 2, Failed: 1, SpoolMax: 1 << 20}, st)
}
