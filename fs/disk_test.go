package fs

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/cache"
	"github.com/oceanum-dmfs/dmfs/zarr"
)

// newDiskFixture is newFixture over store as datasource "alpha", with a
// cache whose disk tier is the folder dir: a mount of its own.
func newDiskFixture(t *testing.T, dir string, store *memStore) *fixture {
	t.Helper()
	disk, err := cache.OpenDisk(cache.DiskOptions{Dir: dir, Origin: "http://gateway.test"})
	require.NoError(t, err)
	f := &fixture{store: store, now: time.Unix(1_700_000_000, 0)}
	f.cat = &memCatalog{listed: []string{"alpha"}, stores: map[string]zarr.Store{"alpha": store}}
	f.cache = cache.New(cache.Options{MaxBytes: 1 << 20, Now: f.clock, Disk: disk})
	t.Cleanup(f.cache.Close)
	f.root = NewRoot(Options{Catalog: f.cat, Cache: f.cache, Readahead: 2, MetadataTTL: time.Minute, now: f.clock})
	gofs.NewNodeFS(f.root, &gofs.Options{})
	return f
}

var testChunks = []string{"grid/0.0", "grid/0.1", "grid/1.0", "line/0", "line/1", "line/2"}

// readChunks looks up and reads every chunk of alpha, as a reader would.
func (f *fixture) readChunks(t *testing.T) map[string]string {
	t.Helper()
	got := map[string]string{}
	for _, key := range testChunks {
		node, _, errno := f.lookup(t, f.root, "alpha/"+key)
		require.Zero(t, errno, key)
		got[key] = readAll(t, node)
	}
	return got
}

// chunkGets counts the store's GETs and HEADs of chunks.
func (s *memStore) chunkGets() (gets, heads int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, key := range testChunks {
		gets += s.gets[key]
		heads += s.heads[key]
	}
	return gets, heads
}

func TestDiskTierServesARemountAndNeverAChangedStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disk")
	store := testStore()
	first := newDiskFixture(t, dir, store)
	want := first.readChunks(t)
	first.cache.Close() // unmount: the disk writes are done
	gets, heads := store.chunkGets()
	require.Equal(t, len(testChunks), gets, "the first mount fetched each chunk once")

	// A remount reads every chunk from the disk: no chunk request, one metadata request.
	metaBefore := store.getCount(".zmetadata")
	again := newDiskFixture(t, dir, store)
	assert.Equal(t, want, again.readChunks(t))
	g2, h2 := store.chunkGets()
	assert.Equal(t, gets, g2, "no chunk GET on a remount")
	assert.Equal(t, heads, h2, "no chunk HEAD on a remount")
	assert.Equal(t, metaBefore+1, store.getCount(".zmetadata"))
	assert.GreaterOrEqual(t, again.cache.Stats().DiskHits, int64(len(testChunks)))
	again.cache.Close()

	// The store changes on the server (new metadata, new bytes): the next
	// mount finds none of the old version's chunks.
	store.mu.Lock()
	store.keys[".zmetadata"] = []byte(strings.Replace(zmetadata, `"title": "test"`, `"title": "second"`, 1))
	store.keys["grid/0.0"] = []byte("AAAAAA")
	store.mu.Unlock()
	changed := newDiskFixture(t, dir, store)
	got := changed.readChunks(t)
	assert.Equal(t, "AAAAAA", got["grid/0.0"])
	want["grid/0.0"] = "AAAAAA"
	assert.Equal(t, want, got)
	g3, _ := store.chunkGets()
	assert.Equal(t, g2+len(testChunks), g3, "every chunk of a changed store is fetched again")
}

func TestDiskTierIsDoubtedOnceAChunkChangedInPlace(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disk")
	store := testStore()
	first := newDiskFixture(t, dir, store)
	first.readChunks(t)
	first.cache.Close()

	f := newDiskFixture(t, dir, store)
	f.readChunks(t) // from the disk
	before := store.getCount("grid/0.0")
	store.mu.Lock()
	store.keys["grid/0.1"] = []byte("BBBBBB") // same size, .zmetadata untouched
	store.mu.Unlock()

	f.advance(2 * time.Minute)
	node, _, errno := f.lookup(t, f.root, "alpha/grid/0.1")
	require.Zero(t, errno)
	assert.Equal(t, "BBBBBB", readAll(t, node), "after the TTL the chunk is checked with the gateway, not the disk")

	// The store changed under the same digest: the disk's copies of the
	// other chunks are doubted too, and replaced.
	node, _, errno = f.lookup(t, f.root, "alpha/grid/0.0")
	require.Zero(t, errno)
	assert.Equal(t, "aaaaaa", readAll(t, node))
	assert.Equal(t, before+1, store.getCount("grid/0.0"), "read from the gateway after an in-place change")
	f.cache.Close()

	next := newDiskFixture(t, dir, store)
	gets := store.getCount("grid/0.1")
	node, _, errno = next.lookup(t, next.root, "alpha/grid/0.1")
	require.Zero(t, errno)
	assert.Equal(t, "BBBBBB", readAll(t, node), "the disk holds the new bytes")
	assert.Equal(t, gets, store.getCount("grid/0.1"))
}
