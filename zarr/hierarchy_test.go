package zarr

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type wantFolder struct {
	files    []string
	children []string
}

type wantArray struct {
	format    int
	shape     []int64
	chunks    []int64
	dtype     string
	numChunks int64
	firstKeys []string // ChunkKeysAfter("", 3)
}

// v2Groups is the tree of the v2_groups fixtures, consolidated or not.
func v2Groups(rootFiles ...string) (map[string]wantFolder, map[string]wantArray) {
	return map[string]wantFolder{
			"":           {files: rootFiles, children: []string{"a", "big", "scalar"}},
			"a":          {files: []string{".zgroup"}, children: []string{"b", "empty"}},
			"a/b":        {files: []string{".zgroup"}, children: []string{"nested"}},
			"a/b/nested": {files: []string{".zarray", ".zattrs"}},
			"a/empty":    {files: []string{".zarray", ".zattrs"}},
			"big":        {files: []string{".zarray"}},
			"scalar":     {files: []string{".zarray"}},
		}, map[string]wantArray{
			"a/b/nested": {format: 2, shape: []int64{4, 6}, chunks: []int64{2, 4}, dtype: ">f8", numChunks: 4, firstKeys: []string{"0/0", "0/1", "1/0"}},
			"a/empty":    {format: 2, shape: []int64{0, 3}, chunks: []int64{2, 3}, dtype: "|u1", numChunks: 0},
			"big":        {format: 2, shape: []int64{10}, chunks: []int64{3}, dtype: ">u8", numChunks: 4, firstKeys: []string{"0", "1", "2"}},
			"scalar":     {format: 2, shape: []int64{}, chunks: []int64{}, dtype: "<i8", numChunks: 1, firstKeys: []string{"0"}},
		}
}

func TestOpenFixtures(t *testing.T) {
	groupFolders, groupArrays := v2Groups(".zattrs", ".zgroup")
	consFolders, consArrays := v2Groups(".zattrs", ".zgroup", ".zmetadata")
	tests := []struct {
		fixture  string
		folders  map[string]wantFolder
		arrays   map[string]wantArray
		ignored  []string // keys of the fixture that are not part of the hierarchy
		gets     int      // -1: not checked
		lists    []string // folders listed, in any order
		noLister bool
	}{
		{
			fixture: "v2_xarray",
			folders: map[string]wantFolder{
				"":     {files: []string{".zattrs", ".zgroup", ".zmetadata"}, children: []string{"lat", "lon", "mask", "time", "u10"}},
				"lat":  {files: []string{".zarray", ".zattrs"}},
				"lon":  {files: []string{".zarray", ".zattrs"}},
				"mask": {files: []string{".zarray", ".zattrs"}},
				"time": {files: []string{".zarray", ".zattrs"}},
				"u10":  {files: []string{".zarray", ".zattrs"}},
			},
			arrays: map[string]wantArray{
				"lat":  {format: 2, shape: []int64{5}, chunks: []int64{5}, dtype: "<f8", numChunks: 1, firstKeys: []string{"0"}},
				"lon":  {format: 2, shape: []int64{4}, chunks: []int64{4}, dtype: "<f8", numChunks: 1, firstKeys: []string{"0"}},
				"mask": {format: 2, shape: []int64{5, 4}, chunks: []int64{5, 4}, dtype: ">i2", numChunks: 1, firstKeys: []string{"0.0"}},
				"time": {format: 2, shape: []int64{3}, chunks: []int64{3}, dtype: "<i8", numChunks: 1, firstKeys: []string{"0"}},
				"u10":  {format: 2, shape: []int64{3, 5, 4}, chunks: []int64{1, 3, 2}, dtype: "<f4", numChunks: 12, firstKeys: []string{"0.0.0", "0.0.1", "0.1.0"}},
			},
			gets:     1,
			noLister: true,
		},
		{fixture: "v2_groups_consolidated", folders: consFolders, arrays: consArrays, gets: 1, noLister: true},
		{
			fixture: "v2_groups", folders: groupFolders, arrays: groupArrays, gets: -1,
			lists: []string{"", "a", "a/b"},
		},
		{
			fixture: "v2_root_array",
			folders: map[string]wantFolder{"": {files: []string{".zarray", ".zattrs"}}},
			arrays: map[string]wantArray{
				"": {format: 2, shape: []int64{5, 3}, chunks: []int64{2, 2}, dtype: "<i4", numChunks: 6, firstKeys: []string{"0.0", "0.1", "1.0"}},
			},
			// .zmetadata, zarr.json, .zarray, .zattrs; an array needs no listing.
			gets:     4,
			noLister: true,
		},
		{
			fixture: "v3_default",
			folders: map[string]wantFolder{
				"":        {files: []string{"zarr.json"}, children: []string{"dotsep", "g", "scalar", "v2dot", "v2slash"}},
				"g":       {files: []string{"zarr.json"}, children: []string{"temp"}},
				"g/temp":  {files: []string{"zarr.json"}},
				"scalar":  {files: []string{"zarr.json"}},
				"dotsep":  {files: []string{"zarr.json"}},
				"v2dot":   {files: []string{"zarr.json"}},
				"v2slash": {files: []string{"zarr.json"}},
			},
			arrays: map[string]wantArray{
				"g/temp":  {format: 3, shape: []int64{4, 6}, chunks: []int64{2, 2}, dtype: "float32", numChunks: 6, firstKeys: []string{"c/0/0", "c/0/1", "c/0/2"}},
				"scalar":  {format: 3, shape: []int64{}, chunks: []int64{}, dtype: "int64", numChunks: 1, firstKeys: []string{"c"}},
				"dotsep":  {format: 3, shape: []int64{3, 5}, chunks: []int64{2, 2}, dtype: "uint8", numChunks: 6, firstKeys: []string{"c.0.0", "c.0.1", "c.0.2"}},
				"v2dot":   {format: 3, shape: []int64{5}, chunks: []int64{2}, dtype: "int16", numChunks: 3, firstKeys: []string{"0", "1", "2"}},
				"v2slash": {format: 3, shape: []int64{4, 4}, chunks: []int64{2, 4}, dtype: "int16", numChunks: 2, firstKeys: []string{"0/0", "1/0"}},
			},
			ignored: []string{"notanode/readme.txt"},
			gets:    -1,
			lists:   []string{"", "g"},
		},
		{
			fixture: "v3_consolidated",
			folders: map[string]wantFolder{
				"":          {files: []string{"zarr.json"}, children: []string{"g"}},
				"g":         {files: []string{"zarr.json"}, children: []string{"h", "sharded"}},
				"g/h":       {children: []string{"zero"}}, // implicit
				"g/h/zero":  {files: []string{"zarr.json"}},
				"g/sharded": {files: []string{"zarr.json"}},
			},
			arrays: map[string]wantArray{
				"g/sharded": {format: 3, shape: []int64{8, 10}, chunks: []int64{4, 5}, dtype: "float64", numChunks: 4, firstKeys: []string{"c/0/0", "c/0/1", "c/1/0"}},
				"g/h/zero":  {format: 3, shape: []int64{0, 3}, chunks: []int64{1, 3}, dtype: "bool", numChunks: 0},
			},
			gets:     2, // .zmetadata, zarr.json
			noLister: true,
		},
		{
			// v3 nodes consolidated in .zmetadata, as Datamesh's ingestion
			// writes them; the per-node zarr.json files are never read.
			fixture: "v3_zmetadata",
			folders: map[string]wantFolder{
				"":       {files: []string{".zmetadata", "zarr.json"}, children: []string{"g", "scalar", "v2dot"}},
				"g":      {files: []string{"zarr.json"}, children: []string{"temp"}},
				"g/temp": {files: []string{"zarr.json"}},
				"scalar": {files: []string{"zarr.json"}},
				"v2dot":  {files: []string{"zarr.json"}},
			},
			arrays: map[string]wantArray{
				"g/temp": {format: 3, shape: []int64{4, 6}, chunks: []int64{2, 3}, dtype: "float32", numChunks: 4, firstKeys: []string{"c/0/0", "c/0/1", "c/1/0"}},
				"scalar": {format: 3, shape: []int64{}, chunks: []int64{}, dtype: "int64", numChunks: 1, firstKeys: []string{"c"}},
				"v2dot":  {format: 3, shape: []int64{3, 4}, chunks: []int64{2, 2}, dtype: "int16", numChunks: 4, firstKeys: []string{"0.0", "0.1", "1.0"}},
			},
			gets:     1,
			noLister: true,
		},
		{
			fixture: "v3_root_sharded",
			folders: map[string]wantFolder{"": {files: []string{"zarr.json"}}},
			arrays: map[string]wantArray{
				"": {format: 3, shape: []int64{6, 4}, chunks: []int64{3, 4}, dtype: "uint16", numChunks: 2, firstKeys: []string{"c/0/0", "c/1/0"}},
			},
			gets:     2,
			noLister: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			keys := loadFixture(t, tt.fixture)
			ms := newMapStore(keys)
			var store Store = ms
			if tt.noLister {
				store = getOnlyStore{ms}
			}
			h, err := Open(context.Background(), tt.fixture, store)
			require.NoError(t, err)

			require.ElementsMatch(t, mapKeys(tt.folders), mapKeys(h.folders), "folders")
			for p, want := range tt.folders {
				f, ok := h.Folder(p)
				require.True(t, ok, p)
				assert.Equal(t, p, f.Path)
				assert.Equal(t, want.files, fileNames(f), "files of %q", p)
				assert.Equal(t, want.children, f.Children, "children of %q", p)
				wantArr, isArray := tt.arrays[p]
				require.Equal(t, isArray, f.Array != nil, "array at %q", p)
				if !isArray {
					continue
				}
				a := f.Array
				assert.Equal(t, p, a.Path)
				assert.Equal(t, wantArr.format, a.ZarrFormat, p)
				assert.Equal(t, wantArr.shape, a.Shape, p)
				assert.Equal(t, wantArr.chunks, a.Chunks, p)
				assert.Equal(t, wantArr.dtype, a.DType, p)
				assert.Equal(t, wantArr.numChunks, a.NumChunks(), p)
				assert.Equal(t, wantArr.firstKeys, a.ChunkKeysAfter("", 3), p)
				assert.Equal(t, wantArr.numChunks, int64(len(allChunkKeys(t, a))), "chunk keys listed under %q", p)
			}

			// Every key of the store is a metadata file served with the
			// bytes it has, a chunk key of its array, or known to be outside
			// the hierarchy.
			for key, data := range keys {
				what, file := resolve(h, key)
				switch {
				case slices.Contains(tt.ignored, key):
					assert.Equal(t, "", what, key)
				case isMetadataName(path.Base(key)):
					require.Equal(t, "file", what, key)
					assert.Equal(t, string(data), string(file), "bytes of %s", key)
				default:
					assert.Equal(t, "chunk", what, key)
				}
			}

			gets, lists := ms.requests()
			if tt.gets >= 0 {
				assert.Len(t, gets, tt.gets, "GETs: %v", gets)
			}
			assert.ElementsMatch(t, tt.lists, lists, "listed folders")
			for _, g := range gets {
				assert.True(t, isMetadataName(path.Base(g)), "only metadata is fetched, not %s", g)
			}
		})
	}
}

func mapKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func fileNames(f *Folder) []string {
	var names []string
	for _, file := range f.Files {
		names = append(names, file.Name)
	}
	return names
}

// resolve looks a store key up the way the filesystem does, one path
// segment at a time: "file" with its bytes, "chunk", or "" when absent.
func resolve(h *Hierarchy, key string) (string, []byte) {
	folder, _ := h.Folder("")
	segs := strings.Split(key, "/")
	for i, seg := range segs {
		if folder.Array != nil {
			rel := strings.Join(segs[i:], "/")
			if i == len(segs)-1 {
				for _, f := range folder.Files {
					if f.Name == seg {
						return "file", f.Data
					}
				}
			}
			// Walk the chunk folders down to the file.
			dir := ""
			for j := i; j < len(segs); j++ {
				cf, ok := folder.Array.ChunkFolder(dir)
				if !ok {
					return "", nil
				}
				if _, ok := cf.Index(segs[j]); !ok {
					return "", nil
				}
				if cf.Dirs() != (j < len(segs)-1) {
					return "", nil
				}
				dir = strings.Join(segs[i:j+1], "/")
			}
			if !folder.Array.IsChunkKey(rel) {
				return "", nil
			}
			return "chunk", nil
		}
		if i == len(segs)-1 {
			for _, f := range folder.Files {
				if f.Name == seg {
					return "file", f.Data
				}
			}
			return "", nil
		}
		next, ok := h.Folder(joinKey(folder.Path, seg))
		if !ok {
			return "", nil
		}
		folder = next
	}
	return "", nil
}

// allChunkKeys lists an array's chunk keys by walking its chunk folders.
func allChunkKeys(t *testing.T, a *Array) []string {
	var keys []string
	var walk func(rel string)
	walk = func(rel string) {
		cf, ok := a.ChunkFolder(rel)
		require.True(t, ok, rel)
		for i := range cf.Len() {
			name := cf.Name(i)
			idx, ok := cf.Index(name)
			require.True(t, ok, name)
			require.Equal(t, i, idx, name)
			key := joinKey(rel, name)
			require.False(t, isMetadataName(name))
			if cf.Dirs() {
				walk(key)
			} else {
				require.True(t, a.IsChunkKey(key), key)
				keys = append(keys, key)
			}
		}
	}
	walk("")
	return keys
}

// TestConsolidatedMatchesFiles checks that what is served for each
// consolidated entry is the JSON value of the file zarr wrote, and here even
// its exact bytes.
func TestConsolidatedMatchesFiles(t *testing.T) {
	for _, fixture := range []string{"v2_xarray", "v2_groups_consolidated"} {
		t.Run(fixture, func(t *testing.T) {
			keys := loadFixture(t, fixture)
			h, err := Open(context.Background(), fixture, newMapStore(keys))
			require.NoError(t, err)
			checked := 0
			for key, original := range keys {
				if !isMetadataName(path.Base(key)) || key == zmetadataKey {
					continue
				}
				dir, name := splitKey(key)
				f, ok := h.Folder(dir)
				require.True(t, ok, key)
				i := slices.IndexFunc(f.Files, func(f File) bool { return f.Name == name })
				require.GreaterOrEqual(t, i, 0, key)
				served := f.Files[i].Data
				assert.Equal(t, string(original), string(served), key)
				if want, ok := decodeUseNumber(original); ok {
					got, ok := decodeUseNumber(served)
					require.True(t, ok, key)
					assert.Equal(t, want, got, key)
				}
				checked++
			}
			assert.Greater(t, checked, 5)
		})
	}
}

// decodeUseNumber decodes JSON keeping numbers exact; false for documents
// encoding/json refuses (bare NaN).
func decodeUseNumber(data []byte) (any, bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, false
	}
	return v, true
}

func TestV3ConsolidatedChildren(t *testing.T) {
	keys := loadFixture(t, "v3_consolidated")
	h, err := Open(context.Background(), "v3c", newMapStore(keys))
	require.NoError(t, err)
	root, ok := decodeUseNumber(keys["zarr.json"])
	require.True(t, ok)
	entries := root.(map[string]any)["consolidated_metadata"].(map[string]any)["metadata"].(map[string]any)
	require.Len(t, entries, 3)
	for p, entry := range entries {
		f, ok := h.Folder(p)
		require.True(t, ok, p)
		require.Len(t, f.Files, 1)
		got, ok := decodeUseNumber(f.Files[0].Data)
		require.True(t, ok, p)
		assert.Equal(t, entry, got, p)
	}
	// Large integers survive exactly.
	rootFolder, _ := h.Folder("")
	assert.Contains(t, string(rootFolder.Files[0].Data), "123456789012345678901234567890")
}

// TestV2ListingMatchesConsolidated checks that both ways of reading a v2
// hierarchy give the same tree.
func TestV2ListingMatchesConsolidated(t *testing.T) {
	listed, err := Open(context.Background(), "a", newMapStore(loadFixture(t, "v2_groups")))
	require.NoError(t, err)
	consolidated, err := Open(context.Background(), "b", newMapStore(loadFixture(t, "v2_groups_consolidated")))
	require.NoError(t, err)
	require.ElementsMatch(t, mapKeys(listed.folders), mapKeys(consolidated.folders))
	for p, lf := range listed.folders {
		cf := consolidated.folders[p]
		cfFiles := slices.DeleteFunc(slices.Clone(cf.Files), func(f File) bool { return f.Name == zmetadataKey })
		assert.Equal(t, lf.Files, cfFiles, p)
		assert.Equal(t, lf.Children, cf.Children, p)
		assert.Equal(t, lf.Array, cf.Array, p)
	}
}

func TestOpenStoreErrors(t *testing.T) {
	boom := errors.New("connection reset")
	tests := []struct {
		name    string
		fail    map[string]error
		store   func(*mapStore) Store
		wantIs  error
		wantMsg string
	}{
		{name: "zmetadata refused", fail: map[string]error{".zmetadata": fs.ErrPermission}, wantIs: fs.ErrPermission, wantMsg: `"ds": .zmetadata`},
		{name: "zmetadata transport error is not absence", fail: map[string]error{".zmetadata": boom}, wantIs: boom, wantMsg: ".zmetadata"},
		{name: "child zarray fails", fail: map[string]error{"a/b/nested/.zarray": boom}, wantIs: boom, wantMsg: "a/b/nested/.zarray"},
		{name: "listing fails", fail: map[string]error{"a/": boom}, wantIs: boom, wantMsg: "a/"},
		{name: "no lister", store: func(m *mapStore) Store { return getOnlyStore{m} }, wantMsg: "cannot be listed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ms := newMapStore(loadFixture(t, "v2_groups"))
			ms.fail = tt.fail
			var s Store = ms
			if tt.store != nil {
				s = tt.store(ms)
			}
			_, err := Open(context.Background(), "ds", s)
			require.Error(t, err)
			if tt.wantIs != nil {
				assert.ErrorIs(t, err, tt.wantIs)
			}
			assert.Contains(t, err.Error(), tt.wantMsg)
			assert.Contains(t, err.Error(), `"ds"`)
		})
	}
}

func TestOpenEmptyStore(t *testing.T) {
	_, err := Open(context.Background(), "ds", newMapStore(map[string][]byte{"foo": nil}))
	require.ErrorIs(t, err, ErrNotZarr)
}

func TestOpenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Open(ctx, "ds", newMapStore(loadFixture(t, "v2_groups")))
	require.ErrorIs(t, err, context.Canceled)
}

// TestWalkBoundedParallel checks that a listing walk overlaps requests but
// never has more than maxParallelRequests in flight.
func TestWalkBoundedParallel(t *testing.T) {
	zarray := []byte(`{"zarr_format": 2, "shape": [4], "chunks": [2], "dtype": "<f4", "fill_value": null, "order": "C", "compressor": null, "filters": null}`)
	for _, format := range []int{2, 3} {
		t.Run(fmt.Sprint("v", format), func(t *testing.T) {
			keys := map[string][]byte{}
			const n = 60
			if format == 2 {
				keys[".zgroup"] = []byte(`{"zarr_format": 2}`)
				for i := range n {
					keys[fmt.Sprintf("v%02d/.zarray", i)] = zarray
				}
			} else {
				keys["zarr.json"] = []byte(`{"zarr_format": 3, "node_type": "group"}`)
				for i := range n {
					keys[fmt.Sprintf("v%02d/zarr.json", i)] = []byte(`{"zarr_format": 3, "node_type": "array", "shape": [4], "data_type": "float32",
						"chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2]}}}`)
				}
			}
			ms := newMapStore(keys)
			ms.delay = 2 * time.Millisecond
			h, err := Open(context.Background(), "ds", ms)
			require.NoError(t, err)
			root, _ := h.Folder("")
			assert.Len(t, root.Children, n)
			assert.LessOrEqual(t, ms.maxSeen.Load(), int32(maxParallelRequests))
			assert.Greater(t, ms.maxSeen.Load(), int32(4), "requests overlap")
		})
	}
}
