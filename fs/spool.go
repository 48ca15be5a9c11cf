package fs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// A spool file holds a file's bytes between its writes and its upload:
// small files in memory (no inode to create, no second copy to read back
// for the upload and the cache), larger ones, and all once the memory
// share of the spool is used, in an anonymous file in the spool folder.

// memSpoolFile is the largest file spooled in memory.
const memSpoolFile = 8 << 20

// memSpoolMax caps the spool held in memory (see memShare: a quarter of
// --write-spool-size, at most this).
const memSpoolMax = 32 << 20

// spoolFile holds one wfile's bytes; reference counted (writer.mu), so that
// a reader never sees it closed under it.
type spoolFile struct {
	refs     int
	dropped  bool
	reserved int64 // bytes of the spool budget it holds (writer.mu)
	inMem    int64 // bytes of the memory share it holds (writer.mu)

	mu  sync.RWMutex // guards mem and f against a move to disk
	mem []byte       // the bytes, while in memory (f nil)
	f   *os.File     // the bytes, once on disk
}

// WriteAt writes p at off.
func (sp *spoolFile) WriteAt(p []byte, off int64) (int, error) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.f != nil {
		return sp.f.WriteAt(p, off)
	}
	end := off + int64(len(p))
	if end > int64(len(sp.mem)) {
		sp.mem = grow(sp.mem, end)
	}
	return copy(sp.mem[off:], p), nil
}

// grow extends b to n bytes, zero-filled, with room to grow again.
func grow(b []byte, n int64) []byte {
	if n <= int64(cap(b)) {
		old := len(b)
		b = b[:n]
		clear(b[old:])
		return b
	}
	nb := make([]byte, n, max(n, min(2*int64(cap(b)), memSpoolFile)))
	copy(nb, b)
	return nb
}

// ReadAt reads up to len(p) bytes at off (io.EOF past the end).
func (sp *spoolFile) ReadAt(p []byte, off int64) (int, error) {
	sp.mu.RLock()
	defer sp.mu.RUnlock()
	if sp.f != nil {
		return sp.f.ReadAt(p, off)
	}
	if off >= int64(len(sp.mem)) {
		return 0, io.EOF
	}
	n := copy(p, sp.mem[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Truncate sets the size.
func (sp *spoolFile) Truncate(n int64) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.f != nil {
		return sp.f.Truncate(n)
	}
	if n <= int64(len(sp.mem)) {
		sp.mem = sp.mem[:n]
		return nil
	}
	sp.mem = grow(sp.mem, n)
	return nil
}

// bytes returns the content when it is in memory (nil, false on disk).
// The caller must not change it, and nothing writes to sp meanwhile (an
// upload freezes its file).
func (sp *spoolFile) bytes() ([]byte, bool) {
	sp.mu.RLock()
	defer sp.mu.RUnlock()
	return sp.mem, sp.f == nil
}

// toDisk moves the bytes into file.
func (sp *spoolFile) toDisk(file *os.File) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.f != nil {
		return errors.New("spool file already on disk")
	}
	if _, err := file.WriteAt(sp.mem, 0); err != nil {
		return err
	}
	sp.f, sp.mem = file, nil
	return nil
}

// memShare is the spool's memory share for a spool of size bytes.
func memShare(size int64) int64 { return min(size/4, memSpoolMax) }

// diskFileLocked returns an empty anonymous spool file: a reused one, or a
// new one in the spool folder.
func (w *writer) diskFileLocked() (*os.File, error) {
	if n := len(w.idle); n > 0 {
		file := w.idle[n-1]
		w.idle = w.idle[:n-1]
		return file, nil
	}
	file, err := os.CreateTemp(w.wo.SpoolDir, "spool-")
	if err != nil {
		return nil, fmt.Errorf("write spool: %w", err)
	}
	// Anonymous: a crash leaves nothing behind, and nobody else can open it.
	os.Remove(file.Name())
	return file, nil
}

// placeLocked keeps sp in memory while it holds at most end bytes within
// the memory share, else moves it to disk.
func (w *writer) placeLocked(sp *spoolFile, end int64) error {
	if sp.f != nil {
		return nil
	}
	if end <= memSpoolFile && w.memUsed-sp.inMem+end <= memShare(w.wo.SpoolSize) {
		if end > sp.inMem {
			w.memUsed += end - sp.inMem
			sp.inMem = end
		}
		return nil
	}
	file, err := w.diskFileLocked()
	if err != nil {
		return err
	}
	if err := sp.toDisk(file); err != nil {
		file.Close()
		return fmt.Errorf("write spool: %w", err)
	}
	w.memUsed -= sp.inMem
	sp.inMem = 0
	return nil
}

// retireLocked ends a spool file nobody uses any more: its memory is let
// go; a disk file is emptied and kept for reuse (creating a file per file
// written, and unlinking it, is a large part of the write path's cost on
// ext4), or closed.
func (w *writer) retireLocked(sp *spoolFile) {
	w.memUsed -= sp.inMem
	sp.inMem = 0
	sp.mu.Lock()
	file := sp.f
	sp.f, sp.mem = nil, nil
	sp.mu.Unlock()
	if file == nil {
		return
	}
	if len(w.idle) < maxIdleSpools && file.Truncate(0) == nil {
		w.idle = append(w.idle, file)
		return
	}
	file.Close()
}
