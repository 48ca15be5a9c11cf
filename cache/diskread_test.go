package cache

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// readPiece reads a piece's bytes both ways: through Read, and from its file with pread(2)
// as the kernel's splice would.
func readPiece(t *testing.T, p Piece) []byte {
	t.Helper()
	got, err := p.Read(make([]byte, p.Len()+10))
	require.NoError(t, err)
	if fd, off, n, ok := p.File(); ok {
		raw := make([]byte, n)
		m, err := syscall.Pread(int(fd), raw, off)
		require.NoError(t, err)
		assert.Equal(t, got, raw[:m], "the file range is the piece")
	}
	return got
}

// keptOnDisk writes want under (v, k) in a disk folder and returns a fresh cache over it.
func keptOnDisk(t *testing.T, want []byte, o Options) (*Cache, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "disk")
	var calls atomic.Int64
	c1, _ := diskCache(t, dir, DiskOptions{}, Options{})
	_, err := c1.GetOrFetch(context.Background(), "k", constFetch(&calls, want, nil), OnDisk("v", "k"))
	require.NoError(t, err)
	c1.Close()
	c2, _ := diskCache(t, dir, DiskOptions{}, o)
	return c2, dir
}

func TestReadAtReadsTheDiskInPlace(t *testing.T) {
	want := testBytes(5, 300_000)
	c, _ := keptOnDisk(t, want, Options{})
	for _, r := range []struct {
		off  int64
		n    int
		want []byte
	}{
		{0, 131072, want[:131072]},
		{131072, 131072, want[131072:262144]},
		{262144, 131072, want[262144:]}, // the end: shorter
		{int64(len(want)), 4096, nil},   // past the end: empty
	} {
		p, size, err := c.ReadAt(context.Background(), "k", r.off, r.n, mustNotFetch(t), OnDisk("v", "k"))
		require.NoError(t, err)
		assert.Equal(t, int64(len(want)), size)
		_, _, _, inPlace := p.File()
		assert.True(t, inPlace, "read from the file, not memory")
		assert.Equal(t, len(r.want), p.Len())
		assert.Equal(t, string(r.want), string(readPiece(t, p)), "off %d", r.off)
		p.Release()
	}
	st := c.Stats()
	assert.Equal(t, int64(1), st.DiskHits, "opened and checked once")
	assert.Zero(t, st.Bytes, "nothing loaded into memory")
	n, state := c.Stat("k")
	assert.Equal(t, StatSized, state)
	assert.Equal(t, int64(len(want)), n)

	// Without OnDisk, or with a refresh, the disk is not read in place.
	var calls atomic.Int64
	p, _, err := c.ReadAt(context.Background(), "k", 0, 10, constFetch(&calls, []byte("fresh bytes"), nil), RefreshOnDisk("v", "k"))
	require.NoError(t, err)
	assert.Equal(t, "fresh byte", string(readPiece(t, p)))
	p.Release()
	assert.Equal(t, int64(1), calls.Load())
	p, _, err = c.ReadAt(context.Background(), "k", 0, 5, mustNotFetch(t))
	require.NoError(t, err)
	b, inMemory := p.Memory()
	assert.True(t, inMemory, "the fetched value is in memory now")
	assert.Equal(t, "fresh", string(b))
	p.Release()
}

func TestReadAtNeverServesADamagedEntry(t *testing.T) {
	want := testBytes(6, 50_000)
	c, dir := keptOnDisk(t, want, Options{})
	entries := entryFiles(t, dir)
	require.Len(t, entries, 1)
	flipByte(t, filepath.Join(dir, entriesDir, entries[0]), diskHeaderSize+40_000)
	var calls atomic.Int64
	p, size, err := c.ReadAt(context.Background(), "k", 39_990, 20, constFetch(&calls, want, nil), OnDisk("v", "k"))
	require.NoError(t, err)
	assert.Equal(t, int64(len(want)), size)
	assert.Equal(t, want[39_990:40_010], readPiece(t, p), "fetched again, never the damaged bytes")
	p.Release()
	assert.Equal(t, int64(1), calls.Load())
	assert.Equal(t, int64(1), c.Stats().DiskCorrupt)
}

func TestReadaheadOfADiskValueChecksItInPlace(t *testing.T) {
	want := testBytes(7, 20_000)
	c, _ := keptOnDisk(t, want, Options{})
	c.Prefetch("k", mustNotFetch(t), OnDisk("v", "k"))
	require.Eventually(t, func() bool { return c.Stats().Running == 0 && c.Stats().PrefetchQueued == 0 }, 5*time.Second, time.Millisecond)
	n, err := c.SizeOrHead(context.Background(), "k", mustNotHead(t), OnDisk("v", "k"))
	require.NoError(t, err)
	assert.Equal(t, int64(len(want)), n)
	assert.Zero(t, c.Stats().Bytes, "a readahead of a value on disk loads nothing into memory")
	assert.True(t, c.disk.opened("v", "k"), "checked and open for reading in place")
	c.Prefetch("k", mustNotFetch(t), OnDisk("v", "k")) // nothing to do: already open
	p, _, err := c.ReadAt(context.Background(), "k", 100, 10, mustNotFetch(t), OnDisk("v", "k"))
	require.NoError(t, err)
	assert.Equal(t, want[100:110], readPiece(t, p))
	p.Release()
	assert.Equal(t, int64(1), c.Stats().DiskHits)

	// GetOrFetch still answers with the bytes.
	got, err := c.GetOrFetch(context.Background(), "k", mustNotFetch(t), OnDisk("v", "k"))
	require.NoError(t, err)
	assert.Equal(t, want, got)
}

func TestReadAtPieceOutlivesItsEntrysEviction(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disk")
	var calls atomic.Int64
	c1, _ := diskCache(t, dir, DiskOptions{}, Options{})
	keys := diskOpenFiles + 5
	for i := range keys {
		k := fmt.Sprint(i)
		_, err := c1.GetOrFetch(context.Background(), k, constFetch(&calls, testBytes(i, 100), nil), OnDisk("v", k))
		require.NoError(t, err)
	}
	c1.Close()
	c2, _ := diskCache(t, dir, DiskOptions{}, Options{})
	held, _, err := c2.ReadAt(context.Background(), "0", 0, 100, mustNotFetch(t), OnDisk("v", "0"))
	require.NoError(t, err)
	for i := 1; i < keys; i++ { // pushes "0" out of the open files
		k := fmt.Sprint(i)
		p, _, err := c2.ReadAt(context.Background(), k, 0, 100, mustNotFetch(t), OnDisk("v", k))
		require.NoError(t, err)
		assert.Equal(t, testBytes(i, 100), readPiece(t, p))
		p.Release()
	}
	assert.False(t, c2.disk.opened("v", "0"))
	assert.Equal(t, testBytes(0, 100), readPiece(t, held), "still open while held")
	held.Release()
	_, err = held.file.Stat()
	assert.Error(t, err, "closed once released")
}

func TestReadAtTakesAReplacedEntry(t *testing.T) {
	c, _ := keptOnDisk(t, []byte("old value"), Options{})
	p, _, err := c.ReadAt(context.Background(), "k", 0, 100, mustNotFetch(t), OnDisk("v", "k"))
	require.NoError(t, err)
	assert.Equal(t, "old value", string(readPiece(t, p)))
	p.Release()
	var calls atomic.Int64
	_, err = c.GetOrFetch(context.Background(), "k", constFetch(&calls, []byte("new value!"), nil), RefreshOnDisk("v", "k"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return c.Stats().DiskWrites == 1 }, 5*time.Second, time.Millisecond)
	c.Forget("k")
	p, size, err := c.ReadAt(context.Background(), "k", 0, 100, mustNotFetch(t), OnDisk("v", "k"))
	require.NoError(t, err)
	assert.Equal(t, int64(10), size)
	assert.Equal(t, "new value!", string(readPiece(t, p)))
	p.Release()
}

func TestSizeOfADiskValueLoadsNothing(t *testing.T) {
	want := testBytes(8, 20_000)
	c, _ := keptOnDisk(t, want, Options{})
	n, ok := c.SizeInPlace("k", OnDisk("v", "k"))
	require.True(t, ok)
	assert.Equal(t, int64(len(want)), n)
	_, ok = c.SizeInPlace("k", RefreshOnDisk("v", "k"))
	assert.False(t, ok, "a refresh does not trust the disk")
	_, ok = c.SizeInPlace("other", OnDisk("v", "other"))
	assert.False(t, ok)
	// A size asked with SizeOrHead is read from the header, and loads nothing either.
	c2, _ := keptOnDisk(t, want, Options{})
	n, err := c2.SizeOrHead(context.Background(), "k", mustNotHead(t), OnDisk("v", "k"))
	require.NoError(t, err)
	assert.Equal(t, int64(len(want)), n)
	assert.Zero(t, c.Stats().Bytes+c2.Stats().Bytes)
}

func TestDiskValueIsAsFreshAsItsSourcesCheck(t *testing.T) {
	clock := newFakeClock()
	dir := filepath.Join(t.TempDir(), "disk")
	var calls atomic.Int64
	c1, _ := diskCache(t, dir, DiskOptions{}, Options{Now: clock.Now})
	_, err := c1.GetOrFetch(context.Background(), "k", constFetch(&calls, []byte("value"), nil), OnDisk("v", "k"))
	require.NoError(t, err)
	c1.Close()

	clock.Advance(24 * time.Hour)
	checked := clock.Now().Add(-time.Minute) // the remount read the metadata a minute ago
	for name, read := range map[string]func(c *Cache){
		"ReadAt": func(c *Cache) {
			p, _, err := c.ReadAt(context.Background(), "k", 0, 5, mustNotFetch(t), OnDisk("v", "k").TrustedSince(checked))
			require.NoError(t, err)
			p.Release()
		},
		"SizeInPlace": func(c *Cache) { c.SizeInPlace("k", OnDisk("v", "k").TrustedSince(checked)) },
		"GetOrFetch": func(c *Cache) {
			_, err := c.GetOrFetch(context.Background(), "k", mustNotFetch(t), OnDisk("v", "k").TrustedSince(checked))
			require.NoError(t, err)
		},
		"SizeOrHead": func(c *Cache) {
			_, err := c.SizeOrHead(context.Background(), "k", mustNotHead(t), OnDisk("v", "k").TrustedSince(checked))
			require.NoError(t, err)
		},
	} {
		c, _ := diskCache(t, dir, DiskOptions{}, Options{Now: clock.Now})
		read(c)
		age, ok := c.Age("k")
		require.True(t, ok, name)
		assert.Equal(t, time.Minute, age, "%s: as old as the check, not the day-old fetch", name)
		c.Close()
	}
	c, _ := diskCache(t, dir, DiskOptions{}, Options{Now: clock.Now})
	c.SizeInPlace("k", OnDisk("v", "k"))
	age, _ := c.Age("k")
	assert.Equal(t, 24*time.Hour, age, "without a check, as old as the fetch")
}
