package zarr

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var fuzzRootKeys = []string{zmetadataKey, zarrJSONName, zarrayName, zgroupName}

// FuzzOpen opens a store whose root metadata document is the fuzzed input:
// it must never panic, and a hierarchy it accepts must be consistent.
func FuzzOpen(f *testing.F) {
	for i, key := range fuzzRootKeys {
		matches, err := filepath.Glob(filepath.Join("testdata", "*", key))
		if err != nil {
			f.Fatal(err)
		}
		for _, m := range matches {
			data, err := os.ReadFile(m)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data, uint8(i))
		}
	}
	f.Add([]byte(zmeta(`"../etc/.zarray": `+okZarray)), uint8(0))
	f.Add([]byte(zmeta(`"a/b/.zarray": `+okZarray+`, "a/.zattrs": {"x": [NaN, "\ud800"]}`)), uint8(0))
	f.Add([]byte(zmeta(`"x/.zarray": {"zarr_format": 2, "shape": [9223372036854775807], "chunks": [1], "dtype": "<f4"}`)), uint8(0))
	f.Add([]byte(v3Array(`, "chunk_key_encoding": {"name": "v2", "configuration": {"separator": "/"}}`)), uint8(1))
	f.Add([]byte(`{"zarr_format": 3, "node_type": "group", "consolidated_metadata": {"metadata": {"a/b": `+v3Array("")+`}}}`), uint8(1))
	// Duplicate keys, which consolidated metadata read entry by entry must resolve as Python.
	f.Add([]byte(`{"metadata": {"a/.zgroup": {"zarr_format": 2}}, "zarr_consolidated_format": 1, "metadata": {"b/.zarray": `+okZarray+`, "b/.zarray": {}}}`), uint8(0))
	f.Add([]byte(`{"zarr_format": 3, "node_type": "group", "consolidated_metadata": {"metadata": {"a": {}}}, "consolidated_metadata": null}`), uint8(1))
	// v3 nodes in .zmetadata, alone, mixed with v2 ones, and among unknown entries.
	f.Add([]byte(zmeta(`"zarr.json": {"zarr_format": 3, "node_type": "group"}, "a/b/zarr.json": `+v3Array(``))), uint8(0))
	f.Add([]byte(zmeta(`"zarr.json": {"zarr_format": 3, "node_type": "group"}, "a/.zarray": `+okZarray)), uint8(0))
	f.Add([]byte(zmeta(`"a/zarr.json": `+v3Array(`, "chunk_key_encoding": {"name": "v2"}`)+`, "a/notes.txt": {}`)), uint8(0))

	f.Fuzz(func(t *testing.T, data []byte, which uint8) {
		key := fuzzRootKeys[int(which)%len(fuzzRootKeys)]
		keys := map[string][]byte{key: data}
		if key == zgroupName {
			keys["child/.zarray"] = data // the walk reads it as a child array
		}
		h, err := Open(context.Background(), "fuzz", newMapStore(keys))
		if err != nil {
			if !strings.Contains(err.Error(), `zarr store "fuzz"`) {
				t.Fatalf("error does not name the datasource: %v", err)
			}
			return
		}
		checkHierarchy(t, h)
		if key == zmetadataKey {
			checkAgainstTree(t, data, h)
		}
	})
}

// checkAgainstTree checks the files rebuilt from .zmetadata, read entry by
// entry, against the document parsed whole: the same entries (duplicate keys
// resolved the same way), each served as its canonical JSON.
func checkAgainstTree(t *testing.T, raw []byte, h *Hierarchy) {
	t.Helper()
	doc, err := parseJSON(raw)
	if err != nil {
		t.Fatalf("accepted a document that does not parse whole: %v", err)
	}
	meta, _ := doc.get("metadata")
	want := map[string]string{zmetadataKey: string(raw)}
	for i := range meta.members {
		m := &meta.members[i]
		if _, name := splitKey(m.key); name == zarrayName || name == zgroupName || name == zattrsName || name == zarrJSONName {
			want[m.key] = string(canonicalJSON(&m.value))
		}
	}
	got := map[string]string{}
	for p, f := range h.folders {
		for _, file := range f.Files {
			got[joinKey(p, file.Name)] = string(file.Data)
		}
	}
	if !maps.Equal(want, got) {
		t.Fatalf("files differ from the document parsed whole:\nwant %q\ngot  %q", want, got)
	}
}

// checkHierarchy checks the invariants the filesystem relies on.
func checkHierarchy(t *testing.T, h *Hierarchy) {
	t.Helper()
	if _, ok := h.Folder(""); !ok {
		t.Fatal("no root folder")
	}
	for p, f := range h.folders {
		if p != "" {
			if err := ValidKey(p); err != nil {
				t.Fatalf("folder %q: %v", p, err)
			}
		}
		if !slices.IsSortedFunc(f.Files, func(x, y File) int { return strings.Compare(x.Name, y.Name) }) || !slices.IsSorted(f.Children) {
			t.Fatalf("folder %q not sorted", p)
		}
		for _, file := range f.Files {
			if !isMetadataName(file.Name) {
				t.Fatalf("folder %q: unexpected file %q", p, file.Name)
			}
			if _, err := parseJSON(file.Data); err != nil {
				t.Fatalf("%s/%s does not parse: %v", p, file.Name, err)
			}
		}
		for _, c := range f.Children {
			if _, ok := h.Folder(joinKey(p, c)); !ok {
				t.Fatalf("child %q of %q missing", c, p)
			}
		}
		if a := f.Array; a != nil {
			if len(f.Children) > 0 {
				t.Fatalf("array %q has children", p)
			}
			n := a.NumChunks()
			if n < 0 || n > maxChunks {
				t.Fatalf("array %q: %d chunks", p, n)
			}
			cf, ok := a.ChunkFolder("")
			if !ok {
				t.Fatalf("array %q: no chunk folder", p)
			}
			if cf.Len() > 0 {
				name := cf.Name(cf.Len() - 1)
				if i, ok := cf.Index(name); !ok || i != cf.Len()-1 {
					t.Fatalf("array %q: last entry %q does not round-trip", p, name)
				}
			}
			for _, key := range a.ChunkKeysAfter("", 3) {
				if !a.IsChunkKey(key) {
					t.Fatalf("array %q: %q is not a chunk key", p, key)
				}
			}
		}
	}
}

// FuzzChunkKey checks that names and indices of a chunk grid are inverse:
// every name Index accepts is the Name of that index, and the reverse.
func FuzzChunkKey(f *testing.F) {
	f.Add(int64(4), int64(6), int64(2), int64(2), uint8(2), false, false, "1.2", int64(5))
	f.Add(int64(4), int64(6), int64(2), int64(2), uint8(2), true, true, "c/1/2", int64(3))
	f.Add(int64(10), int64(0), int64(3), int64(1), uint8(1), true, false, "3", int64(0))
	f.Add(int64(0), int64(0), int64(1), int64(1), uint8(0), true, true, "c", int64(0))
	f.Add(int64(0), int64(0), int64(1), int64(1), uint8(0), false, false, "0", int64(0))
	f.Add(int64(1<<20), int64(1<<20), int64(1), int64(1), uint8(2), false, true, "c.1048575.0", int64(-1))
	f.Add(int64(5), int64(0), int64(2), int64(2), uint8(2), true, false, "0/01", int64(7))

	f.Fuzz(func(t *testing.T, s0, s1, c0, c1 int64, ndim uint8, slash, prefix bool, name string, idx int64) {
		shape := []int64{s0, s1}[:int(ndim)%3]
		chunks := []int64{c0, c1}[:len(shape)]
		sep := byte('.')
		if slash {
			sep = '/'
		}
		g, err := newChunkGrid(shape, chunks, sep, prefix)
		if err != nil {
			return
		}
		a := &Array{Shape: shape, Chunks: chunks, grid: g}

		// A name accepted as a key is the name of its index.
		if i, ok := g.keyIndex(name); ok {
			if i < 0 || i >= g.total || g.keyName(i) != name || !a.IsChunkKey(name) {
				t.Fatalf("key %q -> %d -> %q", name, i, g.keyName(i))
			}
		}
		root, _ := a.ChunkFolder("")
		if i, ok := root.Index(name); ok && root.Name(i) != name {
			t.Fatalf("entry %q -> %d -> %q", name, i, root.Name(i))
		}
		if cf, ok := a.ChunkFolder(name); ok && cf.Len() > 0 {
			last := cf.Name(cf.Len() - 1)
			if i, ok := cf.Index(last); !ok || i != cf.Len()-1 {
				t.Fatalf("folder %q: last entry %q does not round-trip", name, last)
			}
		}
		if g.total == 0 {
			if root.Len() != 0 || a.IsChunkKey(name) {
				t.Fatal("an empty grid has entries")
			}
			return
		}

		// The key of any index resolves back, folder level by folder level.
		i := idx % g.total
		if i < 0 {
			i += g.total
		}
		key := g.keyName(i)
		if got, ok := g.keyIndex(key); !ok || got != i {
			t.Fatalf("index %d -> %q -> %d, %v", i, key, got, ok)
		}
		if g.nested() {
			parts := strings.Split(key, "/")
			for d, part := range parts {
				cf, ok := a.ChunkFolder(strings.Join(parts[:d], "/"))
				if !ok {
					t.Fatalf("key %q: folder level %d missing", key, d)
				}
				j, ok := cf.Index(part)
				if !ok || cf.Name(j) != part || cf.Dirs() != (d < len(parts)-1) {
					t.Fatalf("key %q: level %d entry %q", key, d, part)
				}
			}
		} else if j, ok := root.Index(key); !ok || j != i || root.Dirs() {
			t.Fatalf("key %q: root index %d, %v", key, j, ok)
		}
		if next := a.ChunkKeysAfter(key, 1); i+1 < g.total && (len(next) != 1 || next[0] != g.keyName(i+1)) {
			t.Fatalf("after %q: %v", key, next)
		}
	})
}
