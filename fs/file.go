package fs

import (
	"context"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/oceanum-dmfs/dmfs/cache"
	"github.com/oceanum-dmfs/dmfs/zarr"
)

// metaFile is a metadata document (.zmetadata, .zgroup, .zarray, .zattrs,
// zarr.json) held in memory from the consolidated metadata: exact size, no
// request to read it.
type metaFile struct {
	gofs.Inode
	writeOps
	opt     *Options
	data    []byte
	modTime time.Time
	ds      *datasource
	key     string
	// For an array's metadata: opening it (cp reads .zarray before the
	// chunks) tells the array is being read, not just listed.
	array     bool
	arrayPath string
}

var (
	_ gofs.NodeOpener    = (*metaFile)(nil)
	_ gofs.NodeReader    = (*metaFile)(nil)
	_ gofs.NodeGetattrer = (*metaFile)(nil)
)

// Getattr reports the document's exact size.
func (f *metaFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if f.w.overlaid(f.ds, f.key, fh, &out.Attr) {
		return 0
	}
	f.opt.fileAttr(&out.Attr, int64(len(f.data)), f.modTime)
	out.Attr.Ino = f.StableAttr().Ino
	return 0
}

// writeFlags are the open flags that would change a file.
const writeFlags = syscall.O_WRONLY | syscall.O_RDWR | syscall.O_TRUNC | syscall.O_APPEND

// openFile answers an OPEN. A read-only open gets ENOSYS: the kernel then
// stops sending OPEN (and RELEASE) for every file of the mount and opens
// files itself, keeping their page cache (FOPEN_KEEP_CACHE is the no-open
// default), so a file costs a LOOKUP and its READs and nothing more. No file
// keeps per-open state: what an open used to note is noted at the first
// READ. A passthrough mount (see passthrough.go) answers the open instead,
// keeping the page cache. Write opens are refused (the `ro` mount refuses
// them first).
func openFile(ctx context.Context, opt *Options, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&writeFlags != 0 {
		return nil, 0, syscall.EROFS
	}
	m := opt.opens.wait(ctx)
	switch {
	case m == nil:
		return nil, 0, syscall.EINTR
	case m.passing():
		return nil, fuse.FOPEN_KEEP_CACHE, 0
	}
	return nil, 0, syscall.ENOSYS
}

// Open: see openFile; in a write mount, see gatewayOpen.
func (f *metaFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if f.w != nil {
		return f.w.gatewayOpen(ctx, f.ds, f.key, int64(len(f.data)), f.data, flags)
	}
	return f.openReadOnly(ctx, f.opt, flags)
}

// Setattr: a write mount truncates through an overlay file.
func (f *metaFile) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if f.w == nil {
		return syscall.EROFS
	}
	return f.w.gatewaySetattr(ctx, f.ds, f.key, int64(len(f.data)), f.data, fh, in, out)
}

// Read serves from memory. Reading an array's metadata from its start tells
// the array is being read, not just listed (cp reads .zarray before the
// chunks).
func (f *metaFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if r, errno, ok := f.w.overlayRead(ctx, f.ds, f.key, fh, dest, off); ok {
		return r, errno
	}
	if off == 0 && f.array {
		f.ds.readMetadata(f.arrayPath)
	}
	return fuse.ReadResultData(sliceAt(f.data, off, len(dest))), 0
}

// chunkFile is one chunk (or shard) object of an array, fetched on open
// through the cache; its size was learnt at lookup.
type chunkFile struct {
	gofs.Inode
	writeOps
	ds        *datasource
	arrayPath string
	rel       string // key relative to the array folder
	size      int64
	modTime   time.Time
}

var (
	_ gofs.NodeOpener    = (*chunkFile)(nil)
	_ gofs.NodeReader    = (*chunkFile)(nil)
	_ gofs.NodeGetattrer = (*chunkFile)(nil)
)

// Getattr reports the size learnt at lookup.
func (f *chunkFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if f.w.overlaid(f.ds, f.key(), fh, &out.Attr) {
		return 0
	}
	f.ds.opt.fileAttr(&out.Attr, f.size, f.modTime)
	out.Attr.Ino = f.StableAttr().Ino
	return 0
}

// Open: see openFile. Nothing is fetched at open: when the kernel still
// holds the file's pages (a warm re-read after the chunk left dmfs's cache)
// no READ comes and nothing is fetched. In a passthrough mount, a large
// chunk is fetched at open instead, and read by the kernel from dmfs's
// memory (see passthrough.go).
func (f *chunkFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if f.w != nil {
		return f.w.gatewayOpen(ctx, f.ds, f.key(), f.size, nil, flags)
	}
	if flags&writeFlags == 0 && !f.rw {
		if m := f.ds.opt.opens.wait(ctx); m != nil && m.chunkOpen(f.size) {
			return f.openPassthrough(ctx)
		}
	}
	return f.openReadOnly(ctx, f.ds.opt, flags)
}

// Setattr: a write mount truncates through an overlay file.
func (f *chunkFile) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if f.w == nil {
		return syscall.EROFS
	}
	return f.w.gatewaySetattr(ctx, f.ds, f.key(), f.size, nil, fh, in, out)
}

func (f *chunkFile) key() string  { return joinKey(f.arrayPath, f.rel) }
func (f *chunkFile) path() string { return f.ds.id + "/" + f.key() }

// Read serves the chunk's bytes from the cache, fetching them if needed.
func (f *chunkFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if r, errno, ok := f.w.overlayRead(ctx, f.ds, f.key(), fh, dest, off); ok {
		return r, errno
	}
	piece, errno := f.read(ctx, off, len(dest))
	if errno != 0 {
		return nil, errno
	}
	return pieceResult(piece), 0
}

// read checks the chunk is still part of its array and returns n of its
// bytes from off.
func (f *chunkFile) read(ctx context.Context, off int64, n int) (cache.Piece, syscall.Errno) {
	arr, errno := f.array(ctx)
	if errno != 0 {
		return cache.Piece{}, errno
	}
	piece, size, err := f.ds.readChunk(ctx, arr, f.rel, f.size, off, n)
	if err != nil {
		return cache.Piece{}, errnoOf(ctx, f.ds.opt.Logger, "read", f.path(), err)
	}
	if errno := f.checkSize(size); errno != 0 {
		piece.Release()
		return cache.Piece{}, errno
	}
	return piece, 0
}

// array returns the chunk's array, checking the chunk is still part of it.
func (f *chunkFile) array(ctx context.Context) (*zarr.Array, syscall.Errno) {
	h, err := f.ds.hierarchy(ctx)
	if err != nil {
		return nil, errnoOf(ctx, f.ds.opt.Logger, "read", f.path(), err)
	}
	folder, ok := h.Folder(f.arrayPath)
	if !ok || folder.Array == nil || !folder.Array.IsChunkKey(f.rel) {
		return nil, syscall.ENOENT
	}
	return folder.Array, 0
}

// checkSize fails a read of the chunk whose value is no longer the size
// learnt at lookup.
func (f *chunkFile) checkSize(size int64) syscall.Errno {
	if size == f.size {
		return 0
	}
	// The object changed on the server since lookup: the kernel would
	// cut or pad it to the old size. Wrong bytes are worse than an
	// error for this old file; a new version of the store makes the
	// next open a new file of the new size.
	f.ds.opt.Logger.Warn("chunk size changed on the server since lookup; this open file fails, the next open reads it anew",
		"path", f.path(), "was", f.size, "now", size)
	f.ds.changed(f.modTime, "chunk "+joinKey(f.arrayPath, f.rel)+" changed size")
	return syscall.EIO
}

// pieceResult hands a piece of a chunk to go-fuse: bytes in memory, or a
// range of a disk cache file, which the kernel splices into the reply when
// it can (else it is read into go-fuse's buffer). go-fuse calls Done once
// the reply is written, which releases the piece's file.
func pieceResult(p cache.Piece) fuse.ReadResult {
	if b, ok := p.Memory(); ok {
		return fuse.ReadResultData(b)
	}
	return &fileResult{p: p}
}

type fileResult struct{ p cache.Piece }

func (r *fileResult) Size() int { return r.p.Len() }

func (r *fileResult) Bytes(buf []byte) ([]byte, fuse.Status) {
	if cap(buf) < r.p.Len() {
		buf = make([]byte, r.p.Len())
	}
	b, err := r.p.Read(buf[:r.p.Len()])
	if err != nil {
		return nil, fuse.EIO
	}
	return b, fuse.OK
}

// Seekable lets go-fuse splice the range from the file.
func (r *fileResult) Seekable() (fd uintptr, off int64, sz int) {
	fd, off, sz, _ = r.p.File()
	return fd, off, sz
}

func (r *fileResult) Done() { r.p.Release() }

// sliceAt returns up to n bytes of data from off, clamped to its length.
func sliceAt(data []byte, off int64, n int) []byte {
	if off < 0 || off >= int64(len(data)) {
		return nil
	}
	end := off + int64(n)
	if end > int64(len(data)) {
		end = int64(len(data))
	}
	return data[off:end]
}
