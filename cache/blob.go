package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// A blob is a value too large to hold in memory, such as a downloaded table, kept in the disk
// tier as a file and read in place. It is written from its holder's file or memory in the
// background (KeepBlob) and found again by a later mount (OpenBlob), with a little text of its
// own (Meta: what says which version of the source it is). On disk it is an entry like any
// other, checked the same way; its value is the length of Meta (4 bytes, little endian), Meta,
// then the blob's bytes.

// maxBlobMeta bounds a blob's Meta.
const maxBlobMeta = 64 << 10

// Blob is a blob found in the disk tier: Size bytes, read with ReadAt. It stays readable after
// its entry is evicted or replaced (the file is open); Close it when done.
type Blob struct {
	f    *os.File
	off  int64 // where the bytes start in f
	size int64
	Meta string
}

// Size is the number of bytes of the blob.
func (b *Blob) Size() int64 { return b.size }

// ReadAt reads the blob's bytes at off, as io.ReaderAt.
func (b *Blob) ReadAt(p []byte, off int64) (int, error) {
	return readRange(b.f, b.off, b.size, p, off)
}

// Close closes the blob's file.
func (b *Blob) Close() error { return b.f.Close() }

// OpenBlob returns the blob kept under (version, key) if the disk tier holds it whole and
// intact (its length and checksum are checked first, which reads it once); a damaged entry is
// removed. Without a disk tier, or with an empty version, there is none.
func (c *Cache) OpenBlob(version, key string) (*Blob, bool) {
	if c.disk == nil || version == "" {
		return nil, false
	}
	return c.disk.openBlob(version, key)
}

// KeepBlob queues size bytes of src, with meta, to be written to the disk tier under (version,
// key), replacing what is kept there. src is read in the background, at most until the Cache
// closes: it must stay readable that long (a failed read only drops the write). Without a disk
// tier, or with an empty version, nothing is kept.
func (c *Cache) KeepBlob(version, key, meta string, src io.ReaderAt, size int64) {
	if c.disk == nil || version == "" || len(meta) > maxBlobMeta || size < 0 {
		return
	}
	prefix := make([]byte, 4+len(meta))
	binary.LittleEndian.PutUint32(prefix, uint32(len(meta)))
	copy(prefix[4:], meta)
	c.disk.enqueue(diskJob{sum: c.disk.name(version, key), prefix: prefix, src: src, n: size,
		at: c.now(), replace: true})
}

// openBlob is OpenBlob on the disk.
func (d *Disk) openBlob(version, key string) (*Blob, bool) {
	sum := d.name(version, key)
	f, h, ok := d.openChecked(sum)
	if !ok {
		return nil, false
	}
	b, err := blobOf(f, h)
	if err != nil {
		f.Close()
		d.drop(sum, err.Error())
		return nil, false
	}
	return b, true
}

// blobOf reads the Meta of the checked entry h in f.
func blobOf(f *os.File, h header) (*Blob, error) {
	var lb [4]byte
	if h.length < 4 {
		return nil, errors.New("not a blob: too short")
	}
	if _, err := f.ReadAt(lb[:], diskHeaderSize); err != nil {
		return nil, fmt.Errorf("reading: %w", err)
	}
	m := int64(binary.LittleEndian.Uint32(lb[:]))
	if m > maxBlobMeta || 4+m > h.length {
		return nil, errors.New("not a blob: bad meta length")
	}
	meta := make([]byte, m)
	if _, err := f.ReadAt(meta, diskHeaderSize+4); err != nil {
		return nil, fmt.Errorf("reading: %w", err)
	}
	return &Blob{f: f, off: diskHeaderSize + 4 + m, size: h.length - 4 - m, Meta: string(meta)}, nil
}
