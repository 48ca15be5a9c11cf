package cache

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
)

// Values fetched to be read through the mount (ReadAt, Prefetch) are kept in one memory file
// (a memfd) rather than in the Go heap. Bytes written into a fresh heap buffer cost a page fault
// for every 4 KiB the first time they are touched, and on a virtual machine that fault is most
// of the cost of a cold read (measured here: 2.7 s to fill 1 GiB of fresh buffers, 0.23 s to
// write the same bytes into a memory file from one reused buffer). Pages of a memory file are
// the kernel's, never mapped into the process, and are spliced into FUSE replies like a disk
// tier file.
//
// Each value gets its own extent, at the end of what was ever allocated (the file is sparse and
// its offsets are 63-bit, so they never run out), rounded up to whole pages; an extent whose
// last reference goes has its pages punched out, which gives them back at once. There is no
// free list and no fragmentation.
//
// A value of at least ownMin bytes gets a memory file of its own instead, holding it from offset
// 0 and exactly as long: such a file can be handed to the kernel whole, for FUSE passthrough
// (see Cache.OwnFile), and is closed when its last reference goes. Smaller values share the one
// file, so that the descriptors kept open stay few (at most the budget over ownMin).

// memPage is the granule of the memory file's extents.
const memPage = 4096

// memFile is the memory file values are kept in.
type memFile struct {
	f *os.File
	// ownMin is the least size of a value given a file of its own (see above).
	ownMin int64

	mu   sync.Mutex
	next int64 // where the next extent starts

	allocated atomic.Int64 // bytes of the extents not yet punched out
	peak      atomic.Int64 // the most allocated ever was
}

// memValue is one value's extent in the memory file. Its references are the cache entry's (or
// a flight's, before the entry exists), each reader's piece, and a disk write queued for it; the
// last one to go punches the extent out.
type memValue struct {
	m    *memFile
	f    *os.File // the memory file, or the value's own
	own  bool     // f holds this value only, from offset 0
	off  int64    // in f
	size int64    // of the value
	refs atomic.Int32
}

// openMemFile creates the memory file; where memory files are not available (see
// newMemFile) the cache keeps values in the heap instead.
func openMemFile(ownMin int64) (*memFile, error) {
	f, err := newMemFile("dmfs-cache")
	if err != nil {
		return nil, err
	}
	return &memFile{f: f, ownMin: ownMin}, nil
}

// The memory file is never closed explicitly: cached values stay readable after Cache.Close,
// and a piece handed to the kernel reads it by descriptor. It is closed with its *os.File once
// nothing references it (the os package closes unreachable files).

// alloc returns a new extent of size bytes, holding one reference: in a file of its own when
// size is at least ownMin.
func (m *memFile) alloc(size int64) (*memValue, error) {
	if size >= m.ownMin {
		return m.allocOwn(size)
	}
	if size < 0 {
		return nil, fmt.Errorf("cache: negative size %d", size)
	}
	span := roundPage(size)
	m.mu.Lock()
	off := m.next
	if off > maxMemOffset-span {
		m.mu.Unlock()
		return nil, errors.New("cache: memory file offsets exhausted")
	}
	m.next += span
	m.mu.Unlock()
	return m.track(&memValue{m: m, f: m.f, off: off, size: size}), nil
}

// allocOwn returns a value of size bytes in a memory file of its own, holding one reference.
func (m *memFile) allocOwn(size int64) (*memValue, error) {
	if size < 0 {
		return nil, fmt.Errorf("cache: negative size %d", size)
	}
	f, err := newMemFile("dmfs-value")
	if err != nil {
		return nil, err
	}
	// Sized now, so that the file is exactly the value's length however it is written.
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("cache: sizing a memory file: %w", err)
	}
	return m.track(&memValue{m: m, f: f, own: true, size: size}), nil
}

// track counts v's pages as allocated and gives it its first reference.
func (m *memFile) track(v *memValue) *memValue {
	span := roundPage(v.size)
	for n, p := m.allocated.Add(span), m.peak.Load(); n > p && !m.peak.CompareAndSwap(p, n); p = m.peak.Load() {
	}
	v.refs.Store(1)
	return v
}

// maxMemOffset bounds the memory file's offsets (a file's size is at most 2^63-1).
const maxMemOffset = 1<<62 - 1

func roundPage(n int64) int64 { return (n + memPage - 1) &^ (memPage - 1) }

// acquire takes a reference. It must be called by a holder of one (or under the lock that
// guards the entry holding one).
func (v *memValue) acquire() { v.refs.Add(1) }

// release gives back a reference; the last one punches the extent out, or closes the value's
// own file.
func (v *memValue) release() {
	if n := v.refs.Add(-1); n > 0 {
		return
	} else if n < 0 {
		memReleaseErrors.Add(1) // a bug; the extent was punched out already
		return
	}
	span := roundPage(v.size)
	switch {
	case v.own:
		// The kernel may still hold the file (a passthrough open): its pages go with it.
		_ = v.f.Close()
	case span > 0:
		// Should it fail (never seen), the pages stay allocated until the file is closed:
		// memory, not bytes, is lost.
		_ = punchHole(v.f, v.off, span)
	}
	v.m.allocated.Add(-span)
}

// memReleaseErrors counts references given back twice (a bug, counted rather than fatal to a
// mount).
var memReleaseErrors atomic.Int64

// WriteAt writes p at off of the value, as io.WriterAt; nothing may be written past its size.
func (v *memValue) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > v.size || int64(len(p)) > v.size-off {
		return 0, fmt.Errorf("cache: write of %d bytes at %d past a value of %d", len(p), off, v.size)
	}
	return v.f.WriteAt(p, v.off+off)
}

// ReadAt reads the value's bytes at off, as io.ReaderAt.
func (v *memValue) ReadAt(p []byte, off int64) (int, error) {
	return readRange(v.f, v.off, v.size, p, off)
}

// readRange is io.ReaderAt over the size bytes of f from base.
func readRange(f *os.File, base, size int64, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("cache: negative offset")
	}
	if off >= size {
		return 0, io.EOF
	}
	short := int64(len(p)) > size-off
	if short {
		p = p[:size-off]
	}
	n, err := f.ReadAt(p, base+off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	if err == nil && short {
		err = io.EOF
	}
	return n, err
}

// bytes returns a copy of the whole value in memory, for callers who want a slice.
func (v *memValue) bytes() ([]byte, error) {
	b := make([]byte, v.size)
	if n, err := v.ReadAt(b, 0); n != len(b) {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("cache: reading a value from the memory file: %w", err)
	}
	return b, nil
}
