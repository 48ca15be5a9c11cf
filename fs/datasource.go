package fs

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	iofs "io/fs"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/oceanum-dmfs/dmfs/access"
	"github.com/oceanum-dmfs/dmfs/cache"
	"github.com/oceanum-dmfs/dmfs/zarr"
)

// datasource is one mounted Zarr store: its hierarchy, loaded once and again
// after the metadata TTL, and per-array access state for the lookup and
// readahead policies.
//
// A store changes on the server. Each hierarchy with a new digest (any
// metadata document changed anywhere) or a chunk found changed starts a new
// version: cached chunks are dropped, every node gets new inode numbers (so
// the kernel's page cache and sizes of the old files are never used for
// new opens), files get a new mtime, and the kernel is told to forget the
// old entries.
type datasource struct {
	id string
	// ns names the datasource in the cache and the inode table: its id, or
	// for a query the staged qhash (a name staged again to another qhash
	// shares nothing with the old one).
	ns    string
	store zarr.Store
	// kind says what the datasource holds (nil: a Zarr store); see kind.go.
	kind  *kindState
	opt   *Options
	load  singleflight.Group // one metadata load at a time
	lists singleflight.Group // one listing per chunk folder at a time
	// forget drops the kernel's entries under this datasource; set by the
	// root once its directory inode exists.
	forget func()
	// dropPages drops the kernel's cached pages of the file at key.
	dropPages func(key string)
	// policy decides what lookups cost and what is fetched ahead.
	policy *access.Policy
	// In a write mount: the mount's writes (guarded by the writer's
	// mutex) and where they go.
	ov     *overlay
	writer zarr.Writer

	mu       sync.Mutex
	cur      version                  // h is nil until loaded, and after release
	loadedAt time.Time                // when cur.h was loaded or last confirmed
	usedAt   time.Time                // last use, for releaseIfIdle
	listings map[string]*chunkListing // by chunk folder path, for the current version
}

// chunkListing is the gateway's listing of one chunk folder: the grid
// indices of the names it holds, ascending. Trusted for the metadata TTL.
type chunkListing struct {
	idx []int64
	at  time.Time
}

// has reports whether the listing holds the chunk name of grid index i.
func (l *chunkListing) has(i int64) bool {
	_, ok := slices.BinarySearch(l.idx, i)
	return ok
}

// version is one state of the store as the mount serves it.
type version struct {
	h       *zarr.Hierarchy
	digest  [32]byte  // of h, kept when h is released
	gen     uint64    // 0 for the first
	modTime time.Time // mtime of every file of this version
	// disk names this version in the cache's disk tier ("": not kept
	// there); see onDisk. diskRefresh: a chunk changed in place under
	// the same digest, so what the disk holds is doubted.
	disk        string
	diskRefresh bool
	// diskSince: when this mount read the metadata that named disk. A
	// chunk from the disk is trusted for the metadata TTL from then, as a
	// chunk fetched then would be; after it, a reader's lookup checks it
	// with the gateway.
	diskSince time.Time
}

// newDatasource makes a datasource whose files have mtime modified (the
// mount's start when zero).
func newDatasource(id string, store zarr.Store, opt *Options, modified time.Time) *datasource {
	if modified.IsZero() {
		modified = opt.started
	}
	return &datasource{id: id, ns: id, store: store, opt: opt, listings: map[string]*chunkListing{},
		policy: access.New(access.Config{Readahead: opt.Readahead, Window: opt.Window, Budget: opt.cacheBytes / 4, Now: opt.now}),
		cur:    version{modTime: modified.Truncate(time.Second)}}
}

// hierarchy returns the store's tree, loading it on first use and again after
// the metadata TTL. A failed reload keeps serving the tree already known.
func (d *datasource) hierarchy(ctx context.Context) (*zarr.Hierarchy, error) {
	v, err := d.version(ctx)
	return v.h, err
}

// version is hierarchy with the version it belongs to.
func (d *datasource) version(ctx context.Context) (version, error) {
	d.mu.Lock()
	now := d.opt.now()
	v, fresh := d.cur, d.cur.h != nil && now.Sub(d.loadedAt) < d.opt.MetadataTTL
	d.usedAt = now
	d.mu.Unlock()
	if fresh {
		return v, nil
	}
	nv, err := shared(ctx, &d.load, "", func(lctx context.Context) (version, error) {
		start := d.opt.now()
		nh, err := zarr.Open(lctx, d.id, d.store)
		if err != nil {
			return version{}, err
		}
		nv := d.install(nh)
		d.opt.Logger.Debug("metadata loaded", "datasource", d.id, "duration", d.opt.now().Sub(start))
		return nv, nil
	})
	switch {
	case err == nil:
		return nv, nil
	case ctx.Err() != nil:
		return version{}, ctx.Err()
	case v.h != nil && !errors.Is(err, iofs.ErrNotExist):
		d.opt.Logger.Warn("metadata refresh failed; serving the tree already loaded",
			"datasource", d.id, "err", err)
		d.mu.Lock()
		d.loadedAt = d.opt.now() // try again after another TTL
		d.mu.Unlock()
		return v, nil
	default:
		return version{}, fmt.Errorf("datasource %s: %w", d.id, err)
	}
}

// install swaps in a freshly loaded tree, starting a new version when the
// store changed. The tree and its version change under one lock, so no
// reader numbers the new tree's files with the old version's inodes.
func (d *datasource) install(h *zarr.Hierarchy) version {
	digest := h.Digest()
	d.mu.Lock()
	first := d.cur.h == nil && d.cur.gen == 0 && d.cur.digest == [32]byte{}
	changed := !first && digest != d.cur.digest
	d.cur.h, d.cur.digest, d.loadedAt = h, digest, d.opt.now()
	if first || changed {
		d.cur.disk, d.cur.diskRefresh, d.cur.diskSince = d.diskVersion(digest), false, d.loadedAt
	}
	if changed {
		d.bumpLocked()
	}
	v := d.cur
	d.mu.Unlock()
	if changed {
		d.afterBump(v.gen, "metadata changed")
	}
	return v
}

// changed starts a new version because a file of the version with mtime
// seen turned out changed, unless a newer version already exists (many
// readers of the old files notice the same change).
func (d *datasource) changed(seen time.Time, why string) {
	d.mu.Lock()
	if d.cur.modTime.After(seen) {
		d.mu.Unlock()
		return
	}
	d.bumpLocked()
	// Same digest: the disk's copies of other chunks may be as old.
	d.cur.diskRefresh = true
	gen := d.cur.gen
	d.mu.Unlock()
	d.afterBump(gen, why)
}

// bumpLocked starts a new version of the store (see datasource).
func (d *datasource) bumpLocked() {
	d.cur.gen++
	d.listings = map[string]*chunkListing{}
	// A new mtime, strictly later than the last one, so that tools
	// comparing times (make, rsync) see the change even within a second.
	mt := d.opt.now().Truncate(time.Second)
	if !mt.After(d.cur.modTime) {
		mt = d.cur.modTime.Add(time.Second)
	}
	d.cur.modTime = mt
}

// afterBump drops what the old version left: its cached chunks, its inode
// ranges and the kernel's entries.
func (d *datasource) afterBump(gen uint64, why string) {
	d.opt.inodes.forget(inodePrefix(d.ns, gen-1))
	d.opt.Logger.Info("datasource changed on the server; serving its new version",
		"datasource", d.id, "why", why, "version", gen)
	d.opt.Cache.Invalidate(d.ns + "/")
	if d.forget != nil {
		d.forget()
	}
}

// inodePrefix is the inode-range key prefix of version gen's folders.
func inodePrefix(id string, gen uint64) string { return fmt.Sprintf("%s\x00%d/", id, gen) }

// modTime is the mtime of the current version's files.
func (d *datasource) modTime() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cur.modTime
}

// releaseIfIdle drops the hierarchy when unused for idle; its digest stays,
// so that a change is still noticed at the next load.
func (d *datasource) releaseIfIdle(now time.Time, idle time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cur.h != nil && now.Sub(d.usedAt) >= idle {
		d.cur.h = nil
		d.policy.Forget()
		d.listings = map[string]*chunkListing{}
		d.opt.Logger.Debug("metadata released (unused)", "datasource", d.id)
	}
}

// readMetadata reports a read of an array's metadata from its start (cp,
// tar and rsync read .zarray before the chunks). The chunks are taken to
// be of their uncompressed size, so that a copier's readahead never holds
// more than the cache allows (with size 0 it was unbounded: 4 MiB chunks
// under a 32 MiB cache were fetched, evicted and fetched again).
func (d *datasource) readMetadata(arrayPath string) {
	d.mu.Lock()
	h := d.cur.h
	d.mu.Unlock()
	if h == nil {
		return
	}
	if f, ok := h.Folder(arrayPath); ok && f.Array != nil {
		d.readAhead(f.Array, "", f.Array.ChunkBytes())
	}
}

// readAhead reports a read of the array at key ("" for its metadata; a
// chunk of size bytes, 0 if unknown) and fetches ahead what the policy
// says.
func (d *datasource) readAhead(arr *zarr.Array, key string, size int64) {
	for _, k := range d.policy.Read(arr.Path, arr.ChunkKeysAfter, key, size) {
		full := joinKey(arr.Path, k)
		d.opt.Cache.Prefetch(d.cacheKey(full), d.fetcher(full, true), d.onDisk(full, false))
	}
}

// chunkNames returns the listing of the chunk folder at path (relative to
// the store root) from the gateway, where it offers listings: what a
// folder holds, so that a sparse array never lists a name that then fails
// to stat. It costs one request per folder per TTL; nil when the store
// cannot list (the caller then computes names from the grid).
func (d *datasource) chunkNames(ctx context.Context, path string, cf zarr.ChunkFolder) *chunkListing {
	lister, ok := d.store.(zarr.Lister)
	if !ok {
		return nil
	}
	now := d.opt.now()
	d.mu.Lock()
	l := d.listings[path]
	d.mu.Unlock()
	if l != nil && now.Sub(l.at) < d.opt.MetadataTTL {
		return l
	}
	// One request for all who list this folder at once (ls and find in
	// parallel, dask workers).
	l, err := shared(ctx, &d.lists, path, func(lctx context.Context) (*chunkListing, error) {
		entries, err := lister.List(lctx, path)
		if err != nil {
			return nil, err
		}
		l := &chunkListing{at: now}
		for _, e := range entries {
			name, isDir := strings.CutSuffix(e, "/")
			if isDir != cf.Dirs() {
				continue
			}
			if i, ok := cf.Index(name); ok {
				l.idx = append(l.idx, i)
			}
		}
		slices.Sort(l.idx)
		l.idx = slices.Compact(l.idx)
		d.mu.Lock()
		d.listings[path] = l
		d.mu.Unlock()
		return l, nil
	})
	if err != nil {
		d.opt.Logger.Debug("no listing from the gateway; chunk names computed from the grid",
			"datasource", d.id, "path", path, "err", err)
		return nil
	}
	return l
}

// listedAbsent reports whether a fresh listing of the chunk folder at path
// says it does not hold grid index i: such a lookup needs no request.
func (d *datasource) listedAbsent(path string, i int64) bool {
	d.mu.Lock()
	l := d.listings[path]
	d.mu.Unlock()
	return l != nil && d.opt.now().Sub(l.at) < d.opt.MetadataTTL && !l.has(i)
}

// cacheKey names a chunk in the shared cache.
func (d *datasource) cacheKey(key string) string { return d.ns + "/" + key }

// diskVersion names the store with hierarchy digest in the cache's disk
// tier: its namespace (id, or a query's qhash) and the digest; the cache
// adds the gateway. A store whose metadata changed anywhere has another
// digest, so it never finds the old version's chunks. A --write mount keeps
// nothing there: its own uploads would leave the copies stale.
func (d *datasource) diskVersion(digest [32]byte) string {
	if d.opt.writer != nil {
		return ""
	}
	return d.ns + "\x00" + hex.EncodeToString(digest[:])
}

// onDisk is how key's bytes are kept in the cache's disk tier: read from it
// and written to it, or with refresh (a caller that doubts the cached
// bytes), or in a version that found a chunk changed in place, fetched from
// the gateway and written over it.
func (d *datasource) onDisk(key string, refresh bool) cache.FetchOption {
	d.mu.Lock()
	v, again, since := d.cur.disk, d.cur.diskRefresh, d.cur.diskSince
	d.mu.Unlock()
	if refresh || again {
		return cache.RefreshOnDisk(v, key)
	}
	return cache.OnDisk(v, key).TrustedSince(since)
}

// fetcher gets key's bytes; ahead marks a readahead fetch, which nobody
// waits for yet (the gateway's limiter serves waiting readers first).
func (d *datasource) fetcher(key string, ahead bool) cache.FetchFunc {
	return func(ctx context.Context, to cache.Sink) ([]byte, error) {
		if ahead {
			ctx = zarr.WithReadahead(ctx)
		}
		ctx = zarr.WithSizeHint(ctx, d.chunkBytes(key))
		start := d.opt.now()
		var b []byte
		var err error
		if sg, ok := d.store.(zarr.SinkGetter); ok && to != nil {
			b, err = sg.GetTo(ctx, key, zarr.Sink(to))
		} else {
			b, err = d.store.Get(ctx, key)
		}
		d.opt.Logger.Debug("fetch", "datasource", d.id, "key", key, "in memory", len(b),
			"duration", d.opt.now().Sub(start), "err", err)
		return b, err
	}
}

// chunkSize answers a lookup of a chunk: from what is known, else with one
// request that fits the caller — a HEAD for a lister, a GET (into the cache)
// for a reader, who is about to open it.
//
// What is known is trusted for the metadata TTL. After it, a reader's
// lookup (the kernel looks a name up again once its entry expires) fetches
// the chunk again: changed bytes start a new version of the store (changed
// is true, and the caller must look the name up again in it); bytes that
// could not be compared (evicted from memory) drop the kernel's pages of
// the file, so a chunk rewritten in place is never served old after the TTL.
func (d *datasource) chunkSize(ctx context.Context, arr *zarr.Array, rel string, seen time.Time) (size int64, changed bool, err error) {
	key := joinKey(arr.Path, rel)
	ck := d.cacheKey(key)
	size, state := d.opt.Cache.Stat(ck)
	stale := false
	if state != cache.StatUnknown {
		age, ok := d.opt.Cache.Age(ck)
		stale = !ok || age >= d.opt.MetadataTTL
	}
	switch {
	case state == cache.StatMissing && !stale:
		return 0, false, fmt.Errorf("chunk %s/%s: %w", d.id, key, iofs.ErrNotExist)
	case state == cache.StatPresent && !stale, state == cache.StatSized && !stale:
		return size, false, nil
	}
	if state == cache.StatPresent && d.policy.Lister(arr.Path) {
		// A lister reads nothing: the bytes held are checked when a
		// reader comes.
		return size, false, nil
	}
	var old []byte
	if stale {
		if state == cache.StatPresent {
			old, _ = d.opt.Cache.Get(ck)
		}
		d.opt.Cache.Forget(ck)
	}
	var n int64
	var fresh []byte
	decision := d.policy.LookedUp(arr.Path, arr.ChunkKeysAfter, rel)
	if decision.Fetch == access.Head {
		for _, k := range decision.SizesAhead {
			ahead := joinKey(arr.Path, k)
			d.opt.Cache.PrefetchSize(d.cacheKey(ahead), d.header(ahead, true), d.onDisk(ahead, false))
		}
		n, err = d.opt.Cache.SizeOrHead(ctx, ck, d.header(key, false), d.onDisk(key, stale))
		if errors.Is(err, zarr.ErrSizeUnknown) {
			// The gateway's HEAD says nothing: the size costs the body,
			// from now on without asking HEAD first.
			d.policy.HeadUnsupported()
			decision.Fetch = access.Get
		}
	}
	if decision.Fetch == access.Get {
		// A chunk in the disk cache is read from there in place: its size is
		// in its entry, and nothing is loaded into memory.
		var onDisk bool
		if !stale {
			n, onDisk = d.opt.Cache.SizeInPlace(ck, d.onDisk(key, false))
		}
		switch {
		case onDisk:
		case stale:
			// The bytes held before are compared with these.
			fresh, err = d.opt.Cache.GetOrFetch(ctx, ck, d.fetcher(key, false), d.onDisk(key, stale))
			n = int64(len(fresh))
		default:
			// Only the size is wanted here: the value stays where reads
			// find it (the memory file), not copied into the heap.
			var p cache.Piece
			p, n, err = d.opt.Cache.ReadAt(ctx, ck, 0, 0, d.fetcher(key, false), d.onDisk(key, false))
			p.Release()
		}
	}
	if err != nil || !stale || state == cache.StatMissing {
		return n, false, err
	}
	switch {
	case n != size || (old != nil && !bytes.Equal(old, fresh)):
		d.changed(seen, "chunk "+key+" changed")
		return n, true, nil
	case old == nil && fresh != nil && d.dropPages != nil:
		d.dropPages(key)
	}
	return n, false, nil
}

// header asks key's size; ahead as in fetcher.
func (d *datasource) header(key string, ahead bool) func(context.Context) (int64, error) {
	return func(ctx context.Context) (int64, error) {
		if ahead {
			ctx = zarr.WithReadahead(ctx)
		}
		return d.store.Head(ctx, key)
	}
}

// readChunk returns n bytes of a chunk from off for a read, and the
// chunk's size, after telling the policy (the chunk's size as looked up),
// which may fetch the chunks that follow. The piece is in memory, or in the
// disk cache read in place.
func (d *datasource) readChunk(ctx context.Context, arr *zarr.Array, rel string, size, off int64, n int) (cache.Piece, int64, error) {
	d.readAhead(arr, rel, size)
	key := joinKey(arr.Path, rel)
	return d.opt.Cache.ReadAt(ctx, d.cacheKey(key), off, n, d.fetcher(key, false), d.onDisk(key, false))
}

// openChunk is readChunk for an open in passthrough: the whole chunk, in
// a memory file of its own.
func (d *datasource) openChunk(ctx context.Context, arr *zarr.Array, rel string, size int64) (cache.Piece, error) {
	d.readAhead(arr, rel, size)
	key := joinKey(arr.Path, rel)
	return d.opt.Cache.OwnFile(ctx, d.cacheKey(key), d.fetcher(key, false), d.onDisk(key, false))
}
