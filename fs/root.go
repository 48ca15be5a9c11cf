package fs

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sync/singleflight"

	"github.com/oceanum-dmfs/dmfs/zarr"
)

// Root is the mount's top directory: one directory per datasource.
type Root struct {
	gofs.Inode
	writeOps
	opt Options

	mu       sync.Mutex
	listed   []string  // catalog ids, sorted
	listedAt time.Time // zero: never listed
	known    map[string]time.Time
	missing  map[string]time.Time
	sources  map[string]*datasource
	modified map[string]time.Time  // the catalog's modified, by id
	infos    map[string]*Info      // what the catalog says, by id
	stages   map[string]stageEntry // staged query paths, by name
	stageRun singleflight.Group    // one stage per name at a time
	made     map[string]bool       // datasources made by mkdir in this (write) mount
	removed  map[string]bool       // datasources removed through this mount
	load     singleflight.Group    // one catalog request at a time

	mounted atomic.Bool // kernel notifications only reach a mounted tree
}

var (
	_ gofs.NodeLookuper  = (*Root)(nil)
	_ gofs.NodeReaddirer = (*Root)(nil)
	_ gofs.NodeGetattrer = (*Root)(nil)
	_ gofs.NodeStatfser  = (*Root)(nil)
)

// maxNameLen is the longest name the mount serves or looks up (NAME_MAX,
// what statfs reports): longer names are ENAMETOOLONG, never served.
const maxNameLen = 255

// safeName reports whether a catalog id can be one file name: the mount
// shows every such id (Datamesh's `^[a-z0-9_-]{3,80}$` is its rule for
// creating ids, not for what it serves).
func safeName(id string) bool {
	return id != "" && id != "." && id != ".." && len(id) <= maxNameLen &&
		!strings.ContainsAny(id, "/\x00")
}

// NewRoot builds the root of a mount.
func NewRoot(opt Options) *Root {
	opt.fill()
	return &Root{
		writeOps: writeOps{w: opt.writer, rw: opt.writer != nil},
		made:     map[string]bool{},
		removed:  map[string]bool{},
		opt:      opt,
		known:    map[string]time.Time{},
		missing:  map[string]time.Time{},
		sources:  map[string]*datasource{},
		modified: map[string]time.Time{},
		infos:    map[string]*Info{},
		stages:   map[string]stageEntry{},
	}
}

// Getattr reports the root directory.
func (r *Root) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	r.opt.dirAttr(&out.Attr, r.opt.started)
	return 0
}

// Statfs answers df: a read-only filesystem with no free space.
func (r *Root) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = 4096
	out.Frsize = 4096
	out.NameLen = maxNameLen
	return 0
}

// catalog returns the datasource ids, fetched again after the metadata TTL.
// When a refresh fails, the last good listing keeps being served (with one
// warning per TTL): the zarr endpoints may well still work.
func (r *Root) catalog(ctx context.Context) ([]string, error) {
	r.mu.Lock()
	if !r.listedAt.IsZero() && r.opt.now().Sub(r.listedAt) < r.opt.MetadataTTL {
		ids := r.listed
		r.mu.Unlock()
		return ids, nil
	}
	r.mu.Unlock()
	ids, err := shared(ctx, &r.load, "", func(lctx context.Context) ([]string, error) {
		entries, err := r.opt.Catalog.Datasources(lctx)
		if err != nil {
			return nil, err
		}
		valid := make([]string, 0, len(entries))
		for _, e := range entries {
			if !safeName(e.ID) {
				r.opt.Logger.Warn("catalog: skipping a datasource id that cannot be a file name", "id", fmt.Sprintf("%.80q", e.ID))
				continue
			}
			valid = append(valid, e.ID)
			r.noteModified(e)
		}
		// A catalog that repeats an id must not list it twice.
		sort.Strings(valid)
		valid = slices.Compact(valid)
		now := r.opt.now()
		r.mu.Lock()
		r.listed, r.listedAt = valid, now
		for _, id := range valid {
			r.known[id] = now
		}
		r.mu.Unlock()
		r.releaseIdle(now)
		return valid, nil
	})
	if err == nil || ctx.Err() != nil {
		return ids, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.listedAt.IsZero() {
		return nil, err
	}
	// Keep serving what was known; ask again after another TTL.
	r.listedAt = r.opt.now()
	for _, id := range r.listed {
		r.known[id] = r.listedAt
	}
	r.opt.Logger.Warn("catalog refresh failed; serving the last listing", "datasources", len(r.listed), "err", err)
	return r.listed, nil
}

// noteModified remembers the catalog's modified time of a datasource: its
// files' mtime, the same across remounts (rsync -a copies nothing twice).
func (r *Root) noteModified(e Entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e.Info != nil {
		r.infos[e.ID] = e.Info
	}
	if !e.Modified.IsZero() {
		r.modified[e.ID] = e.Modified
	}
}

// releaseIdle drops the metadata of datasources nobody used for a while, so
// a mount that touched many datasources once does not hold all their
// metadata for ever; it is loaded again (one request) at the next use.
func (r *Root) releaseIdle(now time.Time) {
	r.mu.Lock()
	sources := make([]*datasource, 0, len(r.sources))
	for _, ds := range r.sources {
		sources = append(sources, ds)
	}
	r.mu.Unlock()
	for _, ds := range sources {
		ds.releaseIfIdle(now, idleRelease*r.opt.MetadataTTL)
	}
}

// idleRelease is how many metadata TTLs a datasource's metadata is kept
// without use.
const idleRelease = 2

// Readdir lists the catalog.
func (r *Root) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	ids, err := r.catalog(ctx)
	if err != nil {
		return nil, errnoOf(ctx, r.opt.Logger, "readdir", "/", err)
	}
	ids = r.withWrites(ids)
	entries := dotEntries(r.EmbeddedInode())
	for _, id := range ids {
		entries = append(entries, fuse.DirEntry{Name: id, Mode: fuse.S_IFDIR, Ino: r.inoOf(id)})
	}
	// Query paths are never listed; the queries given at mount time are.
	for _, name := range slices.Sorted(maps.Keys(r.opt.Queries)) {
		entries = append(entries, fuse.DirEntry{Name: name, Mode: fuse.S_IFDIR, Ino: r.inoOf(name)})
	}
	return gofs.NewListDirStream(entries), 0
}

// exists answers whether id is a datasource: from the catalog listing, or,
// for ids the listing does not show, by asking for that datasource.
func (r *Root) exists(ctx context.Context, id string) (bool, error) {
	if !safeName(id) {
		return false, nil
	}
	now := r.opt.now()
	r.mu.Lock()
	if t, ok := r.known[id]; ok && now.Sub(t) < r.opt.MetadataTTL {
		r.mu.Unlock()
		return true, nil
	}
	if t, ok := r.missing[id]; ok && now.Sub(t) < r.opt.MetadataTTL {
		r.mu.Unlock()
		return false, nil
	}
	r.mu.Unlock()
	e, err := r.opt.Catalog.Datasource(ctx, id)
	if err == nil {
		r.noteModified(e)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err != nil && ctx.Err() == nil && !errors.Is(err, iofs.ErrNotExist) && slices.Contains(r.listed, id):
		// The catalog is failing but listed this id when it last answered:
		// keep serving it (its zarr endpoints may well work).
		r.known[id] = now
		return true, nil
	case err == nil:
		r.known[id] = now
		delete(r.missing, id)
		return true, nil
	case errors.Is(err, iofs.ErrNotExist):
		r.missing[id] = now
		delete(r.known, id)
		return false, nil
	default:
		return false, err
	}
}

// Lookup finds a datasource directory by id.
func (r *Root) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if len(name) > maxNameLen {
		return nil, syscall.ENAMETOOLONG
	}
	if q, ok := r.opt.Queries[name]; ok {
		return r.lookupQuery(ctx, name, q, out)
	}
	r.mu.Lock()
	made, removed := r.made[name], r.removed[name]
	_, listed := slices.BinarySearch(r.listed, name)
	r.mu.Unlock()
	if removed {
		return nil, syscall.ENOENT
	}
	if !made && !listed && isQueryName(name) {
		qn, err := parseQueryName(name)
		if err != nil {
			r.opt.Logger.Warn("not a query path: EINVAL", "name", fmt.Sprintf("%.300q", name), "reason", err)
			return nil, syscall.EINVAL
		}
		return r.lookupQuery(ctx, name, qn.query, out)
	}
	if !made {
		ok, err := r.exists(ctx, name)
		if err != nil {
			return nil, errnoOf(ctx, r.opt.Logger, "lookup", name, err)
		}
		if !ok {
			return nil, syscall.ENOENT
		}
	}
	ds := r.source(name, false)
	node := &dirNode{writeOps: r.writeOps, ds: ds}
	r.opt.dirAttr(&out.Attr, ds.modTime())
	ino := r.inoOf(name)
	out.Attr.Ino = ino
	return r.NewInode(ctx, node, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: ino}), 0
}

// source returns the datasource id, made on first use; created: made by
// mkdir in this mount.
func (r *Root) source(id string, created bool) *datasource {
	r.mu.Lock()
	defer r.mu.Unlock()
	ds := r.sources[id]
	if ds == nil {
		store := r.opt.Catalog.Store(id)
		ds = newDatasource(id, store, &r.opt, r.modified[id])
		if r.opt.writer != nil {
			ds.ov = newOverlay(created)
			ds.writer, _ = store.(zarr.Writer)
		}
		ds.forget = func() { r.forgetEntries(id) }
		ds.dropPages = func(key string) { r.dropPages(id, key) }
		ds.kind = &kindState{
			learn:     func(ctx context.Context) (string, error) { return r.learnContainer(ctx, id) },
			info:      func(c string) *Info { return r.describe(id, c, nil) },
			tableName: id + tableSuffix,
			openTable: func(ctx context.Context, ifChanged string) (Table, error) {
				return r.opt.Catalog.OpenTable(ctx, id, "", ifChanged)
			},
		}
		r.sources[id] = ds
	}
	return ds
}

// forgetEntries tells the kernel to drop the entries it caches under the
// datasource directory id, so that the next access looks names up again and
// gets the new version's inodes. It runs in the background: a notification
// sent while the kernel waits on a handler of the same directory deadlocks.
func (r *Root) forgetEntries(id string) {
	if !r.mounted.Load() {
		return
	}
	go func() {
		if dir := r.GetChild(id); dir != nil {
			forgetChildren(dir)
		}
	}()
}

// dropPages tells the kernel to drop the cached pages of the file at key in
// datasource id, if it has that file, in the background (see forgetEntries).
func (r *Root) dropPages(id, key string) {
	if !r.mounted.Load() {
		return
	}
	go func() {
		in := r.GetChild(id)
		for _, part := range strings.Split(key, "/") {
			if in == nil {
				return
			}
			in = in.GetChild(part)
		}
		if in != nil {
			_ = in.NotifyContent(0, 0)
		}
	}()
}

func forgetChildren(dir *gofs.Inode) {
	for name, child := range dir.Children() {
		if child.IsDir() {
			forgetChildren(child)
		}
		// ENOENT (the kernel had already forgotten it) is the normal case.
		_ = dir.NotifyEntry(name)
	}
}

// inoOf numbers a datasource directory; ids come and go with the catalog,
// so each has its own one-entry range.
func (r *Root) inoOf(id string) uint64 { return r.opt.inodes.base("\x00"+id, 1) }

func (o *Options) dirAttr(a *fuse.Attr, mtime time.Time) {
	a.Mode = fuse.S_IFDIR | 0o555
	if o.writer != nil {
		a.Mode = fuse.S_IFDIR | 0o755
	}
	if o.DirMode != 0 {
		a.Mode = fuse.S_IFDIR | o.DirMode
	}
	a.Nlink = 2
	a.Uid, a.Gid = o.UID, o.GID
	setTimes(a, mtime)
}

func (o *Options) fileAttr(a *fuse.Attr, size int64, mtime time.Time) {
	a.Mode = fuse.S_IFREG | 0o444
	if o.writer != nil {
		a.Mode = fuse.S_IFREG | 0o644
	}
	if o.FileMode != 0 {
		a.Mode = fuse.S_IFREG | o.FileMode
	}
	a.Nlink = 1
	a.Size = uint64(size)
	a.Blocks = (uint64(size) + 511) / 512
	// The I/O size readers are told to prefer. cp (and others) allocate a
	// buffer of it per file, fresh pages every time: with 1 MiB, a warm
	// cp -r of 4 MiB chunks took 0.53 s against 0.30 s with 128 KiB, and
	// small chunks did not change (issue 18). The kernel still asks dmfs
	// for up to 1 MiB at a time (readahead, MaxWrite).
	a.Blksize = 128 << 10
	a.Uid, a.Gid = o.UID, o.GID
	setTimes(a, mtime)
}

// setTimes stamps a node with its version's time: the mount's start, or
// when a change of the store was noticed (see datasource). A changed mtime
// is also what makes the kernel drop a file's cached pages.
func setTimes(a *fuse.Attr, t time.Time) {
	s := uint64(t.Unix())
	a.Atime, a.Mtime, a.Ctime = s, s, s
}
