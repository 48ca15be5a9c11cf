package cache

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Values kept in the disk tier are read in place (Cache.ReadAt): an entry is opened and
// checked whole once (length and CRC, read through a reused buffer), then its file stays open
// in a small LRU and each read takes its bytes straight from the file, which the kernel can
// splice into the reply. Loading them into memory instead costs a fresh page for every 4 KiB,
// which is what bounded a remount's throughput, and grows the process by what it reads.

// diskOpenFiles bounds the entries kept open for reading in place.
const diskOpenFiles = 256

// diskFile is an open entry, checked whole, whose value is read in place.
type diskFile struct {
	f    *os.File
	size int64     // of the value, which starts at diskHeaderSize
	at   time.Time // when the fetch that got it started
	// Guarded by Disk.filesMu.
	refs    int
	evicted bool // out of the LRU: closed when the last reference goes
}

// checkBuffers are the buffers entries are checked and blobs copied through, reused so that
// neither costs fresh memory.
var checkBuffers = sync.Pool{New: func() any { b := make([]byte, blobCopyBuffer); return &b }}

// checkEntry reads the header of the entry in f (fileSize bytes), checks it against sum, and
// checks the value's checksum by reading it whole.
func checkEntry(f *os.File, sum [32]byte, fileSize int64) (header, error) {
	var hb [diskHeaderSize]byte
	if _, err := f.ReadAt(hb[:], 0); err != nil {
		return header{}, fmt.Errorf("reading its header: %w", err)
	}
	h, err := decodeHeader(hb[:], sum, fileSize)
	if err != nil {
		return header{}, err
	}
	buf := checkBuffers.Get().(*[]byte)
	defer checkBuffers.Put(buf)
	crc := crc32.New(crc32c)
	if _, err := io.CopyBuffer(crc, io.NewSectionReader(f, diskHeaderSize, h.length), *buf); err != nil {
		return header{}, fmt.Errorf("reading: %w", err)
	}
	if crc.Sum32() != h.crc {
		return header{}, errors.New("checksum mismatch")
	}
	return h, nil
}

// openChecked opens the entry of sum and checks it whole, counting a hit; a damaged entry is
// removed.
func (d *Disk) openChecked(sum [32]byte) (*os.File, header, bool) {
	f, size, mtime, ok := d.open(sum)
	if !ok {
		return nil, header{}, false
	}
	h, err := checkEntry(f, sum, size)
	if err != nil {
		f.Close()
		d.drop(sum, err.Error())
		return nil, header{}, false
	}
	d.hits.Add(1)
	d.touch(sum, mtime)
	return f, h, true
}

// acquire returns the open, checked entry of (version, key) with a reference taken (give it
// back with release), opening and checking it if it is not open yet.
func (d *Disk) acquire(version, key string) (*diskFile, bool) {
	sum := d.name(version, key)
	d.filesMu.Lock()
	if df, ok := d.files.Get(sum); ok {
		df.refs++
		d.filesMu.Unlock()
		return df, true
	}
	d.filesMu.Unlock()

	f, h, ok := d.openChecked(sum)
	if !ok {
		return nil, false
	}
	df := &diskFile{f: f, size: h.length, at: h.at, refs: 1}

	d.filesMu.Lock()
	defer d.filesMu.Unlock()
	if cur, ok := d.files.Get(sum); ok { // opened meanwhile by another reader
		cur.refs++
		f.Close()
		return cur, true
	}
	if d.filesClosed {
		df.evicted = true // not kept: closed at release
		return df, true
	}
	d.files.Add(sum, df)
	return df, true
}

// opened tells whether the entry of (version, key) is open and checked.
func (d *Disk) opened(version, key string) bool {
	sum := d.name(version, key)
	d.filesMu.Lock()
	defer d.filesMu.Unlock()
	return d.files.Contains(sum)
}

// release gives back a reference taken by acquire.
func (d *Disk) release(df *diskFile) {
	d.filesMu.Lock()
	defer d.filesMu.Unlock()
	df.refs--
	if df.refs == 0 && df.evicted {
		df.f.Close()
	}
}

// fileEvicted is the open files' LRU eviction callback. d.filesMu is held.
func (d *Disk) fileEvicted(_ [32]byte, df *diskFile) {
	df.evicted = true
	if df.refs == 0 {
		df.f.Close()
	}
}

// forgetFile stops reading the entry of sum in place (it is being replaced): readers that hold
// it keep the old file until they release it.
func (d *Disk) forgetFile(sum [32]byte) {
	d.filesMu.Lock()
	d.files.Remove(sum)
	d.filesMu.Unlock()
}

// closeFiles closes the open entries (those in use when they are released).
func (d *Disk) closeFiles() {
	d.filesMu.Lock()
	d.filesClosed = true
	d.files.Purge()
	d.filesMu.Unlock()
}

func newOpenFiles(onEvict func([32]byte, *diskFile)) *simplelru.LRU[[32]byte, *diskFile] {
	l, err := simplelru.NewLRU[[32]byte, *diskFile](diskOpenFiles, onEvict)
	if err != nil {
		panic(err) // a positive size cannot fail
	}
	return l
}

// A Piece is the bytes of one read of a value (see Cache.ReadAt): a slice of the value in
// memory, or a range of a file read in place (the memory file, or a disk tier file). Release
// it once its bytes are used.
type Piece struct {
	data []byte
	file *os.File
	ref  interface{ release() } // what keeps file's range readable
	off  int64                  // in file
	n    int
}

// Len is the number of bytes of the piece.
func (p Piece) Len() int {
	if p.file != nil {
		return p.n
	}
	return len(p.data)
}

// Memory returns the piece's bytes when they are in memory (shared: not to be modified).
func (p Piece) Memory() ([]byte, bool) { return p.data, p.file == nil }

// File returns the open file, offset and length of a piece read in place. The file stays open,
// and the range readable, until Release.
func (p Piece) File() (fd uintptr, off int64, n int, ok bool) {
	if p.file == nil {
		return 0, 0, 0, false
	}
	return p.file.Fd(), p.off, p.n, true
}

// Read returns the piece's bytes: its memory, or read from its file into buf (at least Len
// bytes long, else only the first len(buf) are read).
func (p Piece) Read(buf []byte) ([]byte, error) {
	if p.file == nil {
		return p.data, nil
	}
	n, err := p.file.ReadAt(buf[:min(len(buf), p.n)], p.off)
	if err == io.EOF && n == min(len(buf), p.n) {
		err = nil
	}
	return buf[:n], err
}

// Release ends the piece's use of its file, if it has one. Release it once only.
func (p Piece) Release() {
	if p.ref != nil {
		p.ref.release()
	}
}

// filePiece is the piece of df from off, at most n bytes. It takes over the reference.
func (d *Disk) filePiece(df *diskFile, off int64, n int) Piece {
	if off < 0 || off > df.size {
		off = df.size
	}
	return Piece{file: df.f, ref: diskRef{d, df}, off: diskHeaderSize + off, n: int(min(int64(n), df.size-off))}
}

// diskRef is a reference to an open disk tier entry, given back by release.
type diskRef struct {
	d  *Disk
	df *diskFile
}

func (r diskRef) release() { r.d.release(r.df) }
