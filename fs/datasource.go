package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"slices"
	"sync"
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
type datasource struct {
	id    string
	store zarr.Store
	opt   *Options
	load  singleflight.Group

	mu       sync.Mutex
	h        *zarr.Hierarchy
	rootSig  []byte // the root metadata files, to notice a changed store
	loadedAt time.Time
	arrays   map[string]*arrayState
}

// arrayState tells readers from listers, and sequential readers from others.
type arrayState struct {
	listedAt time.Time // last readdir of the array's chunks
	openedAt time.Time // last open of one of its chunks
	lastRead string    // key (relative to the array) of the last chunk opened
}

func newDatasource(id string, store zarr.Store, opt *Options) *datasource {
	return &datasource{id: id, store: store, opt: opt, arrays: map[string]*arrayState{}}
}

// hierarchy returns the store's tree, loading it on first use and again after
// the metadata TTL. A failed reload keeps serving the tree already known.
func (d *datasource) hierarchy(ctx context.Context) (*zarr.Hierarchy, error) {
	d.mu.Lock()
	h, fresh := d.h, d.h != nil && d.opt.now().Sub(d.loadedAt) < d.opt.MetadataTTL
	d.mu.Unlock()
	if fresh {
		return h, nil
	}
	nh, err := shared(ctx, &d.load, func(lctx context.Context) (*zarr.Hierarchy, error) {
		start := d.opt.now()
		nh, err := zarr.Open(lctx, d.id, d.store)
		if err != nil {
			return nil, err
		}
		d.install(nh)
		d.opt.Logger.Debug("metadata loaded", "datasource", d.id, "duration", d.opt.now().Sub(start))
		return nh, nil
	})
	switch {
	case err == nil:
		return nh, nil
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case h != nil && !errors.Is(err, iofs.ErrNotExist):
		d.opt.Logger.Warn("metadata refresh failed; serving the tree already loaded",
			"datasource", d.id, "err", err)
		d.mu.Lock()
		d.loadedAt = d.opt.now() // try again after another TTL
		d.mu.Unlock()
		return h, nil
	default:
		return nil, fmt.Errorf("datasource %s: %w", d.id, err)
	}
}

// install swaps in a freshly loaded tree; when the store's metadata changed,
// cached chunks of the old one are dropped.
func (d *datasource) install(h *zarr.Hierarchy) {
	var sig []byte
	if root, ok := h.Folder(""); ok {
		for _, f := range root.Files {
			sig = append(sig, f.Name...)
			sig = append(sig, 0)
			sig = append(sig, f.Data...)
		}
	}
	d.mu.Lock()
	changed := d.h != nil && !bytes.Equal(sig, d.rootSig)
	d.h, d.rootSig, d.loadedAt = h, sig, d.opt.now()
	d.mu.Unlock()
	if changed {
		d.opt.Logger.Info("datasource metadata changed; dropping its cached chunks", "datasource", d.id)
		d.opt.Cache.Invalidate(d.id + "/")
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
	h := d.h
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

// cacheKey names a chunk in the shared cache.
func (d *datasource) cacheKey(key string) string { return d.id + "/" + key }

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
func (d *datasource) chunkSize(ctx context.Context, arr *zarr.Array, rel string) (int64, error) {
	key := joinKey(arr.Path, rel)
	ck := d.cacheKey(key)
	switch size, state := d.opt.Cache.Stat(ck); state {
	case cache.StatPresent, cache.StatSized:
		return size, nil
	case cache.StatMissing:
		return 0, fmt.Errorf("chunk %s/%s: %w", d.id, key, iofs.ErrNotExist)
	}
	if d.listerActive(arr.Path) {
		d.headAhead(arr, rel)
		return d.opt.Cache.SizeOrHead(ctx, ck, d.header(key))
	}
	b, err := d.opt.Cache.GetOrFetch(ctx, ck, d.fetcher(key))
	return int64(len(b)), err
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
