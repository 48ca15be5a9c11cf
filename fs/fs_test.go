package fs

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/cache"
	"github.com/oceanum-dmfs/dmfs/zarr"
)

// memStore is an in-memory Zarr store that counts requests.
type memStore struct {
	mu    sync.Mutex
	keys  map[string][]byte
	gets  map[string]int
	heads map[string]int
	err   error // returned for every chunk request when set
	// headless makes HEAD answer without a size (no Content-Length).
	headless bool
}

func newMemStore(keys map[string]string) *memStore {
	s := &memStore{keys: map[string][]byte{}, gets: map[string]int{}, heads: map[string]int{}}
	for k, v := range keys {
		s.keys[k] = []byte(v)
	}
	return s
}

func (s *memStore) Get(ctx context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gets[key]++
	if s.err != nil && !strings.HasPrefix(key, ".z") {
		return nil, s.err
	}
	b, ok := s.keys[key]
	if !ok {
		return nil, fmt.Errorf("key %s: %w", key, iofs.ErrNotExist)
	}
	return b, nil
}

func (s *memStore) Head(ctx context.Context, key string) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.heads[key]++
	if s.err != nil {
		return 0, s.err
	}
	if s.headless {
		return 0, fmt.Errorf("key %s: %w", key, zarr.ErrSizeUnknown)
	}
	b, ok := s.keys[key]
	if !ok {
		return 0, fmt.Errorf("key %s: %w", key, iofs.ErrNotExist)
	}
	return int64(len(b)), nil
}

func (s *memStore) getCount(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gets[key]
}

func (s *memStore) counts() (gets, heads int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.gets {
		gets += n
	}
	for _, n := range s.heads {
		heads += n
	}
	return gets, heads
}

// memCatalog serves memStores.
type memCatalog struct {
	listed   []string
	hidden   []string // reachable by id, not listed
	stores   map[string]zarr.Store
	lookups  int
	err      error     // returned by every catalog call when set (an outage)
	modified time.Time // every datasource's modified time

	// Queries and tables (query_test.go), guarded by qmu.
	qmu      sync.Mutex
	infos    map[string]*Info      // Entry.Info by id
	staged   map[string]Staged     // by the query's JSON
	stageErr map[string]error      // by the query's JSON
	stages   []string              // every query staged, in order
	queries  map[string]zarr.Store // by qhash
	tables   map[string][]byte     // by id, or "id?qhash"
	opens    int                   // OpenTable calls
	bodies   int                   // OpenTable calls that sent the table
	// tableTags is each table's Validator, by the key of tables ("": none).
	tableTags map[string]string
}

func (c *memCatalog) Datasources(ctx context.Context) ([]Entry, error) {
	if c.err != nil {
		return nil, c.err
	}
	var out []Entry
	for _, id := range c.listed {
		out = append(out, Entry{ID: id, Modified: c.modified, Info: c.infos[id]})
	}
	return out, nil
}

func (c *memCatalog) Datasource(ctx context.Context, id string) (Entry, error) {
	c.lookups++
	if c.err != nil {
		return Entry{}, c.err
	}
	for _, h := range append(append([]string{}, c.listed...), c.hidden...) {
		if h == id {
			return Entry{ID: id, Modified: c.modified, Info: c.infos[id]}, nil
		}
	}
	return Entry{}, fmt.Errorf("datasource %s: %w", id, iofs.ErrNotExist)
}

func (c *memCatalog) Store(id string) zarr.Store { return c.stores[id] }

// A small consolidated v2 store: a 4x9 int8 array in 2x3 chunks (a 2x3 grid) with
// "." keys (one chunk absent), and a 1-d array with "/" keys.
const zmetadata = `{
 "metadata": {
  ".zgroup": {"zarr_format": 2},
  ".zattrs": {"title": "test"},
  "grid/.zarray": {"chunks": [2, 3], "compressor": null, "dtype": "<i1", "fill_value": 0, "filters": null, "order": "C", "shape": [4, 9], "zarr_format": 2},
  "grid/.zattrs": {"_ARRAY_DIMENSIONS": ["y", "x"]},
  "line/.zarray": {"chunks": [2], "compressor": null, "dtype": "<i1", "fill_value": 0, "filters": null, "order": "C", "shape": [6], "zarr_format": 2, "dimension_separator": "/"},
  "line/.zattrs": {"_ARRAY_DIMENSIONS": ["z"]}
 },
 "zarr_consolidated_format": 1
}`

func testStore() *memStore {
	return newMemStore(map[string]string{
		".zmetadata": zmetadata,
		"grid/0.0":   "aaaaaa", "grid/0.1": "bbbbbb", "grid/1.0": "cccccc", // grid/1.1 absent
		"line/0": "xx", "line/1": "yy", "line/2": "zz",
	})
}

type fixture struct {
	root  *Root
	cat   *memCatalog
	store *memStore
	cache *cache.Cache
	mu    sync.Mutex // guards now: background fetches read the clock
	now   time.Time
}

func (f *fixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fixture) advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{store: testStore(), now: time.Unix(1_700_000_000, 0)}
	f.cat = &memCatalog{listed: []string{"alpha", "beta_1"}, hidden: []string{"private-x"},
		stores: map[string]zarr.Store{"alpha": f.store, "beta_1": testStore(), "private-x": testStore()}}
	f.cache = cache.New(cache.Options{MaxBytes: 1 << 20, Now: f.clock})
	t.Cleanup(f.cache.Close)
	f.root = NewRoot(Options{Catalog: f.cat, Cache: f.cache, Readahead: 2, MetadataTTL: time.Minute,
		now: f.clock})
	gofs.NewNodeFS(f.root, &gofs.Options{}) // attaches the root inode, no mount
	return f
}

func names(t *testing.T, s gofs.DirStream) []string {
	t.Helper()
	var out []string
	for s.HasNext() {
		e, errno := s.Next()
		require.Zero(t, errno)
		if e.Name != "." && e.Name != ".." { // as ls shows them
			out = append(out, e.Name)
		}
	}
	return out
}

// listEntries lists a directory as ls does (lookup, then readdir).
func (f *fixture) listEntries(t *testing.T, path string) []fuse.DirEntry {
	t.Helper()
	dir, _, errno := f.lookup(t, f.root, path)
	require.Zero(t, errno, path)
	s, errno := dir.Operations().(*dirNode).Readdir(context.Background())
	require.Zero(t, errno, path)
	var out []fuse.DirEntry
	for s.HasNext() {
		e, errno := s.Next()
		require.Zero(t, errno)
		if e.Name != "." && e.Name != ".." { // as ls shows them
			out = append(out, e)
		}
	}
	return out
}

// list returns the names listEntries gives.
func (f *fixture) list(t *testing.T, path string) []string {
	t.Helper()
	var out []string
	for _, e := range f.listEntries(t, path) {
		out = append(out, e.Name)
	}
	return out
}

func (f *fixture) lookup(t *testing.T, dir gofs.InodeEmbedder, path string) (*gofs.Inode, fuse.EntryOut, syscall.Errno) {
	t.Helper()
	var out fuse.EntryOut
	var node *gofs.Inode
	cur := dir
	for _, name := range strings.Split(path, "/") {
		var errno syscall.Errno
		out = fuse.EntryOut{}
		node, errno = cur.(gofs.NodeLookuper).Lookup(context.Background(), name, &out)
		if errno != 0 {
			return nil, out, errno
		}
		cur = node.Operations()
	}
	return node, out, 0
}

func TestRootListsCatalogAndLooksUpHiddenIDs(t *testing.T) {
	f := newFixture(t)
	s, errno := f.root.Readdir(context.Background())
	require.Zero(t, errno)
	assert.Equal(t, []string{"alpha", "beta_1"}, names(t, s))

	_, _, errno = f.lookup(t, f.root, "alpha")
	require.Zero(t, errno)
	assert.Equal(t, 0, f.cat.lookups, "a listed id needs no request")

	_, _, errno = f.lookup(t, f.root, "private-x")
	require.Zero(t, errno)
	assert.Equal(t, 1, f.cat.lookups)

	for _, bad := range []string{"nope", "..", "UPPER", "a", ".zgroup"} {
		_, _, errno = f.lookup(t, f.root, bad)
		assert.Equal(t, syscall.ENOENT, errno, bad)
	}
	assert.Equal(t, 5, f.cat.lookups, "every id that can be a file name is asked for, except ..; a miss is remembered")
	_, _, errno = f.lookup(t, f.root, "nope")
	assert.Equal(t, syscall.ENOENT, errno)
	assert.Equal(t, 5, f.cat.lookups)
}

func TestEveryIDThatIsAFileNameIsMounted(t *testing.T) {
	f := newFixture(t)
	f.cat.listed = []string{"alpha", "era5.wind_v1.2", "UPPER", "a b", "../x", "", strings.Repeat("x", 256)}
	for _, id := range []string{"era5.wind_v1.2", "UPPER", "a b"} {
		f.cat.stores[id] = testStore()
	}
	s, errno := f.root.Readdir(context.Background())
	require.Zero(t, errno)
	assert.Equal(t, []string{"UPPER", "a b", "alpha", "era5.wind_v1.2"}, names(t, s))
	node, _, errno := f.lookup(t, f.root, "era5.wind_v1.2/grid/0.0")
	require.Zero(t, errno)
	assert.Equal(t, "aaaaaa", readAll(t, node))
}

func TestListingsHaveDotEntriesAndFsyncSucceeds(t *testing.T) {
	f := newFixture(t)
	dir, _, errno := f.lookup(t, f.root, "alpha/grid")
	require.Zero(t, errno)
	s, errno := dir.Operations().(*dirNode).Readdir(context.Background())
	require.Zero(t, errno)
	var got []fuse.DirEntry
	for s.HasNext() {
		e, _ := s.Next()
		got = append(got, e)
	}
	require.GreaterOrEqual(t, len(got), 2)
	assert.Equal(t, ".", got[0].Name)
	assert.Equal(t, dir.StableAttr().Ino, got[0].Ino)
	assert.Equal(t, "..", got[1].Name) // its inode: the parent's once mounted

	chunk, _, errno := f.lookup(t, f.root, "alpha/grid/0.0")
	require.Zero(t, errno)
	assert.Zero(t, chunk.Operations().(gofs.NodeFsyncer).Fsync(context.Background(), nil, 0))
	meta, _, errno := f.lookup(t, f.root, "alpha/.zgroup")
	require.Zero(t, errno)
	assert.Zero(t, meta.Operations().(gofs.NodeFsyncer).Fsync(context.Background(), nil, 0))
}

func TestFilesCarryTheCatalogsModifiedTime(t *testing.T) {
	f := newFixture(t)
	f.cat.modified = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	_, errno := f.root.Readdir(context.Background())
	require.Zero(t, errno)
	_, out, errno := f.lookup(t, f.root, "alpha/grid/0.0")
	require.Zero(t, errno)
	assert.Equal(t, uint64(f.cat.modified.Unix()), out.Attr.Mtime)
	_, out, errno = f.lookup(t, f.root, "alpha/.zmetadata")
	require.Zero(t, errno)
	assert.Equal(t, uint64(f.cat.modified.Unix()), out.Attr.Mtime)
}

func TestSparseArrayListsOnlyChunksThatExist(t *testing.T) {
	t.Run("from the gateway's listing", func(t *testing.T) {
		f := newFixture(t)
		f.cat.stores["alpha"] = &listingStore{f.store}
		assert.Equal(t, []string{".zarray", ".zattrs", "0.0", "0.1", "1.0"}, f.list(t, "alpha/grid"),
			"grid/0.2, 1.1, 1.2 do not exist")
		gets, heads := f.store.counts()
		_, _, errno := f.lookup(t, f.root, "alpha/grid/1.1")
		assert.Equal(t, syscall.ENOENT, errno)
		g2, h2 := f.store.counts()
		assert.Equal(t, gets+heads, g2+h2, "a name the listing does not hold costs no request")
		// Nested "/" keys: every level listed.
		assert.Equal(t, []string{".zarray", ".zattrs", "0", "1", "2"}, f.list(t, "alpha/line"))
	})
	t.Run("computed, less what is known missing", func(t *testing.T) {
		f := newFixture(t)
		_, _, errno := f.lookup(t, f.root, "alpha/grid/1.1")
		require.Equal(t, syscall.ENOENT, errno)
		assert.NotContains(t, f.list(t, "alpha/grid"), "1.1")
	})
}

func TestListingCostsOneMetadataRequest(t *testing.T) {
	f := newFixture(t)
	assert.Equal(t, []string{infoName, ".zattrs", ".zgroup", ".zmetadata", "grid", "line"}, f.list(t, "alpha"))
	assert.Equal(t, []string{".zarray", ".zattrs", "0.0", "0.1", "0.2", "1.0", "1.1", "1.2"}, f.list(t, "alpha/grid"))
	assert.Equal(t, []string{".zarray", ".zattrs", "0", "1", "2"}, f.list(t, "alpha/line"))

	gets, heads := f.store.counts()
	assert.Equal(t, 1, gets, "only .zmetadata")
	assert.Equal(t, 0, heads)
	assert.Equal(t, 1, f.store.getCount(".zmetadata"))
}

func TestMetadataFilesHaveExactSizes(t *testing.T) {
	f := newFixture(t)
	node, out, errno := f.lookup(t, f.root, "alpha/.zmetadata")
	require.Zero(t, errno)
	assert.Equal(t, uint64(len(zmetadata)), out.Attr.Size)
	mf := node.Operations().(*metaFile)
	_, _, errno = mf.Open(context.Background(), syscall.O_RDONLY)
	assert.Equal(t, syscall.ENOSYS, errno, "no OPEN: the kernel opens files itself, keeping their pages")
	res, errno := mf.Read(context.Background(), nil, make([]byte, 1<<16), 0)
	require.Zero(t, errno)
	b, _ := res.Bytes(nil)
	assert.Equal(t, zmetadata, string(b), ".zmetadata is served byte-exact")

	_, out, errno = f.lookup(t, f.root, "alpha/grid/.zarray")
	require.Zero(t, errno)
	assert.NotZero(t, out.Attr.Size)
	assert.Equal(t, uint32(fuse.S_IFREG|0o444), out.Attr.Mode)
}

func TestReaderPaysOneGetPerChunk(t *testing.T) {
	f := newFixture(t)
	node, out, errno := f.lookup(t, f.root, "alpha/grid/0.1")
	require.Zero(t, errno)
	assert.Equal(t, uint64(6), out.Attr.Size)
	cf := node.Operations().(*chunkFile)
	res, errno := cf.Read(context.Background(), nil, make([]byte, 4), 2)
	require.Zero(t, errno)
	b, _ := res.Bytes(nil)
	assert.Equal(t, "bbbb", string(b))
	res, errno = cf.Read(context.Background(), nil, make([]byte, 4), 100)
	require.Zero(t, errno)
	assert.Zero(t, res.Size(), "reading past the end is empty, not an error")

	assert.Equal(t, 1, f.store.getCount("grid/0.1"), "lookup GETs, reads reuse")
	assert.Equal(t, 0, f.store.heads["grid/0.1"])

	// A second lookup and open cost nothing.
	_, _, errno = f.lookup(t, f.root, "alpha/grid/0.1")
	require.Zero(t, errno)
	assert.Equal(t, 1, f.store.getCount("grid/0.1"))
}

func TestMissingChunkIsENOENTAtLookupOnce(t *testing.T) {
	f := newFixture(t)
	_, _, errno := f.lookup(t, f.root, "alpha/grid/1.1")
	assert.Equal(t, syscall.ENOENT, errno)
	_, _, errno = f.lookup(t, f.root, "alpha/grid/1.1")
	assert.Equal(t, syscall.ENOENT, errno)
	assert.Equal(t, 1, f.store.getCount("grid/1.1"), "known missing costs nothing")
	// Names outside the grid never reach the store.
	for _, name := range []string{"2.0", "0.3", "0", "0.0.0", "..", "-1.0"} {
		_, _, errno = f.lookup(t, f.root, "alpha/grid/"+name)
		assert.Equal(t, syscall.ENOENT, errno, name)
	}
	gets, heads := f.store.counts()
	assert.Equal(t, 2, gets) // .zmetadata + grid/1.1
	assert.Equal(t, 0, heads)
}

func TestListerPaysAtMostOneHeadAndNoBody(t *testing.T) {
	f := newFixture(t)
	want := map[string]int64{"0.0": 6, "0.1": 6, "0.2": -1, "1.0": 6, "1.1": -1, "1.2": -1}
	for _, name := range f.list(t, "alpha/grid") {
		size, chunk := want[name]
		if !chunk {
			continue
		}
		for range 2 { // ls -l then du: the second costs nothing
			_, out, errno := f.lookup(t, f.root, "alpha/grid/"+name)
			if size < 0 {
				assert.Equal(t, syscall.ENOENT, errno, name)
			} else {
				require.Zero(t, errno, name)
				assert.Equal(t, uint64(size), out.Attr.Size, name)
			}
		}
	}
	gets, heads := f.store.counts()
	assert.Equal(t, 1, gets, "no chunk body, only .zmetadata")
	assert.Equal(t, 6, heads, "one HEAD per chunk")

	// Reading a chunk whose size a HEAD gave costs its one GET.
	node, _, _ := f.lookup(t, f.root, "alpha/grid/0.0")
	assert.Equal(t, "aaaaaa", readAll(t, node))
	assert.Equal(t, 1, f.store.getCount("grid/0.0"))
}

func TestNestedChunkKeysAreDirectories(t *testing.T) {
	f := newFixture(t)
	for _, name := range []string{"0", "1", "2"} {
		_, out, errno := f.lookup(t, f.root, "alpha/line/"+name)
		require.Zero(t, errno, name)
		assert.Equal(t, uint64(2), out.Attr.Size)
	}
	_, _, errno := f.lookup(t, f.root, "alpha/line/3")
	assert.Equal(t, syscall.ENOENT, errno)
}

func TestSequentialReadsTriggerReadahead(t *testing.T) {
	f := newFixture(t)
	open := func(name string) {
		node, _, errno := f.lookup(t, f.root, "alpha/grid/"+name)
		require.Zero(t, errno, name)
		readAll(t, node)
	}
	open("0.0")
	open("0.1") // sequential: prefetch 0.2 (absent) and 1.0
	require.Eventually(t, func() bool {
		_, st := f.cache.Stat("alpha/grid/1.0")
		return st == cache.StatPresent
	}, 5*time.Second, 5*time.Millisecond)
	open("1.0")
	assert.Equal(t, 1, f.store.getCount("grid/1.0"), "the prefetched chunk answers lookup and open")
	assert.Equal(t, 1, f.store.getCount("grid/0.2"))
}

func TestErrorsMapToErrno(t *testing.T) {
	cases := []struct {
		err  error
		want syscall.Errno
	}{
		{fmt.Errorf("x: %w", iofs.ErrNotExist), syscall.ENOENT},
		{fmt.Errorf("x: %w", iofs.ErrPermission), syscall.EACCES},
		// Cancelled, but not by this caller (the mount ending): not EINTR.
		{context.Canceled, syscall.EIO},
		{context.DeadlineExceeded, syscall.EIO},
		{errors.New("503 after retries"), syscall.EIO},
	}
	for _, c := range cases {
		f := newFixture(t)
		f.store.err = c.err
		_, _, errno := f.lookup(t, f.root, "alpha/grid/0.0")
		assert.Equal(t, c.want, errno, "%v", c.err)
	}
}

func TestMalformedMetadataIsEIO(t *testing.T) {
	f := newFixture(t)
	f.store.keys[".zmetadata"] = []byte(`{"metadata": {"../x/.zarray": {"shape": [-1]}}`)
	ds, _, errno := f.lookup(t, f.root, "alpha")
	require.Zero(t, errno)
	_, errno = ds.Operations().(*dirNode).Readdir(context.Background())
	assert.Equal(t, syscall.EIO, errno)
}

func TestEveryWriteIsEROFS(t *testing.T) {
	f := newFixture(t)
	ds, _, _ := f.lookup(t, f.root, "alpha")
	chunk, _, _ := f.lookup(t, f.root, "alpha/grid/0.0")
	meta, _, _ := f.lookup(t, f.root, "alpha/.zgroup")
	ctx := context.Background()
	for _, n := range []gofs.InodeEmbedder{f.root, ds.Operations(), chunk.Operations(), meta.Operations()} {
		_, _, _, errno := n.(gofs.NodeCreater).Create(ctx, "new", 0, 0o644, &fuse.EntryOut{})
		assert.Equal(t, syscall.EROFS, errno)
		_, errno = n.(gofs.NodeMkdirer).Mkdir(ctx, "d", 0o755, &fuse.EntryOut{})
		assert.Equal(t, syscall.EROFS, errno)
		assert.Equal(t, syscall.EROFS, n.(gofs.NodeUnlinker).Unlink(ctx, "x"))
		assert.Equal(t, syscall.EROFS, n.(gofs.NodeRmdirer).Rmdir(ctx, "x"))
		assert.Equal(t, syscall.EROFS, n.(gofs.NodeRenamer).Rename(ctx, "a", n, "b", 0))
		assert.Equal(t, syscall.EROFS, n.(gofs.NodeSetattrer).Setattr(ctx, nil, &fuse.SetAttrIn{}, &fuse.AttrOut{}))
		assert.Equal(t, syscall.EROFS, n.(gofs.NodeSetxattrer).Setxattr(ctx, "user.x", nil, 0))
		assert.Equal(t, syscall.EROFS, n.(gofs.NodeRemovexattrer).Removexattr(ctx, "user.x"))
		_, errno = n.(gofs.NodeWriter).Write(ctx, nil, []byte("x"), 0)
		assert.Equal(t, syscall.EROFS, errno)
		// Nothing to flush: ENOSYS makes the kernel stop sending FLUSH.
		assert.Equal(t, syscall.ENOSYS, n.(gofs.NodeFlusher).Flush(ctx, nil))
	}
	for _, n := range []gofs.NodeOpener{chunk.Operations().(gofs.NodeOpener), meta.Operations().(gofs.NodeOpener)} {
		for _, fl := range []uint32{syscall.O_WRONLY, syscall.O_RDWR, syscall.O_RDONLY | syscall.O_TRUNC} {
			_, _, errno := n.Open(ctx, fl)
			assert.Equal(t, syscall.EROFS, errno)
		}
	}
}

func TestStableInodeNumbers(t *testing.T) {
	f := newFixture(t)
	_, a, _ := f.lookup(t, f.root, "alpha/grid/0.0")
	_, b, _ := f.lookup(t, f.root, "alpha/grid/0.0")
	_, c, _ := f.lookup(t, f.root, "beta_1/grid/0.0")
	assert.Equal(t, a.Attr.Ino, b.Attr.Ino)
	assert.NotEqual(t, a.Attr.Ino, c.Attr.Ino)
	inos := map[uint64]string{}
	for _, p := range []string{"alpha", "alpha/grid", "alpha/line", "alpha/.zgroup", "alpha/grid/.zarray", "alpha/line/0"} {
		_, out, errno := f.lookup(t, f.root, p)
		require.Zero(t, errno, p)
		require.NotContains(t, inos, out.Attr.Ino, p)
		inos[out.Attr.Ino] = p
	}
}

func TestCopyOpensArrayMetadataThenGetsChunksWithoutHead(t *testing.T) {
	f := newFixture(t)
	entries := f.listEntries(t, "alpha/grid")
	// Inode numbers follow listing order: cp sorts by them before reading.
	for i := 1; i < len(entries); i++ {
		assert.Less(t, entries[i-1].Ino, entries[i].Ino)
	}
	f.advance(time.Millisecond)
	meta, _, errno := f.lookup(t, f.root, "alpha/grid/.zarray")
	require.Zero(t, errno)
	_, errno = meta.Operations().(*metaFile).Read(context.Background(), nil, make([]byte, 4096), 0)
	require.Zero(t, errno)
	_, out, errno := f.lookup(t, f.root, "alpha/grid/0.0")
	require.Zero(t, errno)
	assert.Equal(t, entries[2].Ino, out.Attr.Ino, "lookup and readdir agree on the inode")
	assert.Equal(t, 1, f.store.getCount("grid/0.0"))
	_, heads := f.store.counts()
	assert.Zero(t, heads, "a copier pays no HEAD")
	// Reading .zarray right after the listing started readahead of the
	// first chunks.
	require.Eventually(t, func() bool {
		_, st := f.cache.Stat("alpha/grid/0.1")
		return st == cache.StatPresent
	}, 5*time.Second, 5*time.Millisecond)
}

func TestOpenFetchesNothingUntilRead(t *testing.T) {
	f := newFixture(t)
	f.list(t, "alpha/grid")
	node, _, errno := f.lookup(t, f.root, "alpha/grid/0.1") // lister: HEAD
	require.Zero(t, errno)
	f.advance(time.Minute) // too late to look like a copier
	cf := node.Operations().(*chunkFile)
	_, _, errno = cf.Open(context.Background(), syscall.O_RDONLY)
	require.Equal(t, syscall.ENOSYS, errno)
	assert.Zero(t, f.store.getCount("grid/0.1"), "the kernel may hold the pages: no fetch at open")
	for _, off := range []int64{0, 3} {
		res, errno := cf.Read(context.Background(), nil, make([]byte, 2), off)
		require.Zero(t, errno)
		b, _ := res.Bytes(nil)
		assert.Equal(t, "bb", string(b))
	}
	assert.Equal(t, 1, f.store.getCount("grid/0.1"))
}

func TestChunkThatChangedSizeIsEIONotWrongBytes(t *testing.T) {
	f := newFixture(t)
	f.list(t, "alpha/grid")
	node, out, errno := f.lookup(t, f.root, "alpha/grid/1.0") // HEAD: 6 bytes
	require.Zero(t, errno)
	require.Equal(t, uint64(6), out.Attr.Size)
	f.store.mu.Lock()
	f.store.keys["grid/1.0"] = []byte("longer now")
	f.store.mu.Unlock()
	f.advance(time.Minute)
	cf := node.Operations().(*chunkFile)
	_, errno = cf.Read(context.Background(), nil, make([]byte, 64), 0)
	assert.Equal(t, syscall.EIO, errno, "the old file must not be cut or padded")

	// The next lookup is a new file of the new size, read whole.
	node2, out2, errno := f.lookup(t, f.root, "alpha/grid/1.0")
	require.Zero(t, errno)
	assert.Equal(t, uint64(10), out2.Attr.Size)
	assert.NotEqual(t, out.Attr.Ino, out2.Attr.Ino)
	assert.Greater(t, out2.Attr.Mtime, out.Attr.Mtime)
	res, errno := node2.Operations().(*chunkFile).Read(context.Background(), nil, make([]byte, 64), 0)
	require.Zero(t, errno)
	b, _ := res.Bytes(nil)
	assert.Equal(t, "longer now", string(b))
}

func TestListerLookupSendsHeadsAhead(t *testing.T) {
	f := newFixture(t)
	f.list(t, "alpha/grid")
	_, _, errno := f.lookup(t, f.root, "alpha/grid/0.0")
	require.Zero(t, errno)
	// Readahead is 2: the sizes of 0.1 and 0.2 (absent) come in the background.
	require.Eventually(t, func() bool {
		_, a := f.cache.Stat("alpha/grid/0.1")
		_, b := f.cache.Stat("alpha/grid/0.2")
		return a == cache.StatSized && b == cache.StatMissing
	}, 5*time.Second, 5*time.Millisecond)
	_, out, errno := f.lookup(t, f.root, "alpha/grid/0.1")
	require.Zero(t, errno)
	assert.Equal(t, uint64(6), out.Attr.Size)
	gets, heads := f.store.counts()
	assert.Equal(t, 1, gets, "no chunk body")
	assert.LessOrEqual(t, heads, 4, "one HEAD per chunk at most")
}

func TestCatalogAndMetadataAreRefreshedAfterTTL(t *testing.T) {
	f := newFixture(t)
	s, _ := f.root.Readdir(context.Background())
	assert.Equal(t, []string{"alpha", "beta_1"}, names(t, s))
	f.cat.listed = []string{"alpha", "beta_1", "gamma"}
	s, _ = f.root.Readdir(context.Background())
	assert.Equal(t, []string{"alpha", "beta_1"}, names(t, s), "within the TTL the listing is kept")
	f.advance(2 * time.Minute)
	s, _ = f.root.Readdir(context.Background())
	assert.Equal(t, []string{"alpha", "beta_1", "gamma"}, names(t, s))

	// A store whose metadata changed drops its cached chunks; an unchanged
	// one keeps them.
	_, _, errno := f.lookup(t, f.root, "alpha/grid/0.0")
	require.Zero(t, errno)
	_, st := f.cache.Stat("alpha/grid/0.0")
	require.Equal(t, cache.StatPresent, st)
	f.advance(2 * time.Minute)
	_, _, errno = f.lookup(t, f.root, "alpha/grid/0.1")
	require.Zero(t, errno)
	assert.Equal(t, 2, f.store.getCount(".zmetadata"), "metadata fetched again after the TTL")
	_, st = f.cache.Stat("alpha/grid/0.0")
	assert.Equal(t, cache.StatPresent, st, "unchanged metadata keeps the cache")

	f.store.mu.Lock()
	f.store.keys[".zmetadata"] = []byte(strings.Replace(zmetadata, `"title": "test"`, `"title": "v2"`, 1))
	f.store.mu.Unlock()
	f.advance(2 * time.Minute)
	_, _, errno = f.lookup(t, f.root, "alpha/grid/0.1")
	require.Zero(t, errno)
	_, st = f.cache.Stat("alpha/grid/0.0")
	assert.Equal(t, cache.StatUnknown, st, "changed metadata drops the datasource's chunks")
}

func TestFailedMetadataRefreshKeepsServing(t *testing.T) {
	f := newFixture(t)
	_, _, errno := f.lookup(t, f.root, "alpha/grid/0.0")
	require.Zero(t, errno)
	f.store.mu.Lock()
	f.store.keys[".zmetadata"] = []byte(`{"truncated`)
	f.store.mu.Unlock()
	f.advance(2 * time.Minute)
	_, out, errno := f.lookup(t, f.root, "alpha/grid/0.1")
	require.Zero(t, errno, "the tree already known is still served")
	assert.Equal(t, uint64(6), out.Attr.Size)
}

func TestChunkLargerThanTheCacheIsFetchedOnceForAllItsReads(t *testing.T) {
	// Files have no open handle to pin their bytes (see openFile): a shard
	// bigger than the whole cache, read by the kernel in pieces, must still
	// cost one GET, not one per piece.
	f := newFixture(t)
	big := strings.Repeat("s", 3<<20/2) // 1.5 MiB, cache 1 MiB
	f.store.mu.Lock()
	f.store.keys["grid/1.0"] = []byte(big)
	f.store.mu.Unlock()
	node, out, errno := f.lookup(t, f.root, "alpha/grid/1.0")
	require.Zero(t, errno)
	require.Equal(t, uint64(len(big)), out.Attr.Size)
	cf := node.Operations().(*chunkFile)
	var got []byte
	for off := int64(0); off < int64(len(big)); off += 256 << 10 {
		res, errno := cf.Read(context.Background(), nil, make([]byte, 256<<10), off)
		require.Zero(t, errno)
		b, _ := res.Bytes(nil)
		got = append(got, b...)
	}
	assert.True(t, big == string(got), "the pieces make the chunk")
	assert.Equal(t, 1, f.store.getCount("grid/1.0"))
}

func TestInterruptedCallerGetsEINTR(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	log := slog.New(slog.DiscardHandler)
	assert.Equal(t, syscall.EINTR, errnoOf(ctx, log, "read", "x", fmt.Errorf("fetch: %w", context.Canceled)))
	assert.Equal(t, syscall.EIO, errnoOf(context.Background(), log, "read", "x", fmt.Errorf("fetch: %w", context.Canceled)))
	assert.Equal(t, syscall.ENOENT, errnoOf(ctx, log, "read", "x", fmt.Errorf("k: %w", iofs.ErrNotExist)),
		"a real answer is given even when the caller has gone")
}

// readAll reads a file node whole.
func readAll(t *testing.T, n *gofs.Inode) string {
	t.Helper()
	r, ok := n.Operations().(gofs.NodeReader)
	require.True(t, ok)
	res, errno := r.Read(context.Background(), nil, make([]byte, 1<<16), 0)
	require.Zero(t, errno)
	b, _ := res.Bytes(nil)
	return string(b)
}

func TestChangedStoreIsServedNewAndWholeAfterTTL(t *testing.T) {
	f := newFixture(t)
	meta, m1, errno := f.lookup(t, f.root, "alpha/.zmetadata")
	require.Zero(t, errno)
	require.Equal(t, zmetadata, readAll(t, meta))
	chunk, c1, errno := f.lookup(t, f.root, "alpha/grid/0.0")
	require.Zero(t, errno)
	require.Equal(t, "aaaaaa", readAll(t, chunk))
	_, a1, errno := f.lookup(t, f.root, "alpha/grid/.zattrs")
	require.Zero(t, errno)

	// The server rewrites a chunk with the same size and shrinks the
	// metadata (an attribute removed).
	shrunk := strings.Replace(zmetadata, `"title": "test"`, `"t": 1`, 1)
	f.store.mu.Lock()
	f.store.keys[".zmetadata"] = []byte(shrunk)
	f.store.keys["grid/0.0"] = []byte("AAAAAA")
	f.store.mu.Unlock()

	// Within the TTL: the same files.
	f.advance(30 * time.Second)
	_, same, errno := f.lookup(t, f.root, "alpha/.zmetadata")
	require.Zero(t, errno)
	assert.Equal(t, m1.Attr.Ino, same.Attr.Ino)
	assert.Equal(t, uint64(len(zmetadata)), same.Attr.Size)

	// After it: new inodes (the kernel's pages and sizes of the old files
	// are never used), a later mtime, exact new bytes.
	f.advance(time.Minute)
	meta2, m2, errno := f.lookup(t, f.root, "alpha/.zmetadata")
	require.Zero(t, errno)
	assert.NotEqual(t, m1.Attr.Ino, m2.Attr.Ino)
	assert.Greater(t, m2.Attr.Mtime, m1.Attr.Mtime)
	assert.Equal(t, uint64(len(shrunk)), m2.Attr.Size)
	assert.Equal(t, shrunk, readAll(t, meta2))

	chunk2, c2, errno := f.lookup(t, f.root, "alpha/grid/0.0")
	require.Zero(t, errno)
	assert.NotEqual(t, c1.Attr.Ino, c2.Attr.Ino)
	assert.Equal(t, "AAAAAA", readAll(t, chunk2), "the cached old bytes were dropped")
	assert.Equal(t, 2, f.store.getCount("grid/0.0"))

	// Every file of the datasource is a new inode, including unchanged ones;
	// numbers never collide with the old version's.
	_, a2, errno := f.lookup(t, f.root, "alpha/grid/.zattrs")
	require.Zero(t, errno)
	assert.NotEqual(t, a1.Attr.Ino, a2.Attr.Ino)
	for _, old := range []uint64{m1.Attr.Ino, c1.Attr.Ino, a1.Attr.Ino} {
		assert.NotContains(t, []uint64{m2.Attr.Ino, c2.Attr.Ino, a2.Attr.Ino}, old)
	}

	// Another datasource is untouched.
	_, b1, errno := f.lookup(t, f.root, "beta_1/grid/0.0")
	require.Zero(t, errno)
	f.advance(2 * time.Minute)
	_, b2, errno := f.lookup(t, f.root, "beta_1/grid/0.0")
	require.Zero(t, errno)
	assert.Equal(t, b1.Attr.Ino, b2.Attr.Ino, "an unchanged store keeps its inodes")
}

func TestChangedChildArrayMetadataIsNoticed(t *testing.T) {
	// A store without .zmetadata: only a child .zarray changes.
	store := newMemStore(map[string]string{
		".zgroup":   `{"zarr_format": 2}`,
		"a/.zarray": `{"chunks": [2], "compressor": null, "dtype": "<i1", "fill_value": 0, "filters": null, "order": "C", "shape": [4], "zarr_format": 2}`,
		"a/0":       "xx",
		"a/1":       "yy",
	})
	f := newFixture(t)
	f.cat.stores["alpha"] = &listingStore{store}
	names := f.list(t, "alpha/a")
	require.Equal(t, []string{".zarray", "0", "1"}, names)
	store.mu.Lock()
	store.keys["a/.zarray"] = []byte(strings.Replace(string(store.keys["a/.zarray"]), `"shape": [4]`, `"shape": [6]`, 1))
	store.keys["a/2"] = []byte("zz")
	store.mu.Unlock()
	f.advance(2 * time.Minute)
	assert.Equal(t, []string{".zarray", "0", "1", "2"}, f.list(t, "alpha/a"))
	meta, _, errno := f.lookup(t, f.root, "alpha/a/.zarray")
	require.Zero(t, errno)
	assert.Contains(t, readAll(t, meta), "6")
}

// listingStore adds folder listings to a memStore (a store without
// consolidated metadata is walked).
type listingStore struct{ *memStore }

func (s *listingStore) List(ctx context.Context, prefix string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	p := prefix
	if p != "" {
		p += "/"
	}
	for k := range s.keys {
		if !strings.HasPrefix(k, p) {
			continue
		}
		rest := k[len(p):]
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			rest = rest[:i+1]
		}
		if !seen[rest] {
			seen[rest] = true
			out = append(out, rest)
		}
	}
	sort.Strings(out)
	return out, nil
}

func TestCatalogOutageKeepsTheKnownTree(t *testing.T) {
	f := newFixture(t)
	s, errno := f.root.Readdir(context.Background())
	require.Zero(t, errno)
	require.Equal(t, []string{"alpha", "beta_1"}, names(t, s))
	_, _, errno = f.lookup(t, f.root, "alpha/grid/0.0")
	require.Zero(t, errno)

	f.cat.err = errors.New("catalog answered 500")
	f.advance(2 * time.Minute)
	s, errno = f.root.Readdir(context.Background())
	require.Zero(t, errno, "the last good listing is served")
	assert.Equal(t, []string{"alpha", "beta_1"}, names(t, s))
	node, _, errno := f.lookup(t, f.root, "alpha/grid/0.0")
	require.Zero(t, errno, "a listed datasource stays reachable")
	assert.Equal(t, "aaaaaa", readAll(t, node))
	_, _, errno = f.lookup(t, f.root, "beta_1/grid/0.1")
	require.Zero(t, errno)
	_, _, errno = f.lookup(t, f.root, "never-listed")
	assert.Equal(t, syscall.EIO, errno, "an id never listed cannot be vouched for")
}

func TestCatalogWithoutAnyAnswerIsEIO(t *testing.T) {
	f := newFixture(t)
	f.cat.err = errors.New("catalog answered 500")
	_, errno := f.root.Readdir(context.Background())
	assert.Equal(t, syscall.EIO, errno)
}

func TestDuplicateCatalogIDsAreListedOnce(t *testing.T) {
	f := newFixture(t)
	f.cat.listed = []string{"beta_1", "alpha", "beta_1", "alpha"}
	s, errno := f.root.Readdir(context.Background())
	require.Zero(t, errno)
	assert.Equal(t, []string{"alpha", "beta_1"}, names(t, s))
}

func TestNamesLongerThanNameMaxAreRefused(t *testing.T) {
	f := newFixture(t)
	long := strings.Repeat("x", 256)
	_, _, errno := f.lookup(t, f.root, long)
	assert.Equal(t, syscall.ENAMETOOLONG, errno)
	_, _, errno = f.lookup(t, f.root, "alpha/"+long)
	assert.Equal(t, syscall.ENAMETOOLONG, errno)
	var out fuse.StatfsOut
	require.Zero(t, f.root.Statfs(context.Background(), &out))
	assert.Equal(t, uint32(255), out.NameLen)
}

func TestIdleMetadataIsReleasedAndReloaded(t *testing.T) {
	f := newFixture(t)
	_, c1, errno := f.lookup(t, f.root, "alpha/grid/0.0")
	require.Zero(t, errno)
	ds := f.root.sources["alpha"]
	require.NotNil(t, ds.cur.h)
	// Unused for more than idleRelease TTLs; a catalog refresh sweeps.
	f.advance(idleRelease*time.Minute + time.Second)
	_, errno = f.root.Readdir(context.Background())
	require.Zero(t, errno)
	ds.mu.Lock()
	released := ds.cur.h == nil
	ds.mu.Unlock()
	assert.True(t, released, "metadata of an unused datasource is released")
	_, c2, errno := f.lookup(t, f.root, "alpha/grid/0.0")
	require.Zero(t, errno)
	assert.Equal(t, 2, f.store.getCount(".zmetadata"), "loaded again at the next use")
	assert.Equal(t, c1.Attr.Ino, c2.Attr.Ino, "the same store keeps its inodes across a release")
}

func TestChunkRewrittenWithoutMetadataChangeIsReadNewAfterTTL(t *testing.T) {
	f := newFixture(t)
	chunk, c1, errno := f.lookup(t, f.root, "alpha/grid/0.1")
	require.Zero(t, errno)
	require.Equal(t, "bbbbbb", readAll(t, chunk))
	f.store.mu.Lock()
	f.store.keys["grid/0.1"] = []byte("BBBBBB") // same size, .zmetadata untouched
	f.store.mu.Unlock()

	f.advance(30 * time.Second)
	_, same, errno := f.lookup(t, f.root, "alpha/grid/0.1")
	require.Zero(t, errno)
	assert.Equal(t, c1.Attr.Ino, same.Attr.Ino)
	assert.Equal(t, 1, f.store.getCount("grid/0.1"), "within the TTL the chunk is trusted")

	f.advance(time.Minute)
	chunk2, c2, errno := f.lookup(t, f.root, "alpha/grid/0.1")
	require.Zero(t, errno)
	assert.NotEqual(t, c1.Attr.Ino, c2.Attr.Ino, "a changed chunk is a new file")
	assert.Greater(t, c2.Attr.Mtime, c1.Attr.Mtime)
	assert.Equal(t, "BBBBBB", readAll(t, chunk2))
}

func TestUnchangedChunkKeepsItsInodeAfterTTL(t *testing.T) {
	f := newFixture(t)
	chunk, c1, errno := f.lookup(t, f.root, "alpha/grid/0.1")
	require.Zero(t, errno)
	require.Equal(t, "bbbbbb", readAll(t, chunk))
	_, o1, errno := f.lookup(t, f.root, "alpha/grid/0.0")
	require.Zero(t, errno)
	f.advance(2 * time.Minute)
	_, c2, errno := f.lookup(t, f.root, "alpha/grid/0.1")
	require.Zero(t, errno)
	assert.Equal(t, c1.Attr.Ino, c2.Attr.Ino)
	assert.Equal(t, c1.Attr.Mtime, c2.Attr.Mtime)
	assert.Equal(t, 2, f.store.getCount("grid/0.1"), "checked again once after the TTL")
	_, o2, errno := f.lookup(t, f.root, "alpha/grid/0.0")
	require.Zero(t, errno)
	assert.Equal(t, o1.Attr.Ino, o2.Attr.Ino, "the store kept its version")
}

func TestListerGetsSizesByGetWhenHeadSaysNothing(t *testing.T) {
	f := newFixture(t)
	f.store.headless = true
	f.list(t, "alpha/grid")
	_, out, errno := f.lookup(t, f.root, "alpha/grid/0.0")
	require.Zero(t, errno)
	assert.Equal(t, uint64(6), out.Attr.Size)
	_, out, errno = f.lookup(t, f.root, "alpha/grid/0.1")
	require.Zero(t, errno)
	assert.Equal(t, uint64(6), out.Attr.Size)
	_, _, errno = f.lookup(t, f.root, "alpha/grid/1.1")
	assert.Equal(t, syscall.ENOENT, errno)
	// Background HEADs ahead may have been sent before the first answer;
	// after it, sizes cost one GET each and no HEAD.
	require.Eventually(t, func() bool { st := f.root.opt.Cache.Stats(); return st.Running == 0 && st.PrefetchQueued == 0 }, 5*time.Second, time.Millisecond,
		"background HEADs finished")
	_, heads := f.store.counts()
	f.list(t, "alpha/grid")
	_, _, errno = f.lookup(t, f.root, "alpha/grid/1.0")
	require.Zero(t, errno)
	_, heads2 := f.store.counts()
	assert.Equal(t, heads, heads2, "no HEAD once the gateway showed it gives no size")
	assert.Equal(t, 1, f.store.getCount("grid/1.0"))
}

// A listed datasource that holds no Zarr store (cleared, say) is an empty
// directory: a name the root lists never fails to open.
func TestDatasourceWithoutStoreIsEmpty(t *testing.T) {
	f := newFixture(t)
	f.cat.listed = append(f.cat.listed, "hollow")
	f.cat.stores["hollow"] = newMemStore(nil)
	assert.Equal(t, []string{infoName}, f.list(t, "hollow"), "its description only")
	_, _, errno := f.lookup(t, f.root, "hollow/.zgroup")
	assert.Equal(t, syscall.ENOENT, errno)
}

func TestRaiseReadaheadOnlyTouchesADmfsMount(t *testing.T) {
	err := raiseReadahead("/proc")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no dmfs mount at /proc")
	assert.Error(t, raiseReadahead(t.TempDir()))
}
