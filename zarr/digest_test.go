package zarr

import (
	"context"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDigest checks that the digest tells a changed store, wherever its
// metadata changed, and nothing else.
func TestDigest(t *testing.T) {
	// edit replaces the first old in key's value, failing if it is not there,
	// so that no case passes by editing nothing.
	edit := func(key, old, new string) func(t *testing.T, keys map[string][]byte) {
		return func(t *testing.T, keys map[string][]byte) {
			s := string(keys[key])
			require.Contains(t, s, old, key)
			keys[key] = []byte(strings.Replace(s, old, new, 1))
		}
	}
	add := func(key, value string) func(t *testing.T, keys map[string][]byte) {
		return func(t *testing.T, keys map[string][]byte) {
			require.NotContains(t, keys, key)
			keys[key] = []byte(value)
		}
	}
	tests := []struct {
		name    string
		fixture string
		change  func(t *testing.T, keys map[string][]byte) // nil: an identical store
		same    bool
	}{
		{name: "v2 consolidated identical", fixture: "v2_groups_consolidated", same: true},
		{name: "v2 consolidated entry changed", fixture: "v2_groups_consolidated",
			change: edit(zmetadataKey, `"description": "nested groups`, `"description": "renamed groups`)},
		{name: "v2 consolidated child zarray changed", fixture: "v2_groups_consolidated",
			change: edit(zmetadataKey, `"shape": [
                4,`, `"shape": [
                5,`)},
		{name: "v2 consolidated white space only", fixture: "v2_groups_consolidated",
			change: edit(zmetadataKey, "{", "{ ")}, // .zmetadata is served as is
		{name: "v2 consolidated file outside zmetadata", fixture: "v2_groups_consolidated", same: true,
			change: edit("big/.zarray", `"zarr_format": 2`, `"zarr_format": 2, "x": 1`)}, // never read
		{name: "v2 consolidated chunk changed", fixture: "v2_groups_consolidated", same: true,
			change: func(t *testing.T, keys map[string][]byte) { keys["big/0"] = []byte("new bytes") }},

		{name: "v2 walked identical", fixture: "v2_groups", same: true},
		{name: "v2 walked child zarray changed", fixture: "v2_groups",
			change: edit("a/b/nested/.zarray", `"dtype": ">f8"`, `"dtype": "<f8"`)},
		{name: "v2 walked child zattrs changed", fixture: "v2_groups",
			change: edit("a/empty/.zattrs", "{", "{ ")},
		{name: "v2 walked array added", fixture: "v2_groups",
			change: add("a/more/.zarray", okZarray)},
		{name: "v2 walked chunk changed", fixture: "v2_groups", same: true,
			change: func(t *testing.T, keys map[string][]byte) { keys["big/0"] = []byte("new bytes") }},

		{name: "v3 walked identical", fixture: "v3_default", same: true},
		{name: "v3 walked child zarr.json changed", fixture: "v3_default",
			change: edit("g/temp/zarr.json", `"shape": [4, 6]`, `"shape": [4, 8]`)},
		{name: "v3 walked group attributes changed", fixture: "v3_default",
			change: edit("g/zarr.json", `"attributes": {}`, `"attributes": {"a": 1}`)},
		{name: "v3 walked non-node file changed", fixture: "v3_default", same: true,
			change: edit("notanode/readme.txt", "", "more ")},

		{name: "v3 zmetadata identical", fixture: "v3_zmetadata", same: true},
		{name: "v3 zmetadata entry changed", fixture: "v3_zmetadata",
			change: edit(zmetadataKey, `"shape":[4,6]`, `"shape":[4,7]`)},
		{name: "v3 zmetadata root attributes changed", fixture: "v3_zmetadata",
			change: edit(zmetadataKey, `"Conventions":"CF-1.8"`, `"Conventions":"CF-1.9"`)},
		{name: "v3 zmetadata white space only", fixture: "v3_zmetadata",
			change: edit(zmetadataKey, "{", "{ ")}, // .zmetadata is served as is
		{name: "v3 zmetadata node file outside zmetadata", fixture: "v3_zmetadata", same: true,
			change: edit("g/temp/zarr.json", `"float32"`, `"float64"`)}, // never read
		{name: "v3 zmetadata chunk changed", fixture: "v3_zmetadata", same: true,
			change: func(t *testing.T, keys map[string][]byte) { keys["scalar/c"] = []byte("new bytes") }},

		{name: "v3 consolidated identical", fixture: "v3_consolidated", same: true},
		{name: "v3 consolidated entry changed", fixture: "v3_consolidated",
			change: edit(zarrJSONName, `"name": "Ω"`, `"name": "Ψ"`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, err := Open(context.Background(), "ds", newMapStore(loadFixture(t, tt.fixture)))
			require.NoError(t, err)
			keys := loadFixture(t, tt.fixture)
			if tt.change != nil {
				tt.change(t, keys)
			}
			after, err := Open(context.Background(), "ds", newMapStore(keys))
			require.NoError(t, err)
			assert.NotZero(t, before.Digest())
			if tt.same {
				assert.Equal(t, before.Digest(), after.Digest())
			} else {
				assert.NotEqual(t, before.Digest(), after.Digest())
			}
		})
	}
}

// TestDigestFieldsAreDelimited checks that moving bytes from one field to
// the next (a folder's path into a file's name, a name into the data)
// changes the digest.
func TestDigestFieldsAreDelimited(t *testing.T) {
	tests := []struct {
		name string
		a, b map[string]*Folder
	}{
		{
			name: "name and data",
			a:    map[string]*Folder{"": {Files: []File{{Name: ".zattrs", Data: []byte("{}")}}}},
			b:    map[string]*Folder{"": {Files: []File{{Name: ".zattrs{", Data: []byte("}")}}}},
		},
		{
			name: "path and name",
			a:    map[string]*Folder{"a": {Path: "a", Files: []File{{Name: "b", Data: nil}}}},
			b:    map[string]*Folder{"ab": {Path: "ab", Files: []File{{Name: "", Data: nil}}}},
		},
		{
			name: "file moved to the next folder",
			a:    map[string]*Folder{"": {Files: []File{{Name: "x", Data: nil}}}, "a": {Path: "a"}},
			b:    map[string]*Folder{"": {}, "a": {Path: "a", Files: []File{{Name: "x", Data: nil}}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.NotEqual(t, digest(tt.a), digest(tt.b))
		})
	}
}

// TestOpenHoldsMetadataOnce checks that an open hierarchy holds its metadata
// files and little else: no parsed form of the document, no slack in the
// files' buffers.
func TestOpenHoldsMetadataOnce(t *testing.T) {
	raw := syntheticZmetadata(2 << 20)
	store := cloningStore{newMapStore(map[string][]byte{zmetadataKey: raw})}
	var before, after runtime.MemStats
	gcFully()
	runtime.ReadMemStats(&before)
	h, err := Open(context.Background(), "ds", store)
	require.NoError(t, err)
	gcFully()
	runtime.ReadMemStats(&after)

	files := 0
	for _, f := range h.folders {
		for _, file := range f.Files {
			files += len(file.Data)
			assert.LessOrEqual(t, cap(file.Data)-len(file.Data), len(file.Data)/8+8, "slack in %s/%s", f.Path, file.Name)
		}
	}
	held := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf(".zmetadata %d bytes, files %d bytes, heap held %d bytes", len(raw), files, held)
	// The tree, names and grids cost a little besides; a parsed document
	// would cost several times the files.
	assert.Less(t, held, int64(files)*5/4+(1<<20))
	runtime.KeepAlive(h)
	runtime.KeepAlive(store) // its copy of the document was counted in before
}
