package fs

import (
	"context"
	"slices"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The namespace operations of a write mount's folders. Folders are not
// Datamesh objects: making or removing one costs no request; files are
// keys (see write.go).

// isCreated reports whether the datasource was made by mkdir in this mount.
func (d *datasource) isCreated() bool {
	if d.ov == nil || d.opt.writer == nil {
		return false
	}
	w := d.opt.writer
	w.mu.Lock()
	defer w.mu.Unlock()
	return d.ov.created
}

// lookupWritten answers a lookup from the overlay: a file or folder
// written here, a key deleted here, or anything in a datasource the
// gateway holds nothing of. done is false when the gateway's tree answers.
func (n *dirNode) lookupWritten(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno, bool) {
	w, ov := n.w, n.ds.ov
	key := joinKey(n.path, name)
	w.mu.Lock()
	f := ov.files[key]
	d := ov.dirs[key]
	gone, created := ov.gone[key], ov.created
	w.mu.Unlock()
	switch {
	case f != nil:
		w.attr(f, &out.Attr)
		return n.NewInode(ctx, &wfileNode{writeOps: n.writeOps, f: f}, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: f.ino}), 0, true
	case d != nil && d.made:
		child := &dirNode{writeOps: n.writeOps, ds: n.ds, path: key}
		return n.newDir(ctx, child, d.ino, n.ds.modTime(), out), 0, true
	case gone || created:
		return nil, syscall.ENOENT, true
	}
	return nil, 0, false
}

// mergeListing puts the overlay's entries of folder p into a listing of
// the gateway's tree: they replace entries of the same name, and deleted
// names are left out.
func (w *writer) mergeListing(ds *datasource, p string, s *dirStream) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ov := ds.ov
	d := ov.dirs[p]
	var mine []fuse.DirEntry
	if d != nil {
		for name, isDir := range d.names {
			key := joinKey(p, name)
			switch {
			case isDir && ov.dirs[key] != nil:
				mine = append(mine, fuse.DirEntry{Name: name, Mode: fuse.S_IFDIR, Ino: ov.dirs[key].ino})
			case !isDir && ov.files[key] != nil:
				mine = append(mine, fuse.DirEntry{Name: name, Mode: fuse.S_IFREG, Ino: ov.files[key].ino})
			}
		}
	}
	slices.SortFunc(mine, func(a, b fuse.DirEntry) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	names := make(map[string]bool, len(mine))
	for _, e := range mine {
		names[e.Name] = true
	}
	var gone map[string]bool
	for k := range ov.gone {
		if dir, name := splitKey(k); dir == p {
			if gone == nil {
				gone = map[string]bool{}
			}
			gone[name] = true
		}
	}
	if len(names) == 0 && len(gone) == 0 {
		return
	}
	hide := func(name string) bool { return names[name] || gone[name] }
	dots := slices.Clone(s.fixed[:2])
	rest := slices.DeleteFunc(s.fixed[2:], func(e fuse.DirEntry) bool { return hide(e.Name) })
	s.fixed = append(append(dots, rest...), mine...)
	s.hide = hide
}

// Create makes a file in the folder, open for writing.
func (n *dirNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	w := n.w
	if w == nil || n.isTableDir(ctx) {
		return nil, nil, 0, syscall.EROFS
	}
	if len(name) > maxNameLen {
		return nil, nil, 0, syscall.ENAMETOOLONG
	}
	key := joinKey(n.path, name)
	f := w.file(n.ds, key)
	if f == nil {
		f = w.newFile(n.ds, key, 0, n.GetChild(name) != nil)
		w.mu.Lock()
		f.dirty = true // a new file is a change, even empty
		w.mu.Unlock()
	}
	h, errno := w.openWrite(ctx, f, flags)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	w.attr(f, &out.Attr)
	in := n.NewInode(ctx, &wfileNode{writeOps: n.writeOps, f: f}, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: f.ino})
	return in, h, 0, 0
}

// Mkdir makes a folder: local until files are written into it.
func (n *dirNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	w := n.w
	if w == nil || n.isTableDir(ctx) {
		return nil, syscall.EROFS
	}
	if len(name) > maxNameLen {
		return nil, syscall.ENAMETOOLONG
	}
	key := joinKey(n.path, name)
	w.mu.Lock()
	ov := n.ds.ov
	if ov.files[key] != nil || (ov.dirs[key] != nil && ov.dirs[key].made) {
		w.mu.Unlock()
		return nil, syscall.EEXIST
	}
	d := w.dirLocked(ov, key)
	d.made = true
	delete(ov.gone, key)
	w.dirLocked(ov, n.path).names[name] = true
	w.mu.Unlock()
	child := &dirNode{writeOps: n.writeOps, ds: n.ds, path: key}
	return n.newDir(ctx, child, d.ino, n.ds.modTime(), out), 0
}

// Unlink removes a file: one that never reached the gateway is dropped
// here; a key of the gateway is deleted there, with --allow-delete only.
func (n *dirNode) Unlink(ctx context.Context, name string) syscall.Errno {
	w := n.w
	if w == nil {
		return syscall.EROFS
	}
	key := joinKey(n.path, name)
	w.mu.Lock()
	f := n.ds.ov.files[key]
	if f != nil && !f.everSent && !f.shadows && (f.job == nil || !f.job.started) {
		w.detachLocked(f)
		w.mu.Unlock()
		return 0
	}
	w.mu.Unlock()
	if f == nil && name == infoName && n.isSourceRoot() {
		// Made from the catalog, not a key: it goes with the datasource
		// (rm -r of a datasource removes it first).
		if !w.wo.AllowDelete {
			w.opt.Logger.Warn("delete refused: the mount was not given --allow-delete", "path", n.fullPath(name))
			return syscall.EPERM
		}
		return 0
	}
	if f == nil && n.GetChild(name) == nil {
		return syscall.ENOENT
	}
	if !w.wo.AllowDelete {
		w.opt.Logger.Warn("delete refused: the mount was not given --allow-delete", "path", n.fullPath(name))
		return syscall.EPERM
	}
	if f != nil {
		w.mu.Lock()
		err := w.waitIdleLocked(ctx, f)
		w.mu.Unlock()
		if err != nil {
			return errnoOf(ctx, w.opt.Logger, "unlink", n.fullPath(name), err)
		}
	}
	if n.ds.writer == nil {
		return syscall.EROFS
	}
	// A key the gateway does not have (a metadata file rebuilt from the
	// consolidated metadata, say) is as good as deleted.
	if err := n.ds.writer.Delete(ctx, key); err != nil && !isNotExist(err) {
		return errnoOf(ctx, w.opt.Logger, "unlink", n.fullPath(name), err)
	}
	w.mu.Lock()
	if f != nil {
		w.detachLocked(f)
	}
	n.ds.ov.gone[key] = true
	w.mu.Unlock()
	w.opt.Cache.Forget(n.ds.cacheKey(key))
	return 0
}

// Rmdir removes an empty folder (nothing to send: folders are not keys).
func (n *dirNode) Rmdir(ctx context.Context, name string) syscall.Errno {
	w := n.w
	if w == nil {
		return syscall.EROFS
	}
	key := joinKey(n.path, name)
	if errno := emptyDir(ctx, n.GetChild(name)); errno != 0 {
		return errno
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	ov := n.ds.ov
	delete(ov.dirs, key)
	if d := ov.dirs[n.path]; d != nil {
		delete(d.names, name)
	}
	if !ov.created {
		ov.gone[key] = true
	}
	return 0
}

// emptyDir is 0 when child is a folder with nothing in it.
func emptyDir(ctx context.Context, child *gofs.Inode) syscall.Errno {
	// A datasource's description file does not count: it is not a key.
	if child == nil {
		return syscall.ENOENT
	}
	rd, ok := child.Operations().(gofs.NodeReaddirer)
	if !ok || !child.IsDir() {
		return syscall.ENOTDIR
	}
	s, errno := rd.Readdir(ctx)
	if errno != 0 {
		return errno
	}
	defer s.Close()
	for s.HasNext() {
		e, errno := s.Next()
		if errno != 0 {
			return errno
		}
		if e.Name != "." && e.Name != ".." && !(e.Name == infoName && isSourceRootNode(child)) {
			return syscall.ENOTEMPTY
		}
	}
	return 0
}

// Rename moves a file whose upload has not started (the temporary file of
// zarr, rsync and others): it is then uploaded once, under its new name.
// Anything else (a key the gateway has, a folder) is EXDEV: mv copies it.
func (n *dirNode) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	w := n.w
	if w == nil {
		return syscall.EROFS
	}
	np, ok := newParent.(*dirNode)
	if !ok || np.ds != n.ds {
		return syscall.EXDEV
	}
	if flags&^uint32(renameNoReplace) != 0 {
		return syscall.EINVAL
	}
	if len(newName) > maxNameLen {
		return syscall.ENAMETOOLONG
	}
	oldKey, newKey := joinKey(n.path, name), joinKey(np.path, newName)
	f := w.file(n.ds, oldKey)
	if f == nil {
		if n.GetChild(name) != nil {
			return syscall.EXDEV
		}
		return syscall.ENOENT
	}
	target := np.GetChild(newName)
	if target != nil && target.IsDir() {
		return syscall.EISDIR
	}
	if flags&renameNoReplace != 0 && (target != nil || w.file(n.ds, newKey) != nil) {
		return syscall.EEXIST
	}
	commit := isCommit(newKey) && !isPartial(newKey)
	if commit {
		// Before anything moves: a failure leaves the temporary file
		// where it was (zarr then removes it).
		if err := w.barrier(ctx, n.ds, f); err != nil {
			w.opt.Logger.Error("consolidated metadata not uploaded: the store it describes is incomplete",
				"datasource", n.ds.id, "key", newKey, "err", err)
			return syscall.EIO
		}
	}
	f.mu.Lock()
	w.mu.Lock()
	if f.detached || f.key != oldKey {
		w.mu.Unlock()
		f.mu.Unlock()
		return syscall.ENOENT
	}
	if f.everSent || f.shadows || (f.job != nil && f.job.started) || (f.spool == nil && f.size > 0) {
		w.mu.Unlock()
		f.mu.Unlock()
		w.opt.Logger.Debug("rename of a file already on the gateway: EXDEV (mv copies it)", "path", n.fullPath(name))
		return syscall.EXDEV
	}
	if err := w.failedBeforeLocked(n.ds); err != nil {
		// Refused before anything moves: the writer then removes its
		// temporary file, as after any failed rename.
		w.mu.Unlock()
		f.mu.Unlock()
		return w.errno(ctx, "rename", f, err)
	}
	ov := n.ds.ov
	shadows := target != nil
	if old := ov.files[newKey]; old != nil {
		shadows = old.everSent || old.shadows
	}
	if f.job != nil {
		w.cancelLocked(f.job)
	}
	delete(ov.files, oldKey)
	if d := ov.dirs[n.path]; d != nil {
		delete(d.names, name)
	}
	w.addLocked(f, newKey)
	f.shadows = shadows
	upload := f.dirty && f.writers == 0
	if upload && !commit {
		w.scheduleLocked(f, 0)
	}
	f.renamed = f.dirty && !upload
	w.mu.Unlock()
	f.mu.Unlock()
	if upload && commit {
		return w.errno(ctx, "rename", f, w.upload(ctx, f))
	}
	return 0
}

// renameNoReplace is RENAME_NOREPLACE.
const renameNoReplace = 1

// Setattr of a folder: times and modes are accepted, not kept (cp -a).
func (n *dirNode) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if n.w == nil {
		return syscall.EROFS
	}
	return n.Getattr(ctx, fh, out)
}

// Fsync of a folder uploads everything written in its datasource and
// reports whether all of it succeeded.
func (n *dirNode) Fsync(ctx context.Context, fh gofs.FileHandle, flags uint32) syscall.Errno {
	if n.w == nil {
		return 0
	}
	err := n.w.barrier(ctx, n.ds, nil)
	if err != nil {
		n.w.opt.Logger.Warn("fsync: uploads failed", "datasource", n.ds.id, "err", err)
		return syscall.EIO
	}
	return 0
}

// withWrites adds the datasources made here to a catalog listing and
// leaves out those removed here.
func (r *Root) withWrites(ids []string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.made) == 0 && len(r.removed) == 0 {
		return ids
	}
	out := slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return r.removed[id] })
	for id := range r.made {
		out = append(out, id)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Mkdir makes a new datasource: its id is checked against Datamesh's rule
// for new ids (EINVAL otherwise); the gateway learns of it at its first
// upload.
func (r *Root) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	w := r.w
	if w == nil {
		return nil, syscall.EROFS
	}
	if len(name) > maxNameLen {
		return nil, syscall.ENAMETOOLONG
	}
	r.mu.Lock()
	made, removed := r.made[name], r.removed[name]
	r.mu.Unlock()
	if made {
		return nil, syscall.EEXIST
	}
	if !removed {
		ok, err := r.exists(ctx, name)
		if err != nil {
			return nil, errnoOf(ctx, r.opt.Logger, "mkdir", name, err)
		}
		if ok {
			return nil, syscall.EEXIST
		}
		if w.wo.ValidNewID != nil {
			if err := w.wo.ValidNewID(name); err != nil {
				r.opt.Logger.Warn("mkdir: not a valid new datasource id", "id", name, "err", err)
				return nil, syscall.EINVAL
			}
		}
	}
	r.mu.Lock()
	delete(r.removed, name)
	delete(r.sources, name)
	r.made[name] = true
	r.mu.Unlock()
	ds := r.source(name, true)
	r.opt.Logger.Info("new datasource", "id", name)
	r.opt.dirAttr(&out.Attr, ds.modTime())
	ino := r.inoOf(name)
	out.Attr.Ino = ino
	return r.NewInode(ctx, &dirNode{writeOps: r.writeOps, ds: ds}, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: ino}), 0
}

// Rmdir removes an empty datasource: one made here and never uploaded to
// is dropped; any other is cleared on the gateway (DELETE /zarr/{id}/),
// with --allow-delete only.
func (r *Root) Rmdir(ctx context.Context, name string) syscall.Errno {
	w := r.w
	if w == nil {
		return syscall.EROFS
	}
	if errno := emptyDir(ctx, r.GetChild(name)); errno != 0 {
		return errno
	}
	r.mu.Lock()
	ds, made := r.sources[name], r.made[name]
	r.mu.Unlock()
	if made && ds != nil {
		w.mu.Lock()
		local := !ds.ov.sent && ds.ov.pending == 0
		w.mu.Unlock()
		if local {
			r.mu.Lock()
			delete(r.made, name)
			delete(r.sources, name)
			r.mu.Unlock()
			return 0
		}
	}
	if !w.wo.AllowDelete {
		r.opt.Logger.Warn("delete refused: the mount was not given --allow-delete", "datasource", name)
		return syscall.EPERM
	}
	if ds == nil {
		ds = r.source(name, false)
	}
	if ds.writer == nil {
		return syscall.EROFS
	}
	if err := ds.writer.Clear(ctx); err != nil {
		return errnoOf(ctx, r.opt.Logger, "rmdir", name, err)
	}
	r.opt.Logger.Info("datasource cleared", "id", name)
	r.mu.Lock()
	r.removed[name] = true
	delete(r.made, name)
	delete(r.sources, name)
	r.mu.Unlock()
	r.opt.Cache.Invalidate(name + "/")
	return 0
}

// Create at the top: only folders (datasources) live there.
func (r *Root) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	if r.w == nil {
		return nil, nil, 0, syscall.EROFS
	}
	r.opt.Logger.Warn("create refused: only datasource folders live at the top of the mount", "name", name)
	return nil, nil, 0, syscall.EPERM
}

// Rename of a datasource is refused: Datamesh has no such operation.
func (r *Root) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if r.w == nil {
		return syscall.EROFS
	}
	return syscall.EPERM
}

// Setattr of the top folder: accepted, not kept.
func (r *Root) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if r.w == nil {
		return syscall.EROFS
	}
	return r.Getattr(ctx, fh, out)
}

// isSourceRootNode reports whether in is a datasource's top directory.
func isSourceRootNode(in *gofs.Inode) bool {
	d, ok := in.Operations().(*dirNode)
	return ok && d.isSourceRoot()
}
