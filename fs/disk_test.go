package fs

import (
	"bytes"
	"context"
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
	assert.Zero(t, again.cache.Stats().Bytes, "chunks on disk are read in place, not loaded into memory")
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

// newTableDiskFixture is queryFixture with a cache whose disk tier is dir
// and with cat's catalog: a mount of its own on the same gateway.
func newTableDiskFixture(t *testing.T, dir string, cat *memCatalog, tableDir string) *fixture {
	t.Helper()
	disk, err := cache.OpenDisk(cache.DiskOptions{Dir: dir, Origin: "http://gateway.test"})
	require.NoError(t, err)
	f := queryFixture(t)
	if cat != nil {
		f.cat = cat
	}
	f.cache = cache.New(cache.Options{MaxBytes: 1 << 20, Now: f.clock, Disk: disk})
	t.Cleanup(f.cache.Close)
	f.root = NewRoot(Options{Catalog: f.cat, Cache: f.cache, Readahead: 2, MetadataTTL: time.Minute, now: f.clock, TableDir: tableDir})
	gofs.NewNodeFS(f.root, &gofs.Options{})
	return f
}

func TestDiskTierKeepsTablesWhileTheGatewaySaysUnchanged(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), (tableMemory/16)+1000)
	for _, tc := range []struct {
		name  string
		table []byte
		big   bool // held in TableDir, not memory
	}{
		{"small table, in memory", []byte("PAR1 whole table PAR1"), false},
		{"large table, in a file", big, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "disk")
			first := newTableDiskFixture(t, dir, nil, t.TempDir())
			cat := first.cat
			cat.tables["table_1"] = tc.table
			cat.tableTags = map[string]string{"table_1": `etag:"v1"`, "table_1?q2": ""}
			read := func(f *fixture, path string) []byte {
				node, _, errno := f.lookup(t, f.root, path)
				require.Zero(t, errno)
				var all []byte
				for {
					res, errno := node.Operations().(gofs.NodeReader).Read(context.Background(), nil, make([]byte, 1<<20), int64(len(all)))
					require.Zero(t, errno)
					b, _ := res.Bytes(nil)
					if len(b) == 0 {
						return all
					}
					all = append(all, b...)
				}
			}
			same := func(want, got []byte, msg string) {
				t.Helper()
				assert.True(t, bytes.Equal(want, got), "%s: %d bytes, want %d", msg, len(got), len(want))
			}
			same(tc.table, read(first, "table_1/table_1.parquet"), "first mount")
			first.cache.Close() // unmount: the table is written
			require.Equal(t, 1, cat.bodies)

			// A remount asks the gateway once, conditionally, and serves the kept copy.
			again := newTableDiskFixture(t, dir, cat, t.TempDir())
			same(tc.table, read(again, "table_1/table_1.parquet"), "remount")
			assert.Equal(t, 2, cat.opens)
			assert.Equal(t, 1, cat.bodies, "no body sent for an unchanged table")
			again.cache.Close()

			// The table changes: the next mount downloads it and keeps the new one.
			changed := append([]byte("PAR1 new "), tc.table...)
			cat.tables["table_1"] = changed
			cat.tableTags["table_1"] = `etag:"v2"`
			third := newTableDiskFixture(t, dir, cat, t.TempDir())
			same(changed, read(third, "table_1/table_1.parquet"), "never the old table")
			assert.Equal(t, 2, cat.bodies)
			third.cache.Close()
			fourth := newTableDiskFixture(t, dir, cat, t.TempDir())
			same(changed, read(fourth, "table_1/table_1.parquet"), "the new version kept")
			assert.Equal(t, 2, cat.bodies, "the new version was kept")

			// A query's table the gateway gives no validator for is not kept.
			q := `table_1@time=2020-01-01,/table_1.parquet`
			assert.Equal(t, "PAR1 rows since 2020 PAR1", string(read(fourth, q)))
			fourth.cache.Close()
			fifth := newTableDiskFixture(t, dir, cat, t.TempDir())
			assert.Equal(t, "PAR1 rows since 2020 PAR1", string(read(fifth, q)))
			assert.Equal(t, 4, cat.bodies, "a table without a validator is downloaded at each mount")
		})
	}
}

// A remount a day after the chunks were fetched trusts them, from the disk,
// for the metadata TTL counted from its own metadata read, as it would a
// fetch made then: names looked up again meanwhile cost nothing; after the
// TTL a reader's lookup checks each chunk with the gateway, as in memory.
func TestDiskTierTrustsADayOldChunkForTheTTLOfItsRemount(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disk")
	store := testStore()
	first := newDiskFixture(t, dir, store)
	want := first.readChunks(t)
	first.cache.Close()
	gets, _ := store.chunkGets()

	again := newDiskFixture(t, dir, store)
	again.advance(24 * time.Hour)
	assert.Equal(t, want, again.readChunks(t))
	again.advance(30 * time.Second) // the fixture's TTL is a minute
	assert.Equal(t, want, again.readChunks(t), "looked up again within the TTL")
	g2, _ := store.chunkGets()
	assert.Equal(t, gets, g2, "no chunk request within the remount's TTL")

	again.advance(time.Minute)
	assert.Equal(t, want, again.readChunks(t), "after the TTL")
	g3, _ := store.chunkGets()
	assert.Equal(t, gets+len(testChunks), g3, "each chunk checked with the gateway once the TTL is over")
}
