package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/oceanum-dmfs/dmfs/cache"
	"github.com/oceanum-dmfs/dmfs/zarr"
)

// headAheadTimeout bounds one background HEAD.
const headAheadTimeout = time.Minute

// listerWindow is how long after a listing of an array's chunks a lookup of
// an unknown chunk is taken to come from a lister (`ls -l`, `du`), which
// stats and reads nothing, rather than from a reader.
const listerWindow = 30 * time.Second

// copierWindow is how soon after listing an array an open of its metadata
// must come to be taken as a tool copying the whole folder, not a person.
const copierWindow = time.Second

// sequentialSlack is how far ahead of the previous open a chunk may be and
// still count as reading in key order: parallel readers (dask threads) open
// neighbouring chunks slightly out of order.
const sequentialSlack = 4

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
	// noHead is set once a HEAD answered without a size: sizes then cost
	// a GET.
	noHead atomic.Bool
	// In a write mount: the mount's writes (guarded by the writer's
	// mutex) and where they go.
	ov     *overlay
	writer zarr.Writer

	mu       sync.Mutex
	cur      version   // h is nil until loaded, and after release
	loadedAt time.Time // when cur.h was loaded or last confirmed
	usedAt   time.Time // last use, for releaseIfIdle
	arrays   map[string]*arrayState
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
}

// arrayState tells readers from listers, and sequential readers from others.
type arrayState struct {
	listedAt time.Time // last readdir of the array's chunks
	openedAt time.Time // last open of one of its chunks
	lastRead string    // key (relative to the array) of the last chunk opened
}

// newDatasource makes a datasource whose files have mtime modified (the
// mount's start when zero).
func newDatasource(id string, store zarr.Store, opt *Options, modified time.Time) *datasource {
	if modified.IsZero() {
		modified = opt.started
	}
	return &datasource{id: id, ns: id, store: store, opt: opt, arrays: map[string]*arrayState{}, listings: map[string]*chunkListing{},
		cur: version{modTime: modified.Truncate(time.Second)}}
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
		d.arrays = map[string]*arrayState{}
		d.listings = map[string]*chunkListing{}
		d.opt.Logger.Debug("metadata released (unused)", "datasource", d.id)
	}
}

func (d *datasource) array(path string) *arrayState {
	st := d.arrays[path]
	if st == nil {
		st = &arrayState{}
		d.arrays[path] = st
	}
	return st
}

// noteListed records a readdir of an array's chunk folders.
func (d *datasource) noteListed(arrayPath string) {
	d.mu.Lock()
	d.array(arrayPath).listedAt = d.opt.now()
	d.mu.Unlock()
}

// noteOpened records that a file of the array was opened for reading: its
// metadata (from "") or the chunk from. Right after a listing this is a
// copier (cp, tar, rsync read .zarray before the chunks): the chunks from
// there on are fetched ahead at once.
func (d *datasource) noteOpened(arrayPath, from string) {
	d.mu.Lock()
	st := d.array(arrayPath)
	now := d.opt.now()
	copying := !st.listedAt.IsZero() && now.Sub(st.listedAt) < copierWindow && !st.openedAt.After(st.listedAt)
	st.openedAt = now
	h := d.cur.h
	d.mu.Unlock()
	if !copying || d.opt.Readahead <= 0 || h == nil {
		return
	}
	if f, ok := h.Folder(arrayPath); ok && f.Array != nil {
		keys := f.Array.ChunkKeysAfter(from, d.readaheadCount(""))
		if from != "" {
			keys = append([]string{from}, keys...)
		}
		d.prefetch(f.Array, keys)
	}
}

// readaheadCount is how many chunks to fetch ahead: --readahead, but no more
// than a quarter of the cache holds, judging by the size of key (when known)
// so that readahead never pushes out what is being read.
func (d *datasource) readaheadCount(key string) int {
	n := d.opt.Readahead
	if key == "" {
		return n
	}
	if size, st := d.opt.Cache.Stat(d.cacheKey(key)); st != cache.StatUnknown && st != cache.StatMissing && size > 0 {
		n = int(min(int64(n), max(d.opt.cacheBytes/4/size, 1)))
	}
	return n
}

// prefetch starts background fetches of chunk keys (relative to arr).
func (d *datasource) prefetch(arr *zarr.Array, rels []string) {
	for _, k := range rels {
		full := joinKey(arr.Path, k)
		d.opt.Cache.Prefetch(d.cacheKey(full), d.fetcher(full))
	}
}

// listing reports whether lookups in the array now come from a lister: its
// chunks were listed recently and none has been opened since.
func (d *datasource) listerActive(arrayPath string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.array(arrayPath)
	now := d.opt.now()
	active := !st.listedAt.IsZero() && now.Sub(st.listedAt) < listerWindow && !st.openedAt.After(st.listedAt)
	if active {
		// A lister still at work keeps the window open, however long
		// the folder.
		st.listedAt = now
	}
	return active
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

func (d *datasource) fetcher(key string) cache.FetchFunc {
	return func(ctx context.Context) ([]byte, error) {
		start := d.opt.now()
		b, err := d.store.Get(ctx, key)
		d.opt.Logger.Debug("fetch", "datasource", d.id, "key", key, "size", len(b),
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
	lister := !d.noHead.Load() && d.listerActive(arr.Path)
	if lister && state == cache.StatPresent {
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
	if lister {
		d.headAhead(arr, rel)
		n, err = d.opt.Cache.SizeOrHead(ctx, ck, d.header(key))
		if errors.Is(err, zarr.ErrSizeUnknown) {
			// The gateway's HEAD says nothing: the size costs the body,
			// from now on without asking HEAD first.
			d.noHead.Store(true)
			lister = false
		}
	}
	if !lister {
		fresh, err = d.opt.Cache.GetOrFetch(ctx, ck, d.fetcher(key))
		n = int64(len(fresh))
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

func (d *datasource) header(key string) func(context.Context) (int64, error) {
	return func(ctx context.Context) (int64, error) { return d.store.Head(ctx, key) }
}

// headAhead sends the HEADs of the chunks that follow rel in the background,
// so that a lister, which stats one file at a time, finds their sizes known.
// At most headAheadWorkers run per mount; more are dropped (a hint).
func (d *datasource) headAhead(arr *zarr.Array, rel string) {
	for _, k := range arr.ChunkKeysAfter(rel, max(d.opt.Readahead, 1)) {
		key := joinKey(arr.Path, k)
		ck := d.cacheKey(key)
		if _, st := d.opt.Cache.Stat(ck); st != cache.StatUnknown {
			continue
		}
		select {
		case d.opt.heads <- struct{}{}:
		default:
			return
		}
		go func() {
			defer func() { <-d.opt.heads }()
			ctx, cancel := context.WithTimeout(context.Background(), headAheadTimeout)
			defer cancel()
			d.opt.Cache.SizeOrHead(ctx, ck, d.header(key))
		}()
	}
}

// readChunk returns a chunk's bytes for an open file, and starts readahead
// when the array is being read in key order.
func (d *datasource) readChunk(ctx context.Context, arr *zarr.Array, rel string) ([]byte, error) {
	key := joinKey(arr.Path, rel)
	d.mu.Lock()
	st := d.array(arr.Path)
	prev := st.lastRead
	st.lastRead, st.openedAt = rel, d.opt.now()
	d.mu.Unlock()
	if d.opt.Readahead > 0 && prev != "" && prev != rel && slices.Contains(arr.ChunkKeysAfter(prev, sequentialSlack), rel) {
		d.prefetch(arr, arr.ChunkKeysAfter(rel, d.readaheadCount(key)))
	}
	return d.opt.Cache.GetOrFetch(ctx, d.cacheKey(key), d.fetcher(key))
}
