package cache

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// readBlob reads a blob whole through ReadAt, in pieces that do not divide its size.
func readBlob(t *testing.T, b *Blob) []byte {
	t.Helper()
	got, err := io.ReadAll(io.NewSectionReader(b, 0, b.Size()+10))
	require.NoError(t, err)
	return got
}

func TestBlobKeptAndFoundAgain(t *testing.T) {
	for _, size := range []int{0, 1, blobCopyBuffer - 1, 2*blobCopyBuffer + 17} {
		dir := filepath.Join(t.TempDir(), "disk")
		want := testBytes(size, size)
		c1, _ := diskCache(t, dir, DiskOptions{}, Options{})
		_, ok := c1.OpenBlob("t@1", "table.parquet")
		assert.False(t, ok, "nothing kept yet")
		c1.KeepBlob("t@1", "table.parquet", `etag:"v1"`, bytes.NewReader(want), int64(len(want)))
		c1.Close() // flushes

		c2, _ := diskCache(t, dir, DiskOptions{}, Options{})
		b, ok := c2.OpenBlob("t@1", "table.parquet")
		require.True(t, ok, "size %d", size)
		assert.Equal(t, `etag:"v1"`, b.Meta)
		assert.Equal(t, int64(size), b.Size())
		assert.True(t, bytes.Equal(want, readBlob(t, b)), "size %d", size)
		n, err := b.ReadAt(make([]byte, 4), int64(size))
		assert.Equal(t, 0, n)
		assert.ErrorIs(t, err, io.EOF)
		require.NoError(t, b.Close())
		_, ok = c2.OpenBlob("t@2", "table.parquet")
		assert.False(t, ok, "another version")
		assert.Equal(t, int64(1), c2.Stats().DiskHits)
	}
}

func TestBlobReplacedStaysReadableWhileOpen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disk")
	old, next := testBytes(1, 3000), testBytes(2, 5000)
	c1, _ := diskCache(t, dir, DiskOptions{}, Options{})
	c1.KeepBlob("t", "k", "modified:1", bytes.NewReader(old), int64(len(old)))
	c1.Close()

	c2, _ := diskCache(t, dir, DiskOptions{}, Options{})
	b, ok := c2.OpenBlob("t", "k")
	require.True(t, ok)
	defer b.Close()
	c2.KeepBlob("t", "k", "modified:2", bytes.NewReader(next), int64(len(next)))
	c2.Close()
	assert.Equal(t, old, readBlob(t, b), "the open blob keeps its bytes")

	c3, _ := diskCache(t, dir, DiskOptions{}, Options{})
	b3, ok := c3.OpenBlob("t", "k")
	require.True(t, ok)
	defer b3.Close()
	assert.Equal(t, "modified:2", b3.Meta)
	assert.Equal(t, next, readBlob(t, b3))
}

// failingReader fails after n bytes, like a table file closed under the writer.
type failingReader struct {
	data []byte
	n    int64
}

func (r failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > r.n {
		return 0, errors.New("file closed")
	}
	return copy(p, r.data[off:]), nil
}

func TestBlobNotKeptWhenItsSourceFailsOrIsShort(t *testing.T) {
	want := testBytes(3, 3*blobCopyBuffer)
	for _, src := range []io.ReaderAt{
		failingReader{data: want, n: blobCopyBuffer + 5},
		bytes.NewReader(want[:blobCopyBuffer]), // shorter than announced
	} {
		dir := filepath.Join(t.TempDir(), "disk")
		c1, _ := diskCache(t, dir, DiskOptions{}, Options{})
		c1.KeepBlob("t", "k", "m", src, int64(len(want)))
		c1.Close()
		assert.Empty(t, entryFiles(t, dir), "nothing half written is kept")
		assert.Equal(t, int64(1), c1.Stats().DiskDropped)
		assert.LessOrEqual(t, duBytes(t, dir), int64(64<<10), "the reserved room is given back")
	}
}

func TestBlobDamagedIsNotServed(t *testing.T) {
	want := testBytes(4, 100000)
	for name, damage := range map[string]func(path string){
		"a byte flipped":  func(p string) { flipByte(t, p, diskHeaderSize+4+1+5000) },
		"meta length bad": func(p string) { flipByte(t, p, diskHeaderSize+3) },
		"truncated":       func(p string) { require.NoError(t, os.Truncate(p, diskHeaderSize+500)) },
	} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "disk")
			c1, d1 := diskCache(t, dir, DiskOptions{}, Options{})
			c1.KeepBlob("t", "k", "m", bytes.NewReader(want), int64(len(want)))
			c1.Close()
			damage(d1.path(d1.name("t", "k")))

			c2, _ := diskCache(t, dir, DiskOptions{}, Options{})
			_, ok := c2.OpenBlob("t", "k")
			assert.False(t, ok)
			assert.Equal(t, int64(1), c2.Stats().DiskCorrupt)
			assert.Empty(t, entryFiles(t, dir), "the damaged entry is removed")
		})
	}
}

func TestBlobWithoutDiskOrVersion(t *testing.T) {
	c := newCache(t, Options{})
	c.KeepBlob("t", "k", "m", bytes.NewReader([]byte("x")), 1)
	_, ok := c.OpenBlob("t", "k")
	assert.False(t, ok)
	c2, _ := diskCache(t, filepath.Join(t.TempDir(), "disk"), DiskOptions{}, Options{})
	c2.KeepBlob("", "k", "m", bytes.NewReader([]byte("x")), 1)
	c2.Close()
	assert.Equal(t, int64(0), c2.Stats().DiskWrites)
}
