package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSplitRequests(t *testing.T) {
	c := counters{
		Requests: 50,
		ByRoute:  map[string]int64{"zarr_get": 99, "zarr_list": 6, "catalog": 1, "datasource": 2, "session_acquire": 1},
		ZarrKeys: map[string]int64{
			"ds/u/0.0 GET":        3,
			"ds/u/0.1 GET":        1,
			"ds/u/0.1 HEAD":       2,
			"ds/u/c/0/1 GET":      1, // a v3 chunk key
			"ds/.zmetadata GET":   1,
			"ds/u/.zarray HEAD":   1,
			"ds/g/zarr.json GET":  1,
			"ds/u/0.2 POST":       4, // a write is not a read
			"ds/.zattrs PUT":      1,
			"ds2/u/0.0 GET":       5, // another datasource
			"ds/u/bad-no-method":  7, // not a key request
			"dsx/.zmetadata HEAD": 1,
		},
		ZarrKeysOther: 2,
	}
	got := splitRequests(c, "ds")
	assert.Equal(t, requestSplit{ChunkGets: 5, ChunkHeads: 2, MetaKeys: 3, Listings: 6, Catalog: 3, Other: 50 - 19, Unsplit: 2}, got)
	assert.Equal(t, int64(3), got.metadata())

	none := splitRequests(counters{Requests: 3}, "ds")
	assert.Equal(t, requestSplit{Other: 3}, none)
}

func TestParseStatus(t *testing.T) {
	const doc = `{"version": 1, "mounts": [
	  {"state": "running", "mountpoint": "/m/a", "cache": {"bytes": 1, "max_bytes": 2, "memory_file_peak_bytes": 5, "disk": {"bytes": 10, "max_bytes": 20, "hits": 7, "writes": 3, "dropped": 1, "evictions": 2, "corrupt": 4}}},
	  {"state": "running", "mountpoint": "/m/nodisk", "cache": {"bytes": 1, "max_bytes": 2}},
	  {"state": "dead", "mountpoint": "/m/dead", "problem": "its process is gone"}
	]}`
	st, err := parseStatus([]byte(doc), "/m/a")
	require.NoError(t, err)
	assert.Equal(t, int64(5), st.Cache.MemoryFilePeakBytes)
	got, err := diskFiguresOf(st)
	require.NoError(t, err)
	assert.Equal(t, diskFigures{Hits: 7, Writes: 3, Dropped: 1, Evictions: 2, Corrupt: 4}, got)

	for mnt, want := range map[string]string{
		"/m/nodisk": "reports no disk cache",
		"/m/dead":   "is dead: its process is gone",
		"/m/other":  "no mount at /m/other",
	} {
		st, err := parseStatus([]byte(doc), mnt)
		if err == nil {
			_, err = diskFiguresOf(st)
		}
		assert.ErrorContains(t, err, want, mnt)
	}
	_, err = parseStatus([]byte("dmfs: not json"), "/m/a")
	assert.ErrorContains(t, err, "dmfs status")
}

func TestDiskFiguresSub(t *testing.T) {
	a := diskFigures{Hits: 10, Writes: 8, Dropped: 3, Evictions: 2, Corrupt: 1}
	b := diskFigures{Hits: 4, Writes: 8, Dropped: 1, Evictions: 0, Corrupt: 1}
	assert.Equal(t, diskFigures{Hits: 6, Dropped: 2, Evictions: 2}, a.sub(b))
}

func TestFolderFiles(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "entries"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "lock"), make([]byte, 8), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "entries", "ab"), make([]byte, 100), 0o600))
	require.NoError(t, os.Symlink("lock", filepath.Join(dir, "link")))
	files, total, err := folderFiles(dir)
	require.NoError(t, err)
	assert.Equal(t, []string{filepath.Join(dir, "entries", "ab"), filepath.Join(dir, "lock")}, files, "regular files only")
	assert.Equal(t, int64(108), total)
	_, _, err = folderFiles(filepath.Join(dir, "missing"))
	assert.Error(t, err)
}

// diskRun adds one run's disk rows to r: remount is the remount's sample.
func diskRun(r *latencyResult, remount sample) {
	const mb = 1e6
	direct := sample{Seconds: 0.5, Bytes: 100 * mb, Requests: 110, Chunks: 100, SplitDS: "ds",
		Split: requestSplit{ChunkGets: 100, MetaKeys: 10}}
	cold := sample{Seconds: 2, Bytes: 100 * mb, Requests: 108, Chunks: 100, SplitDS: "ds",
		Split:        requestSplit{ChunkGets: 100, MetaKeys: 1, Listings: 6, Catalog: 1},
		DiskMeasured: true, Disk: diskFigures{Writes: 100}, RSS: 150 << 20, Checked: true}
	warm := sample{Seconds: 1, Bytes: 100 * mb, Chunks: 100, SplitDS: "ds", DiskMeasured: true, RSS: 150 << 20, Checked: true,
		PageCacheMeasured: true, PageCacheBefore: 100 * mb}
	r.add(directName(64, true), direct)
	r.add(mDCold, cold)
	r.add(mDWarm, warm)
	r.add(mDRemount, remount)
	r.addRatio(ratioDRemountWarm, throughput(remount), throughput(warm))
	r.addRatio(ratioDColdLimit, throughput(cold), throughput(direct))
}

func TestDiskTargetsAndTable(t *testing.T) {
	const mb = 1e6
	good := sample{Seconds: 1.6, Bytes: 100 * mb, Requests: 8, Chunks: 100, SplitDS: "ds",
		Split: requestSplit{MetaKeys: 1, Catalog: 1, Other: 6}, DiskMeasured: true, Disk: diskFigures{Hits: 100}, RSS: 140 << 20,
		Checked: true, PageCacheMeasured: true, PageCacheBefore: 4096, FolderBytes: 100 * mb}

	r := newLatencyResult(20 * time.Millisecond)
	diskRun(r, good)
	diskRun(r, good)
	met := map[string]bool{}
	for _, tg := range r.diskTargets() {
		met[tg.What] = tg.Met
	}
	assert.Equal(t, map[string]bool{
		ratioDRemountWarm:                    true, // 0.625x
		mDRemount + ": chunk requests":       true,
		mDRemount + ": " + targetDMeta:       true,
		mDWarm + ": gateway requests":        true,
		mDWarm + ": " + targetDMountDropped:  true,
		mDRemount + ": " + targetDDirDropped: true,
		mDCold + ": " + targetDExact:         true,
		mDWarm + ": " + targetDExact:         true,
		mDRemount + ": " + targetDExact:      true,
	}, met)

	// One bad run of each kind fails its target only.
	bad := good
	bad.Seconds = 2.5 // 0.4x the warm throughput
	bad.Split = requestSplit{ChunkGets: 3, ChunkHeads: 1, MetaKeys: 3, Listings: 6, Catalog: 1}
	bad.PageCacheAfter = 4096
	bad.Check = "page cache not dropped: 4096 bytes of the cache folder's files resident (disk (/tmp))"
	r = newLatencyResult(20 * time.Millisecond)
	diskRun(r, good)
	diskRun(r, bad)
	met = map[string]bool{}
	got := map[string]string{}
	for _, tg := range r.diskTargets() {
		met[tg.What], got[tg.What] = tg.Met, tg.Got
	}
	assert.False(t, met[ratioDRemountWarm])
	assert.Equal(t, "0.51x (0.40–0.62)", got[ratioDRemountWarm])
	assert.False(t, met[mDRemount+": chunk requests"])
	assert.Equal(t, "2 (0–4)", got[mDRemount+": chunk requests"])
	assert.False(t, met[mDRemount+": "+targetDMeta])
	assert.Equal(t, "2 (1–3)", got[mDRemount+": "+targetDMeta])
	assert.False(t, met[mDRemount+": "+targetDDirDropped])
	assert.Equal(t, "in 1 of 2 runs", got[mDRemount+": "+targetDDirDropped])
	assert.True(t, met[mDRemount+": "+targetDExact], "a page cache failure is not a byte failure")
	assert.True(t, met[mDWarm+": gateway requests"])

	// A copy that differs, and a split that missed key requests.
	differs := good
	differs.Check = "copy differs from the direct fetch: 1 of 100 files differ: u/0.0"
	differs.Split.Unsplit = 5
	r = newLatencyResult(20 * time.Millisecond)
	diskRun(r, differs)
	met = map[string]bool{}
	for _, tg := range r.diskTargets() {
		met[tg.What] = tg.Met
	}
	assert.False(t, met[mDRemount+": "+targetDExact])
	assert.False(t, met[mDRemount+": chunk requests"], "no chunk request counted, but the count is incomplete")

	var buf bytes.Buffer
	r.writeDiskTable(&buf, diskOrder(64))
	out := buf.String()
	assert.Contains(t, out, "| "+directName(64, true)+" | 0.50 | 200.0 | 110 (100, 0, 10, 0, 0, 0) | — | — | — |")
	assert.Contains(t, out, "| "+mDCold+" | 2.00 | 50.0 | 108 (100, 0, 1, 6, 1, 0) | 0 / 100 / 0 | 150 | ok |")
	assert.Contains(t, out, "| "+mDWarm+" | 1.00 | 100.0 | 0 (0, 0, 0, 0, 0, 0) | 0 / 0 / 0 | 150 | ok; page cache 100.0 MB → 0 |")
	assert.Contains(t, out, "| "+mDRemount+" | 1.60 | 62.5 | 8 (0, 0, 1, 0, 1, 6); split incomplete: 5 key requests not counted per key | 100 / 0 / 0 | 140 | "+
		"**failed in 1 of 1 runs**: copy differs from the direct fetch: 1 of 100 files differ: u/0.0; page cache 4096 B → 0; cache folder 100.0 MB |")
	assert.Contains(t, out, "| "+ratioDRemountWarm+" | 0.62x |")
	assert.Contains(t, out, "| "+ratioDColdLimit+" | 0.25x |")
	assert.NotContains(t, out, ratioDRemountCold, "no figure, no ratio row")
	assert.Less(t, strings.Index(out, mDCold+" |"), strings.Index(out, mDRemount+" |"))
}

func TestWriteDiskSection(t *testing.T) {
	b := &bench{o: &options{clients: []int{16, 64}, size: "64MiB"}, work: t.TempDir(), keys: []string{".zmetadata", "u/0.0"},
		chunks: 1, wireBytes: 2e6, cacheLarge: 1 << 30}
	var buf bytes.Buffer
	read := newLatencyResult(20 * time.Millisecond)
	b.writeDiskSection(&buf, []*latencyResult{read})
	assert.Empty(t, buf.String(), "no disk rows, no section")

	read.Disk = newLatencyResult(20 * time.Millisecond)
	diskRun(read.Disk, sample{Seconds: 1, Bytes: 100e6, SplitDS: "ds", Checked: true, DiskMeasured: true, PageCacheMeasured: true})
	b.disk.dropErr = errors.New("open /proc/sys/vm/drop_caches: permission denied")
	b.writeDiskSection(&buf, []*latencyResult{read, newLatencyResult(0)})
	out := buf.String()
	assert.Contains(t, out, "## Disk cache (`--cache-dir`)\n")
	assert.Contains(t, out, "`--cache-size 1024MiB --cache-dir DIR --cache-dir-size 1024MiB`")
	assert.Contains(t, out, "with 64 clients")
	assert.Contains(t, out, "The page cache could not be dropped (open /proc/sys/vm/drop_caches: permission denied)")
	assert.Equal(t, 1, strings.Count(out, "### Disk cache, gateway latency"), "a latency without disk rows has no table")
	assert.Contains(t, out, "### Disk cache, gateway latency 20ms\n")
	assert.Contains(t, out, "| "+ratioDRemountWarm+" | ≥ 0.5x | 1.00x | yes |")
}
