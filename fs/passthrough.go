package fs

import (
	"context"
	"log/slog"
	"sync/atomic"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/oceanum-dmfs/dmfs/cache"
)

// Large chunks are read by the kernel straight from dmfs's memory (FUSE passthrough, Linux
// 6.9 and later): the open of a chunk of at least the cache's OwnFileMin hands the kernel the
// memory file that holds the chunk (cache.OwnFile), and the kernel serves every read of that
// open from it, with no READ request and no copy into the FUSE file's page cache. Reading 4 MiB
// chunks that dmfs holds then runs as fast as a local copy.
//
// It costs the mount its no-open mode (see openFile): a kernel that gets ENOSYS for one OPEN
// never sends another, so a passthrough mount answers every OPEN, keeping the file's page cache
// (FOPEN_KEEP_CACHE) for files read through dmfs, and each open costs one round trip more.
// Giving the kernel a file needs CAP_SYS_ADMIN, so only root mounts can; a mount tries once, at
// mount time, and keeps the no-open mode if the kernel refuses. A write mount answers OPEN
// anyway, and keeps reading through dmfs: a file it serves may be overlaid by one written.

// A mount whose readers open many small chunks in a row and no large one gives up passthrough:
// it answers the next such OPEN with ENOSYS, and the kernel opens every file itself from then
// on, as in the no-open mode, so that small chunks again cost no OPEN. Large chunks are then
// read through dmfs. There is no way back for the mount's life.

// smallRunToNoOpen is how many small chunks opened in a row, with no large one, make a mount
// give up passthrough.
const smallRunToNoOpen = 100

// openMode says how a mount answers OPEN. Mount decides it once the kernel has answered INIT;
// an OPEN that comes sooner waits for that.
type openMode struct {
	ready       chan struct{} // closed once decided
	passthrough bool
	ownMin      int64 // the least chunk size opened for passthrough

	smallRun atomic.Int32 // small chunks opened since the last large one
	gaveUp   atomic.Bool  // passthrough given up: opens answered ENOSYS
	log      *slog.Logger
}

// passing says whether opens are answered for passthrough (not given up).
func (m *openMode) passing() bool { return m.passthrough && !m.gaveUp.Load() }

// chunkOpen says how to answer the open of a chunk of size bytes: for passthrough, or else as
// openFile does. It counts the run of small chunks, and gives passthrough up after
// smallRunToNoOpen of them.
func (m *openMode) chunkOpen(size int64) (passthrough bool) {
	if !m.passing() {
		return false
	}
	if size >= m.ownMin {
		m.smallRun.Store(0)
		return true
	}
	if m.smallRun.Add(1) >= smallRunToNoOpen && m.gaveUp.CompareAndSwap(false, true) {
		m.log.Info("many small chunks opened and no large one: files are opened without asking dmfs from now on, and large chunks read through dmfs (no FUSE passthrough)",
			"small_chunks_in_a_row", smallRunToNoOpen)
	}
	return false
}

// noOpen is the mode of a tree that Mount did not mount (tests mount it themselves).
var noOpen = func() *openMode {
	m := &openMode{ready: make(chan struct{})}
	close(m.ready)
	return m
}()

// wait returns the decided mode, or nil if ctx ends first.
func (m *openMode) wait(ctx context.Context) *openMode {
	select {
	case <-m.ready:
		return m
	case <-ctx.Done():
		return nil
	}
}

// decidePassthrough turns passthrough on when the mount is read-only, the cache keeps memory
// files and the kernel takes one as a backing file, and says why not otherwise.
func (m *openMode) decidePassthrough(server *fuse.Server, opt *Options, off bool) (ok bool, why string) {
	defer close(m.ready)
	if off {
		return false, "turned off"
	}
	if opt.writer != nil {
		return false, "a write mount reads through dmfs"
	}
	ownMin, ok := opt.Cache.OwnFileMin()
	if !ok {
		return false, "the cache keeps no memory files"
	}
	fd, err := unix.MemfdCreate("dmfs-probe", unix.MFD_CLOEXEC)
	if err != nil {
		return false, "memfd_create: " + err.Error()
	}
	defer unix.Close(fd)
	id, errno := server.RegisterBackingFd(&fuse.BackingMap{Fd: int32(fd)})
	if errno != 0 {
		return false, "the kernel refuses backing files: " + errno.Error()
	}
	if errno := server.UnregisterBackingFd(id); errno != 0 {
		return false, "the kernel keeps a probe backing file: " + errno.Error()
	}
	m.passthrough, m.ownMin, m.log = true, ownMin, opt.Logger
	return true, ""
}

// PassthroughMin is the least size of a chunk the kernel reads from dmfs's
// memory (FUSE passthrough); 0 when none is, or not yet decided.
func (r *Root) PassthroughMin() int64 {
	select {
	case <-r.opt.opens.ready:
		if r.opt.opens.passing() {
			return r.opt.opens.ownMin
		}
	default:
	}
	return 0
}

// passthroughHandle is an open chunk whose reads the kernel serves from the chunk's own memory
// file; the piece keeps the file until the kernel releases the open.
type passthroughHandle struct{ p cache.Piece }

var (
	_ gofs.FilePassthroughFder = (*passthroughHandle)(nil)
	_ gofs.FileReleaser        = (*passthroughHandle)(nil)
)

// PassthroughFd is asked once per inode while it has no open: the kernel keeps its own
// reference to the file from then on.
func (h *passthroughHandle) PassthroughFd() (int, bool) {
	fd, _, _, ok := h.p.File()
	return int(fd), ok
}

func (h *passthroughHandle) Release(ctx context.Context) syscall.Errno {
	h.p.Release()
	return 0
}

// openPassthrough opens a chunk for passthrough: its bytes are fetched (or found) now, whole,
// and the kernel reads them from its memory file. Were the kernel to refuse the file after
// all, go-fuse reads it through Read instead.
func (f *chunkFile) openPassthrough(ctx context.Context) (gofs.FileHandle, uint32, syscall.Errno) {
	arr, errno := f.array(ctx)
	if errno != 0 {
		return nil, 0, errno
	}
	p, err := f.ds.openChunk(ctx, arr, f.rel, f.size)
	if err != nil {
		return nil, 0, errnoOf(ctx, f.ds.opt.Logger, "open", f.path(), err)
	}
	if errno := f.checkSize(int64(p.Len())); errno != 0 {
		p.Release()
		return nil, 0, errno
	}
	return &passthroughHandle{p: p}, fuse.FOPEN_KEEP_CACHE, 0
}
