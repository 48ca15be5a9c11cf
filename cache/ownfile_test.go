package cache

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// ownFileOf checks that p is a whole file holding want from offset 0, exactly as long, and
// returns its descriptor.
func ownFileOf(t *testing.T, p Piece, want []byte) uintptr {
	t.Helper()
	fd, off, n, ok := p.File()
	require.True(t, ok, "a file")
	assert.Equal(t, int64(0), off)
	assert.Equal(t, len(want), n)
	var st syscall.Stat_t
	require.NoError(t, syscall.Fstat(int(fd), &st))
	assert.Equal(t, int64(len(want)), st.Size, "the file is the value's length")
	got := make([]byte, len(want)+10)
	m, err := syscall.Pread(int(fd), got, 0)
	require.NoError(t, err)
	assert.Equal(t, want, got[:m], "the file holds the value")
	return fd
}

func TestOwnFile(t *testing.T) {
	const min = 64 << 10
	ctx := context.Background()
	cases := []struct {
		name string
		size int
		// put caches the value before OwnFile is asked, the way named.
		put func(t *testing.T, c *Cache, val []byte)
	}{
		{"fetched by OwnFile", min, nil},
		{"fetched for a read", 3*min + 5, func(t *testing.T, c *Cache, val []byte) {
			var calls atomic.Int64
			p, _, err := c.ReadAt(ctx, "k", 0, 1, sinkFetch(&calls, val))
			require.NoError(t, err)
			p.Release()
		}},
		{"smaller than the least, in the shared file", min - 1, func(t *testing.T, c *Cache, val []byte) {
			var calls atomic.Int64
			p, _, err := c.ReadAt(ctx, "k", 0, 1, sinkFetch(&calls, val))
			require.NoError(t, err)
			fd, _, _, ok := p.File()
			p.Release()
			require.True(t, ok)
			require.Equal(t, c.mem.f.Fd(), fd, "shares the memory file")
		}},
		{"in the heap", 2 * min, func(t *testing.T, c *Cache, val []byte) {
			var calls atomic.Int64
			_, err := c.GetOrFetch(ctx, "k", sinkFetch(&calls, val))
			require.NoError(t, err)
		}},
		{"put", min + 1, func(t *testing.T, c *Cache, val []byte) { c.Put("k", val) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := memCache(t, Options{MaxBytes: 1 << 20, OwnFileMin: min})
			want := testBytes(tc.size, tc.size)
			fetch := FetchFunc(nil)
			var calls atomic.Int64
			if tc.put != nil {
				tc.put(t, c, want)
				fetch = mustNotFetch(t)
			} else {
				fetch = sinkFetch(&calls, want)
			}
			p, err := c.OwnFile(ctx, "k", fetch)
			require.NoError(t, err)
			fd := ownFileOf(t, p, want)

			q, err := c.OwnFile(ctx, "k", mustNotFetch(t))
			require.NoError(t, err)
			assert.Equal(t, fd, ownFileOf(t, q, want), "the cache keeps the file it made")
			assert.Equal(t, roundPage(int64(tc.size)), c.Stats().MemFileBytes, "one copy is kept")

			got, err := c.GetOrFetch(ctx, "k", mustNotFetch(t))
			require.NoError(t, err)
			assert.Equal(t, want, got)

			c.Forget("k")
			ownFileOf(t, p, want) // still held
			p.Release()
			q.Release()
			assert.Equal(t, int64(0), c.Stats().MemFileBytes, "the last reference closes the file")
			if tc.put == nil {
				assert.Equal(t, int64(1), calls.Load())
			}
		})
	}
}

func TestOwnFileOfAValueOnDisk(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disk")
	c, _ := diskCache(t, dir, DiskOptions{}, Options{MaxBytes: 1 << 20, OwnFileMin: 1000})
	if c.mem == nil {
		t.Skip("no memory files on this system")
	}
	want := testBytes(3, 5000)
	var calls atomic.Int64
	_, err := c.GetOrFetch(context.Background(), "k", sinkFetch(&calls, want), OnDisk("v", "k"))
	require.NoError(t, err)
	c.Close() // writes the disk queue

	c2, _ := diskCache(t, dir, DiskOptions{}, Options{MaxBytes: 1 << 20, OwnFileMin: 1000})
	p, err := c2.OwnFile(context.Background(), "k", mustNotFetch(t), OnDisk("v", "k"))
	require.NoError(t, err)
	ownFileOf(t, p, want)
	p.Release()
	st := c2.Stats()
	assert.Equal(t, int64(0), st.Fetches)
	assert.Equal(t, int64(1), st.DiskHits, "read once, into the file")
	assert.Equal(t, roundPage(int64(len(want))), st.MemFileBytes)

	q, err := c2.OwnFile(context.Background(), "k", mustNotFetch(t), OnDisk("v", "k"))
	require.NoError(t, err)
	ownFileOf(t, q, want)
	q.Release()
	assert.Equal(t, int64(1), c2.Stats().DiskHits, "kept in memory since")
}

func TestOwnFileFailures(t *testing.T) {
	c := newCache(t, Options{HeapOnly: true})
	_, ok := c.OwnFileMin()
	assert.False(t, ok)
	_, err := c.OwnFile(context.Background(), "k", mustNotFetch(t))
	assert.ErrorIs(t, err, ErrNoOwnFile)

	c = memCache(t, Options{MaxBytes: 1 << 20})
	n, ok := c.OwnFileMin()
	assert.True(t, ok)
	assert.Equal(t, int64(DefaultOwnFileMin), n)
	boom := errors.New("boom")
	_, err = c.OwnFile(context.Background(), "k", func(context.Context, Sink) ([]byte, error) { return nil, boom })
	assert.ErrorIs(t, err, boom)
	assert.Equal(t, int64(0), c.Stats().MemFileBytes)

	c = memCache(t, Options{MaxBytes: 64 << 30})
	n, _ = c.OwnFileMin()
	assert.Equal(t, int64(16<<20), n, "at most 4096 files for the budget")
}
