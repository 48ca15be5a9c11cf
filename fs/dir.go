package fs

import (
	"context"
	"errors"
	"slices"
	"sort"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/oceanum-dmfs/dmfs/cache"
	"github.com/oceanum-dmfs/dmfs/zarr"
)

// dirNode is a folder of a datasource's store: the datasource itself, a
// group, an array, an implicit folder, or a folder of chunk keys inside an
// array (nested `/` keys, v3 `c/...`). It holds only its path; what it
// contains is read from the datasource's current hierarchy on every call.
type dirNode struct {
	gofs.Inode
	writeOps
	ds   *datasource
	path string // store path of this folder, "" for the datasource root
	// chunks is set for folders inside an array's chunk keys: the array's
	// path and this folder's path relative to it.
	chunks    bool
	arrayPath string
	chunkRel  string
}

var (
	_ gofs.NodeLookuper  = (*dirNode)(nil)
	_ gofs.NodeReaddirer = (*dirNode)(nil)
	_ gofs.NodeGetattrer = (*dirNode)(nil)
)

// Getattr reports a directory.
func (n *dirNode) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.ds.opt.dirAttr(&out.Attr, n.ds.modTime())
	out.Attr.Ino = n.StableAttr().Ino
	return 0
}

func (n *dirNode) fullPath(name string) string { return n.ds.id + "/" + joinKey(n.path, name) }

// listing is a folder resolved in the current hierarchy: its metadata files
// and child folders (ordinary folders only), then the chunk level it shows,
// if any, and the inode numbers of its entries in that order.
type listing struct {
	folder    *zarr.Folder
	arr       *zarr.Array
	chunks    zarr.ChunkFolder
	hasChunks bool
	nfixed    int64 // files + children
	inoBase   uint64
	modTime   time.Time
}

func (l *listing) len() int64 {
	n := l.nfixed
	if l.hasChunks {
		n += l.chunks.Len()
	}
	return n
}

// resolve lists the folder in the gateway's tree. In a write mount a
// folder the gateway does not have (made here, or a datasource that holds
// no store yet) resolves empty: its entries are the overlay's.
func (n *dirNode) resolve(ctx context.Context) (*listing, syscall.Errno) {
	writing := n.ds.ov != nil
	empty := func(mt time.Time) (*listing, syscall.Errno) {
		return &listing{folder: &zarr.Folder{Path: n.path}, modTime: mt}, 0
	}
	if writing && n.ds.isCreated() {
		return empty(n.ds.modTime())
	}
	v, err := n.ds.version(ctx)
	if err != nil {
		if writing && (errors.Is(err, zarr.ErrNotZarr) || isNotExist(err)) {
			return empty(n.ds.modTime())
		}
		if n.path == "" && !n.chunks && errors.Is(err, zarr.ErrNotZarr) {
			// A listed datasource that holds no store (cleared, or not
			// written yet) is an empty directory, not a name that fails.
			n.ds.opt.Logger.Debug("datasource holds no Zarr store: empty", "datasource", n.ds.id, "err", err)
			return empty(n.ds.modTime())
		}
		return nil, errnoOf(ctx, n.ds.opt.Logger, "metadata", n.ds.id, err)
	}
	h := v.h
	l := &listing{modTime: v.modTime}
	if n.chunks {
		af, ok := h.Folder(n.arrayPath)
		if !ok || af.Array == nil {
			if writing {
				return empty(v.modTime)
			}
			return nil, syscall.ENOENT
		}
		l.arr = af.Array
		if l.chunks, ok = af.Array.ChunkFolder(n.chunkRel); !ok {
			if writing {
				return empty(v.modTime)
			}
			return nil, syscall.ENOENT
		}
		l.hasChunks = true
	} else {
		folder, ok := h.Folder(n.path)
		if !ok {
			if writing {
				return empty(v.modTime)
			}
			return nil, syscall.ENOENT
		}
		l.folder, l.arr = folder, folder.Array
		l.nfixed = int64(len(folder.Files) + len(folder.Children))
		if folder.Array != nil {
			l.chunks, l.hasChunks = folder.Array.ChunkFolder("")
		}
	}
	// Numbers are per version: a changed store's files are new inodes.
	l.inoBase = n.ds.opt.inodes.base(inodePrefix(n.ds.ns, v.gen)+n.path, uint64(l.len()))
	return l, 0
}

// Lookup finds a metadata file, a child folder or a chunk.
func (n *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if len(name) > maxNameLen {
		return nil, syscall.ENAMETOOLONG
	}
	if n.w != nil {
		if in, errno, done := n.lookupWritten(ctx, name, out); done {
			return in, errno
		}
	}
	if in, errno, done := n.lookupSourceRoot(ctx, name, out); done {
		return in, errno
	}
	l, errno := n.resolve(ctx)
	if errno != 0 {
		return nil, errno
	}
	opt := n.ds.opt
	if f := l.folder; f != nil {
		if i := sort.Search(len(f.Files), func(i int) bool { return f.Files[i].Name >= name }); i < len(f.Files) && f.Files[i].Name == name {
			data := f.Files[i].Data
			ino := l.inoBase + uint64(i)
			opt.fileAttr(&out.Attr, int64(len(data)), l.modTime)
			out.Attr.Ino = ino
			meta := &metaFile{writeOps: n.writeOps, opt: opt, data: data, modTime: l.modTime,
				ds: n.ds, key: joinKey(n.path, name)}
			if l.arr != nil {
				meta.array, meta.arrayPath = true, l.arr.Path
			}
			return n.NewInode(ctx, meta, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: ino}), 0
		}
		if i := sort.SearchStrings(f.Children, name); i < len(f.Children) && f.Children[i] == name {
			child := &dirNode{writeOps: n.writeOps, ds: n.ds, path: joinKey(n.path, name)}
			return n.newDir(ctx, child, l.inoBase+uint64(len(f.Files)+i), l.modTime, out), 0
		}
	}
	if !l.hasChunks {
		return nil, syscall.ENOENT
	}
	idx, ok := l.chunks.Index(name)
	if !ok || n.ds.listedAbsent(n.chunkPath(l), idx) {
		return nil, syscall.ENOENT
	}
	ino := l.inoBase + uint64(l.nfixed+idx)
	rel := joinKey(n.chunkRel, name)
	if l.chunks.Dirs() {
		child := &dirNode{writeOps: n.writeOps, ds: n.ds, path: joinKey(n.path, name), chunks: true, arrayPath: l.arr.Path, chunkRel: rel}
		return n.newDir(ctx, child, ino, l.modTime, out), 0
	}
	size, changed, err := n.ds.chunkSize(ctx, l.arr, rel, l.modTime)
	if err != nil {
		return nil, errnoOf(ctx, opt.Logger, "lookup", n.fullPath(name), err)
	}
	if changed {
		// The store has a new version now: answer with its inode.
		return n.Lookup(ctx, name, out)
	}
	opt.fileAttr(&out.Attr, size, l.modTime)
	out.Attr.Ino = ino
	child := &chunkFile{writeOps: n.writeOps, ds: n.ds, arrayPath: l.arr.Path, rel: rel, size: size, modTime: l.modTime}
	return n.NewInode(ctx, child, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: ino}), 0
}

func (n *dirNode) newDir(ctx context.Context, child *dirNode, ino uint64, mtime time.Time, out *fuse.EntryOut) *gofs.Inode {
	n.ds.opt.dirAttr(&out.Attr, mtime)
	out.Attr.Ino = ino
	return n.NewInode(ctx, child, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: ino})
}

// chunkPath is the store path of the chunk folder this listing shows.
func (n *dirNode) chunkPath(l *listing) string { return joinKey(l.arr.Path, n.chunkRel) }

// Readdir lists `.` and `..`, metadata files, child folders, then the
// chunks: those the gateway's folder listing holds (one request per chunk
// folder per TTL), or, where it offers no listing, the names computed from
// the grid lazily (an array of millions of chunks is never built as a
// list), less those known missing. Entries keep their grid inode numbers
// either way, so tools that sort by inode read chunks in key order.
func (n *dirNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	extra, store, errno := n.sourceRootEntries(ctx)
	if errno != 0 {
		return nil, errno
	}
	if !store {
		return gofs.NewListDirStream(append(dotEntries(n.EmbeddedInode()), extra...)), 0
	}
	l, errno := n.resolve(ctx)
	if errno != 0 {
		return nil, errno
	}
	s := &dirStream{l: l, ds: n.ds}
	s.fixed = append(dotEntries(n.EmbeddedInode()), extra...)
	if f := l.folder; f != nil {
		// Entry i keeps inode number inoBase+i even when a name too long
		// to serve is left out.
		for i, file := range f.Files {
			s.fixed = append(s.fixed, fuse.DirEntry{Name: file.Name, Mode: fuse.S_IFREG, Ino: l.inoBase + uint64(i)})
		}
		for i, c := range f.Children {
			s.fixed = append(s.fixed, fuse.DirEntry{Name: c, Mode: fuse.S_IFDIR, Ino: l.inoBase + uint64(len(f.Files)+i)})
		}
		s.fixed = slices.DeleteFunc(s.fixed, func(e fuse.DirEntry) bool {
			if len(e.Name) > maxNameLen {
				n.ds.opt.Logger.Warn("name longer than 255 bytes not shown", "path", n.fullPath(e.Name[:64]+"..."))
				return true
			}
			return false
		})
	}
	if n.w != nil {
		n.w.mergeListing(n.ds, n.path, s)
	}
	if l.hasChunks {
		s.nchunks = l.chunks.Len()
		if listed := n.ds.chunkNames(ctx, n.chunkPath(l), l.chunks); listed != nil {
			s.listed, s.nchunks = listed.idx, int64(len(listed.idx))
		} else if !l.chunks.Dirs() {
			s.skipMissing = joinKey(l.arr.Path, n.chunkRel)
		}
		s.chunkMode = fuse.S_IFREG
		if l.chunks.Dirs() {
			s.chunkMode = fuse.S_IFDIR
		} else {
			n.ds.policy.Listed(l.arr.Path)
		}
	}
	return s, 0
}

// dotEntries are the `.` and `..` entries of dir.
func dotEntries(dir *gofs.Inode) []fuse.DirEntry {
	parent := dir.StableAttr().Ino
	if _, p := dir.Parent(); p != nil {
		parent = p.StableAttr().Ino
	}
	return []fuse.DirEntry{
		{Name: ".", Mode: fuse.S_IFDIR, Ino: dir.StableAttr().Ino},
		{Name: "..", Mode: fuse.S_IFDIR, Ino: parent},
	}
}

// dirStream yields fixed entries, then chunks: the listed grid indices, or
// every index of the grid.
type dirStream struct {
	l         *listing
	ds        *datasource
	fixed     []fuse.DirEntry
	listed    []int64 // grid indices from the gateway's listing; nil: all
	nchunks   int64
	chunkMode uint32
	// skipMissing, when set, is the chunk folder's store path: names the
	// cache knows missing are left out of a computed listing.
	skipMissing string
	// hide, when set, leaves out chunk names (written or deleted through
	// the mount: the overlay lists or hides them).
	hide func(name string) bool
	pos  int64 // next entry: fixed first, then chunks
}

var (
	_ gofs.DirStream        = (*dirStream)(nil)
	_ gofs.FileReaddirenter = (*dirStream)(nil)
	_ gofs.FileSeekdirer    = (*dirStream)(nil)
)

func (s *dirStream) HasNext() bool {
	for (s.skipMissing != "" || s.hide != nil) && s.pos >= int64(len(s.fixed)) && s.pos < int64(len(s.fixed))+s.nchunks {
		name := s.l.chunks.Name(s.chunkIndex(s.pos))
		if !s.skipped(name) {
			break
		}
		s.pos++
	}
	return s.pos < int64(len(s.fixed))+s.nchunks
}

// chunkIndex is the grid index of the chunk at stream position pos.
func (s *dirStream) chunkIndex(pos int64) int64 {
	i := pos - int64(len(s.fixed))
	if s.listed != nil {
		i = s.listed[i]
	}
	return i
}

func (s *dirStream) skipped(name string) bool {
	if s.hide != nil && s.hide(name) {
		return true
	}
	if s.skipMissing == "" {
		return false
	}
	_, st := s.ds.opt.Cache.Stat(s.ds.cacheKey(joinKey(s.skipMissing, name)))
	return st == cache.StatMissing
}

func (s *dirStream) Next() (fuse.DirEntry, syscall.Errno) {
	var e fuse.DirEntry
	if s.pos < int64(len(s.fixed)) {
		e = s.fixed[s.pos]
	} else {
		i := s.chunkIndex(s.pos)
		e = fuse.DirEntry{Name: s.l.chunks.Name(i), Mode: s.chunkMode, Ino: s.l.inoBase + uint64(s.l.nfixed+i)}
	}
	s.pos++
	e.Off = uint64(s.pos)
	return e, 0
}

func (s *dirStream) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if !s.HasNext() {
		return nil, 0
	}
	e, errno := s.Next()
	return &e, errno
}

func (s *dirStream) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if off > uint64(int64(len(s.fixed))+s.nchunks) {
		return syscall.EINVAL
	}
	s.pos = int64(off)
	return 0
}

func (s *dirStream) Close() {}
