package mountstat

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The disk tier's figures (--cache-dir) appear in the document, the text
// and the metrics only when the mount has one.
func TestDiskCacheFigures(t *testing.T) {
	snap := sample()
	snap.Cache.Disk = &DiskCache{Bytes: 5 << 20, MaxBytes: 10 << 30, Hits: 7, Writes: 30, Dropped: 2, Evictions: 4, Corrupt: 1}

	b, err := json.Marshal(snap)
	require.NoError(t, err)
	var doc struct {
		Cache map[string]any `json:"cache"`
	}
	require.NoError(t, json.Unmarshal(b, &doc))
	assert.ElementsMatch(t, []string{"bytes", "max_bytes", "hits", "writes", "dropped", "evictions", "corrupt"},
		keys(doc.Cache["disk"].(map[string]any)))

	var text strings.Builder
	WriteText(&text, []Mount{{State: StateRunning, Snapshot: snap}}, time.Now())
	assert.Contains(t, text.String(), "\n  disk      5.0 MiB of 10.0 GiB; 7 hits, 30 writes, 4 evictions, 1 damaged entries dropped\n")

	h := NewMetricsHandler(func() Snapshot { return snap }, snap.Service, snap.Mountpoint)
	fams, _ := scrape(t, h)
	mount := map[string]string{"service": snap.Service, "mountpoint": snap.Mountpoint}
	for name, want := range map[string]float64{
		"dmfs_cache_disk_bytes":                5 << 20,
		"dmfs_cache_disk_max_bytes":            10 << 30,
		"dmfs_cache_disk_hits_total":           7,
		"dmfs_cache_disk_writes_total":         30,
		"dmfs_cache_disk_writes_dropped_total": 2,
		"dmfs_cache_disk_evictions_total":      4,
		"dmfs_cache_disk_corrupt_total":        1,
	} {
		assert.Equal(t, want, value(t, fams, name, mount), name)
	}

	snap.Cache.Disk = nil
	fams, _ = scrape(t, h)
	for name := range fams {
		assert.NotContains(t, name, "disk", "no disk figures without a disk tier")
	}
	text.Reset()
	WriteText(&text, []Mount{{State: StateRunning, Snapshot: snap}}, time.Now())
	assert.NotContains(t, text.String(), "disk")
}
