package fs

import (
	"context"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/oceanum-dmfs/dmfs/zarr"
)

// metaFile is a metadata document (.zmetadata, .zgroup, .zarray, .zattrs,
// zarr.json) held in memory from the consolidated metadata: exact size, no
// request to read it.
type metaFile struct {
	gofs.Inode
	readOnly
	opt  *Options
	data []byte
	// For an array's metadata: opening it (cp reads .zarray before the
	// chunks) tells the array is being read, not just listed.
	ds        *datasource
	arrayPath string
}

var (
	_ gofs.NodeOpener    = (*metaFile)(nil)
	_ gofs.NodeReader    = (*metaFile)(nil)
	_ gofs.NodeGetattrer = (*metaFile)(nil)
)

// Getattr reports the document's exact size.
func (f *metaFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.opt.fileAttr(&out.Attr, int64(len(f.data)))
	out.Attr.Ino = f.StableAttr().Ino
	return 0
}

// Open allows reading only; the content cannot change under this inode.
func (f *metaFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	if f.ds != nil {
		f.ds.noteOpened(f.arrayPath, "")
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

// Read serves from memory.
func (f *metaFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return fuse.ReadResultData(sliceAt(f.data, off, len(dest))), 0
}

// chunkFile is one chunk (or shard) object of an array, fetched on open
// through the cache; its size was learnt at lookup.
type chunkFile struct {
	gofs.Inode
	readOnly
	ds        *datasource
	arrayPath string
	rel       string // key relative to the array folder
	size      int64
}

var (
	_ gofs.NodeOpener    = (*chunkFile)(nil)
	_ gofs.NodeReader    = (*chunkFile)(nil)
	_ gofs.NodeGetattrer = (*chunkFile)(nil)
)

// chunkHandle is an open chunk. Its bytes are fetched on the first read,
// not at open: when the kernel still holds the file's pages (a warm re-read
// after the chunk left dmfs's cache) no read comes and nothing is fetched.
// Once fetched, reads never refetch, even if the cache evicts the chunk.
type chunkHandle struct {
	file *chunkFile
	arr  *zarr.Array

	mu   sync.Mutex
	data []byte
}

// Getattr reports the size learnt at lookup.
func (f *chunkFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.ds.opt.fileAttr(&out.Attr, f.size)
	out.Attr.Ino = f.StableAttr().Ino
	return 0
}

// Open checks the chunk is still part of its array; bytes come on first read.
func (f *chunkFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	h, err := f.ds.hierarchy(ctx)
	if err != nil {
		return nil, 0, errnoOf(f.ds.opt.Logger, "open", f.path(), err)
	}
	folder, ok := h.Folder(f.arrayPath)
	if !ok || folder.Array == nil || !folder.Array.IsChunkKey(f.rel) {
		return nil, 0, syscall.ENOENT
	}
	f.ds.noteOpened(f.arrayPath, f.rel)
	return &chunkHandle{file: f, arr: folder.Array}, fuse.FOPEN_KEEP_CACHE, 0
}

func (f *chunkFile) path() string { return f.ds.id + "/" + joinKey(f.arrayPath, f.rel) }

// Read serves from the chunk's bytes, fetching them (or taking them from the
// cache) on the first read of this handle.
func (f *chunkFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h, ok := fh.(*chunkHandle)
	if !ok {
		return nil, syscall.EBADF
	}
	data, errno := h.bytes(ctx)
	if errno != 0 {
		return nil, errno
	}
	return fuse.ReadResultData(sliceAt(data, off, len(dest))), 0
}

func (h *chunkHandle) bytes(ctx context.Context) ([]byte, syscall.Errno) {
	h.mu.Lock()
	data := h.data
	h.mu.Unlock()
	if data != nil {
		return data, 0
	}
	// No lock across the fetch: the cache already makes concurrent first
	// reads share one download, and each stays interruptible.
	f := h.file
	data, err := f.ds.readChunk(ctx, h.arr, f.rel)
	if err != nil {
		return nil, errnoOf(f.ds.opt.Logger, "read", f.path(), err)
	}
	if int64(len(data)) != f.size {
		// The object changed on the server since lookup: the kernel would
		// cut or pad it to the old size. Wrong bytes are worse than an
		// error; the entry expires after the metadata TTL.
		f.ds.opt.Logger.Warn("chunk size changed on the server since lookup; refusing to serve it",
			"path", f.path(), "was", f.size, "now", len(data))
		return nil, syscall.EIO
	}
	h.mu.Lock()
	h.data = data
	h.mu.Unlock()
	return data, 0
}

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

// readOnly answers every mutating operation with EROFS. The mount is also
// `ro`, so the kernel refuses most of them first; this covers the rest and
// callers that reach nodes without a mount.
type readOnly struct{}

var (
	_ gofs.NodeSetattrer     = (*readOnly)(nil)
	_ gofs.NodeCreater       = (*readOnly)(nil)
	_ gofs.NodeMkdirer       = (*readOnly)(nil)
	_ gofs.NodeMknoder       = (*readOnly)(nil)
	_ gofs.NodeUnlinker      = (*readOnly)(nil)
	_ gofs.NodeRmdirer       = (*readOnly)(nil)
	_ gofs.NodeRenamer       = (*readOnly)(nil)
	_ gofs.NodeSymlinker     = (*readOnly)(nil)
	_ gofs.NodeLinker        = (*readOnly)(nil)
	_ gofs.NodeSetxattrer    = (*readOnly)(nil)
	_ gofs.NodeRemovexattrer = (*readOnly)(nil)
	_ gofs.NodeWriter        = (*readOnly)(nil)
	_ gofs.NodeFlusher       = (*readOnly)(nil)
)

func (readOnly) Setattr(context.Context, gofs.FileHandle, *fuse.SetAttrIn, *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

func (readOnly) Create(context.Context, string, uint32, uint32, *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EROFS
}

func (readOnly) Mkdir(context.Context, string, uint32, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (readOnly) Mknod(context.Context, string, uint32, uint32, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (readOnly) Unlink(context.Context, string) syscall.Errno { return syscall.EROFS }

func (readOnly) Rmdir(context.Context, string) syscall.Errno { return syscall.EROFS }

func (readOnly) Rename(context.Context, string, gofs.InodeEmbedder, string, uint32) syscall.Errno {
	return syscall.EROFS
}

func (readOnly) Symlink(context.Context, string, string, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (readOnly) Link(context.Context, gofs.InodeEmbedder, string, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (readOnly) Setxattr(context.Context, string, []byte, uint32) syscall.Errno { return syscall.EROFS }

func (readOnly) Removexattr(context.Context, string) syscall.Errno { return syscall.EROFS }

func (readOnly) Write(context.Context, gofs.FileHandle, []byte, int64) (uint32, syscall.Errno) {
	return 0, syscall.EROFS
}

// Flush answers ENOSYS: a read-only file has nothing to flush, and on
// ENOSYS the kernel stops sending FLUSH for the whole mount, which saves a
// synchronous round trip on every close (cp -r makes 4 per file without it:
// LOOKUP, OPEN, READ, FLUSH; RELEASE does not wait).
func (readOnly) Flush(context.Context, gofs.FileHandle) syscall.Errno { return syscall.ENOSYS }
