package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestParseParts(t *testing.T) {
	for _, c := range []struct {
		in      string
		want    []string
		wantErr string
	}{
		{"", []string{"read", "large", "disk", "write"}, ""},
		{"large", []string{"large"}, ""},
		{"write, read", []string{"read", "write"}, ""},
		{"write,disk", []string{"disk", "write"}, ""},
		{"large,large", []string{"large"}, ""},
		{"reads", nil, `"reads" is none of read, large, disk, write`},
		{"read,", nil, `"" is none of`},
	} {
		got, err := parseParts(c.in)
		if c.wantErr != "" {
			assert.ErrorContains(t, err, c.wantErr, c.in)
			continue
		}
		require.NoError(t, err, c.in)
		assert.Equal(t, c.want, got, c.in)
	}
	o, err := parseOptions([]string{"--dmfs", "x", "--only", "large"}, io.Discard)
	require.NoError(t, err)
	assert.True(t, o.does(partLarge))
	assert.False(t, o.does(partRead))
	assert.False(t, o.does(partWrite))
	assert.False(t, o.does(partDisk))
	o, err = parseOptions([]string{"--dmfs", "x", "--only", "disk"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, []string{partDisk}, o.parts)
	o, err = parseOptions([]string{"--dmfs", "x"}, io.Discard)
	require.NoError(t, err)
	assert.True(t, o.does(partRead) && o.does(partLarge) && o.does(partDisk) && o.does(partWrite), "all parts by default")
	_, err = parseOptions([]string{"--dmfs", "x", "--only", "big"}, io.Discard)
	assert.ErrorContains(t, err, "--only")
}

// TestResidentBytes checks the page cache measure on a regular file: all of
// a file just written and read is resident, none once its pages are
// dropped (not on tmpfs, where the page cache is the file).
func TestResidentBytes(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	data := bytes.Repeat([]byte("0123456789abcdef"), 40_000) // 640000 bytes: not a whole number of pages
	require.NoError(t, os.WriteFile(path, data, 0o644))
	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.WriteFile(empty, nil, 0o644))
	n, err := readTree(dir)
	require.NoError(t, err)
	assert.Equal(t, int64(len(data)), n)

	got, err := residentBytes([]string{path, empty})
	require.NoError(t, err)
	assert.Equal(t, int64(len(data)), got, "read just now: all resident")

	if fsKind(dir) != "tmpfs" {
		f, err := os.Open(path)
		require.NoError(t, err)
		require.NoError(t, f.Sync())
		require.NoError(t, unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED))
		f.Close()
		got, err = residentBytes([]string{path})
		require.NoError(t, err)
		assert.Equal(t, int64(0), got, "dropped")
	}
	_, err = residentBytes([]string{filepath.Join(dir, "missing")})
	assert.Error(t, err)
}

func TestFirstDiff(t *testing.T) {
	assert.Equal(t, 2, firstDiff([]byte("abcd"), []byte("abXd")))
	assert.Equal(t, 3, firstDiff([]byte("abc"), []byte("abcd")))
	assert.Equal(t, 0, firstDiff(nil, []byte("a")))
}

func TestLargeTargetsAndTable(t *testing.T) {
	const mib = 1 << 20
	r := newLatencyResult(20 * time.Millisecond)
	field, shard := largeDS+"/"+largeVar+"/", largeDS+"/"+shardVar+"/"
	for i := range 2 {
		r.add(largeDirectName(64), sample{Seconds: 0.4, CPU: 0.7, Bytes: 400 * mib, Requests: 100, Gets: 100, Chunks: 100,
			KeyPrefix: field, KeyRequests: 100, BytesSent: 400 * mib})
		r.add(mLLocalWarm, sample{Seconds: 0.25, CPU: []float64{0.2, -1}[i], Bytes: 400 * mib}) // unknown in one run
		r.add(mLCold, sample{Seconds: 0.5, CPU: []float64{0.9, 1.1}[i], Bytes: 400 * mib, Requests: 103, Gets: 101, Chunks: 100, KeyPrefix: field,
			KeyRequests: []int64{100, 120}[i], BytesSent: 400 * mib, RSS: 500 * mib, Checked: true})
		drop := sample{Seconds: 0.3, Bytes: 400 * mib, Chunks: 100, KeyPrefix: field, Checked: true,
			PageCacheMeasured: true, PageCacheBefore: 400 * mib}
		if i == 1 {
			drop.PageCacheAfter = 4096
			drop.Check = "page cache not dropped: 4096 bytes of the chunk files resident"
		}
		r.add(mLWarmDrop, drop)
		r.add(mLColdSmall, sample{Seconds: 0.6, Bytes: 400 * mib, Chunks: 100, KeyPrefix: field, KeyRequests: 100,
			RSS: 40*mib + 70*mib, Checked: true})
		r.add(mLXrCold, sample{Seconds: 2, Bytes: 400 * mib, Chunks: 100, KeyPrefix: field, KeyRequests: 100})
		shardCheck := ""
		if i == 0 {
			shardCheck = "differs from the direct fetch"
		}
		r.add(mLShard, sample{Seconds: 0.2, Bytes: 64 * mib, Requests: 10, Gets: 9, Partial: 8, Chunks: 1,
			KeyPrefix: shard, KeyRequests: 8, BytesSent: 64 * mib, Checked: true, Check: shardCheck})
		r.addRatio(ratioLCold, 0.4, 0.5)
		r.addRatio(ratioLMem, 0.25, []float64{0.3, 0.25}[i])
		r.Ratios[ratioLXrBound] = append(r.Ratios[ratioLXrBound], []float64{1.1, 1.3}[i])
	}
	met := map[string]bool{}
	for _, tg := range r.largeTargets(40 * mib) {
		met[tg.What] = tg.Met
	}
	assert.Equal(t, map[string]bool{
		ratioLCold:                         true,  // 0.8x
		ratioLMem:                          true,  // 0.83x and 1x
		ratioLXrBound:                      false, // 1.3x in one run
		mLWarmDrop + ": gateway requests":  true,
		mLWarmDrop + ": " + targetLDropped: false, // one run left a page
		mLCold + ": requests per chunk":    false, // 1.2 in one run
		mLXrCold + ": requests per chunk":  true,
		targetLRSS:                         false, // 70 MiB over the cache
		mLCold + ": " + targetLExact:       true,
		mLWarmDrop + ": " + targetLExact:   true, // a page cache failure is not a byte failure
		mLColdSmall + ": " + targetLExact:  true,
		mLShard + ": " + targetLExact:      false,
	}, met)

	var buf bytes.Buffer
	r.writeLargeTable(&buf, largeOrder(64))
	out := buf.String()
	assert.Contains(t, out, "| "+largeDirectName(64)+" | 0.40 | 1048.6 | 0.70 | 100 (GET 100, of which 206: 0; HEAD 0) | 1.000 | 1.000 |")
	assert.Contains(t, out, "| "+mLLocalWarm+" | 0.25 | 1677.7 | — | 0 | — | — | — | — | — |", "CPU unknown in one run")
	assert.Contains(t, out, "| "+mLCold+" | 0.50 | 838.9 | 1.00 (0.90–1.10) | 103 (GET 101, of which 206: 0; HEAD 0) | 1.100 (1.000–1.200) | 1.000 | — | 500 | ok |")
	assert.Contains(t, out, "| "+mLShard+" | 0.20 | 335.5 | — | 10 (GET 9, of which 206: 8; HEAD 0) | 8.000 | 1.000 |")
	assert.Contains(t, out, "**failed in 1 of 2 runs**: page cache not dropped: 4096 bytes of the chunk files resident; page cache 419.4 MB → 0, 419.4 MB → 4096 B")
	assert.Contains(t, out, "| "+ratioLXrBound+" | 1.20x (1.10–1.30) |")
	assert.NotContains(t, out, mLLocalDrop, "no sample, no row")
	assert.Less(t, strings.Index(out, mLCold+" |"), strings.Index(out, mLShard+" |"))
}

// A passthrough mount's chunk pages are dmfs's memory file: they stay
// after the drop, and that is no failure.
func TestLargePassthroughPagesAreNoFailure(t *testing.T) {
	const mib = 1 << 20
	r := newLatencyResult(20 * time.Millisecond)
	field := largeDS + "/" + largeVar + "/"
	r.add(mLWarmDrop, sample{Seconds: 0.3, Bytes: 400 * mib, Chunks: 100, KeyPrefix: field, Checked: true,
		PageCacheMeasured: true, PageCacheBefore: 400 * mib, PageCacheAfter: 400 * mib, Passthrough: true})
	met := map[string]bool{}
	for _, tg := range r.largeTargets(40 * mib) {
		met[tg.What] = tg.Met
	}
	assert.True(t, met[mLWarmDrop+": "+targetLDropped])
	var buf bytes.Buffer
	r.writeLargeTable(&buf, largeOrder(64))
	assert.Contains(t, buf.String(), "| ok; page cache none: passthrough, dmfs's memory file 419.4 MB → 419.4 MB |")
}
