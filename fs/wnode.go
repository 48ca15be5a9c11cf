package fs

import (
	"context"
	"errors"
	iofs "io/fs"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// writeOps answers the operations that change a file: EROFS in a
// read-only mount; in a write mount, through the handle of a file opened
// for writing (whandle). Folders add the namespace operations (Create,
// Mkdir, Unlink, Rmdir, Rename) themselves.
type writeOps struct {
	w *writer
	// rw: the mount is writable, also where w is nil (the read-only parts
	// of a write mount: query directories, tables, descriptions). Their
	// opens and flushes must not answer ENOSYS, which the kernel takes as
	// "never send OPEN (or FLUSH) again" for the whole mount.
	rw bool
}

// openReadOnly answers the OPEN of a file that is never written: see
// openFile; in a write mount it is opened without a handle instead.
func (o writeOps) openReadOnly(ctx context.Context, opt *Options, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if o.rw && flags&writeFlags == 0 {
		return nil, 0, 0
	}
	return openFile(ctx, opt, flags)
}

var (
	_ gofs.NodeSetattrer     = (*writeOps)(nil)
	_ gofs.NodeCreater       = (*writeOps)(nil)
	_ gofs.NodeMkdirer       = (*writeOps)(nil)
	_ gofs.NodeMknoder       = (*writeOps)(nil)
	_ gofs.NodeUnlinker      = (*writeOps)(nil)
	_ gofs.NodeRmdirer       = (*writeOps)(nil)
	_ gofs.NodeRenamer       = (*writeOps)(nil)
	_ gofs.NodeSymlinker     = (*writeOps)(nil)
	_ gofs.NodeLinker        = (*writeOps)(nil)
	_ gofs.NodeSetxattrer    = (*writeOps)(nil)
	_ gofs.NodeRemovexattrer = (*writeOps)(nil)
	_ gofs.NodeWriter        = (*writeOps)(nil)
	_ gofs.NodeFlusher       = (*writeOps)(nil)
	_ gofs.NodeFsyncer       = (*writeOps)(nil)
)

// refused is the errno of an operation the mount never does: EROFS when
// read-only, else EPERM (symlinks, hard links, device files: Datamesh
// keys are plain values).
func (o writeOps) refused() syscall.Errno {
	if o.w == nil {
		return syscall.EROFS
	}
	return syscall.EPERM
}

func (o writeOps) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if h, ok := fh.(*whandle); ok {
		return h.setattr(ctx, in, out)
	}
	return syscall.EROFS
}

func (o writeOps) Create(context.Context, string, uint32, uint32, *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EROFS
}

func (o writeOps) Mkdir(context.Context, string, uint32, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (o writeOps) Mknod(context.Context, string, uint32, uint32, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, o.refused()
}

func (o writeOps) Unlink(context.Context, string) syscall.Errno { return syscall.EROFS }

func (o writeOps) Rmdir(context.Context, string) syscall.Errno { return syscall.EROFS }

func (o writeOps) Rename(context.Context, string, gofs.InodeEmbedder, string, uint32) syscall.Errno {
	return syscall.EROFS
}

func (o writeOps) Symlink(context.Context, string, string, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, o.refused()
}

func (o writeOps) Link(context.Context, gofs.InodeEmbedder, string, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, o.refused()
}

// Setxattr: Datamesh keeps no extended attributes (cp -a asks, and copes).
func (o writeOps) Setxattr(context.Context, string, []byte, uint32) syscall.Errno {
	if o.w == nil {
		return syscall.EROFS
	}
	return syscall.ENOTSUP
}

func (o writeOps) Removexattr(context.Context, string) syscall.Errno {
	if o.w == nil {
		return syscall.EROFS
	}
	return syscall.ENOTSUP
}

func (o writeOps) Write(ctx context.Context, fh gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if h, ok := fh.(*whandle); ok && h.write {
		return h.writeAt(ctx, data, off)
	}
	if o.w == nil {
		return 0, syscall.EROFS
	}
	return 0, syscall.EBADF
}

// Fsync of a file opened for writing uploads it and returns the upload's
// error; otherwise it succeeds: nothing is waiting (tools fsync what they
// opened, and an error would fail them).
func (o writeOps) Fsync(ctx context.Context, fh gofs.FileHandle, flags uint32) syscall.Errno {
	if h, ok := fh.(*whandle); ok {
		return h.fsync(ctx)
	}
	return 0
}

// Flush of a file written queues its upload (see write.go). A read-only
// mount answers ENOSYS: the kernel then stops sending FLUSH for the whole
// mount, so a close() costs no round trip; a write mount cannot, as it
// needs the FLUSH of the files written.
func (o writeOps) Flush(ctx context.Context, fh gofs.FileHandle) syscall.Errno {
	if h, ok := fh.(*whandle); ok {
		return h.flush(ctx)
	}
	if o.w == nil && !o.rw {
		return syscall.ENOSYS
	}
	return 0
}

// whandle is an open file of the overlay.
type whandle struct {
	w     *writer
	f     *wfile
	write bool
}

var (
	_ gofs.FileReleaser = (*whandle)(nil)
	_ gofs.FileReader   = (*whandle)(nil)
)

func (h *whandle) writeAt(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	n, err := h.w.write(ctx, h.f, data, off)
	if err != nil {
		return uint32(n), h.w.errno(ctx, "write", h.f, err)
	}
	return uint32(n), 0
}

func (h *whandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	b, err := h.w.read(ctx, h.f, dest, off)
	if err != nil {
		return nil, h.w.errno(ctx, "read", h.f, err)
	}
	return fuse.ReadResultData(b), 0
}

func (h *whandle) flush(ctx context.Context) syscall.Errno {
	if !h.write {
		return 0
	}
	return h.w.errno(ctx, "close", h.f, h.w.closed(ctx, h.f))
}

func (h *whandle) fsync(ctx context.Context) syscall.Errno {
	w, f := h.w, h.f
	w.mu.Lock()
	key := f.key
	w.mu.Unlock()
	var err error
	switch {
	case isPartial(key):
		// Held until renamed: safe in the spool, nothing to send.
	case isCommit(key):
		err = w.commit(ctx, f)
	default:
		err = w.upload(ctx, f)
	}
	return w.errno(ctx, "fsync", f, err)
}

// Release ends a handle; a written file not queued yet (no FLUSH came) is
// queued now.
func (h *whandle) Release(ctx context.Context) syscall.Errno {
	if !h.write {
		return 0
	}
	w, f := h.w, h.f
	w.mu.Lock()
	f.writers--
	// (A store's consolidated metadata is uploaded at its close, its
	// rename into place, or at the end, never behind its writer's back.
	// A rename that came before this RELEASE, as FUSE allows, is one.)
	pending := f.dirty && f.job == nil && f.writers == 0 && !f.detached && (!isCommit(f.key) || f.renamed)
	w.mu.Unlock()
	if pending {
		go w.closed(w.life, f)
	}
	return 0
}

func (h *whandle) setattr(ctx context.Context, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return h.w.setattr(ctx, h.f, in, out)
}

// setattr changes size (truncate) and times; modes and owners are not
// kept (Datamesh has none), and succeed, so that cp -p and rsync -a work.
func (w *writer) setattr(ctx context.Context, f *wfile, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok {
		if err := w.truncate(ctx, f, int64(size)); err != nil {
			return w.errno(ctx, "truncate", f, err)
		}
	}
	if mt, ok := in.GetMTime(); ok {
		w.mu.Lock()
		f.mtime = mt
		w.mu.Unlock()
	}
	w.attr(f, &out.Attr)
	return 0
}

// attr reports an overlay file.
func (w *writer) attr(f *wfile, a *fuse.Attr) {
	w.mu.Lock()
	size, mtime := f.size, f.mtime
	w.mu.Unlock()
	w.opt.fileAttr(a, size, mtime)
	a.Ino = f.ino
}

// errno maps a write-side failure; the mapping of reads applies, plus the
// spool's ENOSPC and a refused or locked datasource.
func (w *writer) errno(ctx context.Context, op string, f *wfile, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	w.mu.Lock()
	p := f.ds.id + "/" + f.key
	w.mu.Unlock()
	return errnoOf(ctx, w.opt.Logger, op, p, err)
}

// openWrite opens f for writing: O_TRUNC empties it.
func (w *writer) openWrite(ctx context.Context, f *wfile, flags uint32) (*whandle, syscall.Errno) {
	w.mu.Lock()
	f.writers++
	w.mu.Unlock()
	h := &whandle{w: w, f: f, write: true}
	if flags&syscall.O_TRUNC != 0 {
		if err := w.truncate(ctx, f, 0); err != nil {
			h.Release(ctx)
			return nil, w.errno(ctx, "open", f, err)
		}
	}
	return h, 0
}

// wfileNode is a file of the overlay.
type wfileNode struct {
	gofs.Inode
	writeOps
	f *wfile
}

var (
	_ gofs.NodeOpener    = (*wfileNode)(nil)
	_ gofs.NodeReader    = (*wfileNode)(nil)
	_ gofs.NodeGetattrer = (*wfileNode)(nil)
	_ gofs.NodeSetattrer = (*wfileNode)(nil)
)

func (n *wfileNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.w.attr(n.f, &out.Attr)
	return 0
}

func (n *wfileNode) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return n.w.setattr(ctx, n.f, in, out)
}

func (n *wfileNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&writeFlags != 0 {
		h, errno := n.w.openWrite(ctx, n.f, flags)
		return h, 0, errno
	}
	return &whandle{w: n.w, f: n.f}, 0, 0
}

func (n *wfileNode) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	b, err := n.w.read(ctx, n.f, dest, off)
	if err != nil {
		return nil, n.w.errno(ctx, "read", n.f, err)
	}
	return fuse.ReadResultData(b), 0
}

// Fsync without a handle (fsync of a file opened read-only) also uploads.
func (n *wfileNode) Fsync(ctx context.Context, fh gofs.FileHandle, flags uint32) syscall.Errno {
	return (&whandle{w: n.w, f: n.f}).fsync(ctx)
}

// gatewayFile makes the overlay file that stands for the gateway's file at
// key (size bytes; data when its bytes are at hand) when it is opened for
// writing or truncated: written files are always overlay files.
func (w *writer) gatewayFile(ds *datasource, key string, size int64, data []byte) (*wfile, error) {
	if f := w.file(ds, key); f != nil {
		return f, nil
	}
	if data == nil {
		return w.newFile(ds, key, size, true), nil
	}
	f := w.newFile(ds, key, 0, true)
	f.mu.Lock()
	defer f.mu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	sp, err := w.growLocked(context.Background(), f, int64(len(data)))
	if err != nil {
		return nil, err
	}
	if _, err := sp.f.WriteAt(data, 0); err != nil {
		return nil, err
	}
	f.size = int64(len(data))
	return f, nil
}

// gatewayOpen opens a file of the gateway's tree (key, size bytes, data
// when in memory) in a write mount: for writing, through a new overlay
// file; for reading, as usual, or through the overlay file a truncation
// made.
func (w *writer) gatewayOpen(ctx context.Context, ds *datasource, key string, size int64, data []byte, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&writeFlags == 0 {
		if f := w.file(ds, key); f != nil {
			return &whandle{w: w, f: f}, 0, 0
		}
		// The kernel keeps the pages: the file is the gateway's, unchanged.
		return nil, fuse.FOPEN_KEEP_CACHE, 0
	}
	f, err := w.gatewayFile(ds, key, size, data)
	if err != nil {
		return nil, 0, errnoOf(ctx, w.opt.Logger, "open", ds.id+"/"+key, err)
	}
	h, errno := w.openWrite(ctx, f, flags)
	return h, 0, errno
}

// gatewaySetattr truncates (or stamps) a file of the gateway's tree.
func (w *writer) gatewaySetattr(ctx context.Context, ds *datasource, key string, size int64, data []byte, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if h, ok := fh.(*whandle); ok {
		return h.setattr(ctx, in, out)
	}
	f := w.file(ds, key)
	if f == nil {
		if _, ok := in.GetSize(); !ok {
			// Times and modes of an unchanged file: accepted, not kept.
			w.opt.fileAttr(&out.Attr, size, ds.modTime())
			return 0
		}
		var err error
		if f, err = w.gatewayFile(ds, key, size, data); err != nil {
			return errnoOf(ctx, w.opt.Logger, "truncate", ds.id+"/"+key, err)
		}
	}
	return w.setattr(ctx, f, in, out)
}

// overlaid reports a file of the gateway's tree as its overlay file, when
// one was made for it (opened for writing or truncated); false otherwise.
func (w *writer) overlaid(ds *datasource, key string, fh gofs.FileHandle, a *fuse.Attr) bool {
	if w == nil {
		return false
	}
	f, ok := overlayOf(w, ds, key, fh)
	if ok {
		w.attr(f, a)
	}
	return ok
}

func overlayOf(w *writer, ds *datasource, key string, fh gofs.FileHandle) (*wfile, bool) {
	if h, ok := fh.(*whandle); ok {
		return h.f, true
	}
	f := w.file(ds, key)
	return f, f != nil
}

// overlayRead reads a file of the gateway's tree through its overlay file,
// if it has one (ok).
func (w *writer) overlayRead(ctx context.Context, ds *datasource, key string, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno, bool) {
	if w == nil {
		return nil, 0, false
	}
	f, ok := overlayOf(w, ds, key, fh)
	if !ok {
		return nil, 0, false
	}
	b, err := w.read(ctx, f, dest, off)
	if err != nil {
		return nil, w.errno(ctx, "read", f, err), true
	}
	return fuse.ReadResultData(b), 0, true
}

// isNotExist reports a missing key.
func isNotExist(err error) bool { return errors.Is(err, iofs.ErrNotExist) }
