package fs

import (
	"context"
	"errors"
	iofs "io/fs"
	"regexp"
	"sort"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sync/singleflight"
)

// Root is the mount's top directory: one directory per datasource.
type Root struct {
	gofs.Inode
	readOnly
	opt Options

	mu       sync.Mutex
	listed   []string  // catalog ids, sorted
	listedAt time.Time // zero: never listed
	known    map[string]time.Time
	missing  map[string]time.Time
	sources  map[string]*datasource
	load     singleflight.Group // one catalog request at a time
}

var (
	_ gofs.NodeLookuper  = (*Root)(nil)
	_ gofs.NodeReaddirer = (*Root)(nil)
	_ gofs.NodeGetattrer = (*Root)(nil)
	_ gofs.NodeStatfser  = (*Root)(nil)
)

// datasourceID is the Datamesh id rule; anything else is not looked up.
var datasourceID = regexp.MustCompile(`^[a-z0-9_-]{3,80}$`)

// NewRoot builds the root of a mount.
func NewRoot(opt Options) *Root {
	opt.fill()
	return &Root{
		opt:     opt,
		known:   map[string]time.Time{},
		missing: map[string]time.Time{},
		sources: map[string]*datasource{},
	}
}

// Getattr reports the root directory.
func (r *Root) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	r.opt.dirAttr(&out.Attr)
	return 0
}

// Statfs answers df: a read-only filesystem with no free space.
func (r *Root) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = 4096
	out.Frsize = 4096
	out.NameLen = 255
	return 0
}

// catalog returns the datasource ids, fetched again after the metadata TTL.
func (r *Root) catalog(ctx context.Context) ([]string, error) {
	r.mu.Lock()
	if !r.listedAt.IsZero() && r.opt.now().Sub(r.listedAt) < r.opt.MetadataTTL {
		ids := r.listed
		r.mu.Unlock()
		return ids, nil
	}
	r.mu.Unlock()
	return shared(ctx, &r.load, func(lctx context.Context) ([]string, error) {
		ids, err := r.opt.Catalog.Datasources(lctx)
		if err != nil {
			return nil, err
		}
		valid := make([]string, 0, len(ids))
		for _, id := range ids {
			if datasourceID.MatchString(id) {
				valid = append(valid, id)
			} else {
				r.opt.Logger.Warn("catalog: skipping invalid datasource id", "id", id)
			}
		}
		sort.Strings(valid)
		now := r.opt.now()
		r.mu.Lock()
		r.listed, r.listedAt = valid, now
		for _, id := range valid {
			r.known[id] = now
		}
		r.mu.Unlock()
		return valid, nil
	})
}

// Readdir lists the catalog.
func (r *Root) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	ids, err := r.catalog(ctx)
	if err != nil {
		return nil, errnoOf(r.opt.Logger, "readdir", "/", err)
	}
	entries := make([]fuse.DirEntry, len(ids))
	for i, id := range ids {
		entries[i] = fuse.DirEntry{Name: id, Mode: fuse.S_IFDIR, Ino: r.inoOf(id)}
	}
	return gofs.NewListDirStream(entries), 0
}

// exists answers whether id is a datasource: from the catalog listing, or,
// for ids the listing does not show, by asking for that datasource.
func (r *Root) exists(ctx context.Context, id string) (bool, error) {
	if !datasourceID.MatchString(id) {
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
	err := r.opt.Catalog.Datasource(ctx, id)
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
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
	ok, err := r.exists(ctx, name)
	if err != nil {
		return nil, errnoOf(r.opt.Logger, "lookup", name, err)
	}
	if !ok {
		return nil, syscall.ENOENT
	}
	r.mu.Lock()
	ds := r.sources[name]
	if ds == nil {
		ds = newDatasource(name, r.opt.Catalog.Store(name), &r.opt)
		r.sources[name] = ds
	}
	r.mu.Unlock()
	node := &dirNode{ds: ds}
	r.opt.dirAttr(&out.Attr)
	ino := r.inoOf(name)
	out.Attr.Ino = ino
	return r.NewInode(ctx, node, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: ino}), 0
}

// inoOf numbers a datasource directory; ids come and go with the catalog,
// so each has its own one-entry range.
func (r *Root) inoOf(id string) uint64 { return r.opt.inodes.base("\x00"+id, 1) }

func (o *Options) dirAttr(a *fuse.Attr) {
	a.Mode = fuse.S_IFDIR | 0o555
	a.Nlink = 2
	a.Uid, a.Gid = o.UID, o.GID
	o.setTimes(a)
}

func (o *Options) fileAttr(a *fuse.Attr, size int64) {
	a.Mode = fuse.S_IFREG | 0o444
	a.Nlink = 1
	a.Size = uint64(size)
	a.Blocks = (uint64(size) + 511) / 512
	a.Blksize = 1 << 20
	a.Uid, a.Gid = o.UID, o.GID
	o.setTimes(a)
}

// setTimes stamps every node with the mount's start: Datamesh gives no
// per-key times, and a fixed time keeps `make`-style tools and rsync stable.
func (o *Options) setTimes(a *fuse.Attr) {
	t := uint64(o.started.Unix())
	a.Atime, a.Mtime, a.Ctime = t, t, t
}
