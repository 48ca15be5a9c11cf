package zarr

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestV3ZmetadataServesEntries checks what the mount serves for a v3 store
// consolidated in .zmetadata: the document as fetched, and per node the
// canonical JSON of its entry, whatever the per-node files hold.
func TestV3ZmetadataServesEntries(t *testing.T) {
	keys := loadFixture(t, "v3_zmetadata")
	doc, ok := decodeUseNumber(keys[zmetadataKey])
	require.True(t, ok)
	entries := doc.(map[string]any)["metadata"].(map[string]any)
	require.Len(t, entries, 5)

	// Only .zmetadata is read: the node files are made from its entries.
	for k := range keys {
		if k != zmetadataKey {
			delete(keys, k)
		}
	}
	h, err := Open(context.Background(), "v3z", getOnlyStore{newMapStore(keys)})
	require.NoError(t, err)
	root, _ := h.Folder("")
	assert.Equal(t, keys[zmetadataKey], root.Files[0].Data, ".zmetadata served as fetched")
	for key, entry := range entries {
		dir, name := splitKey(key)
		require.Equal(t, zarrJSONName, name)
		f, ok := h.Folder(dir)
		require.True(t, ok, key)
		served := f.Files[len(f.Files)-1] // zarr.json sorts after .zmetadata
		require.Equal(t, zarrJSONName, served.Name, key)
		got, ok := decodeUseNumber(served.Data)
		require.True(t, ok, key)
		assert.Equal(t, entry, got, key)
	}
}

// TestV3ZmetadataMatchesInline checks that a .zmetadata of zarr.json entries
// and the same nodes consolidated inline in the root zarr.json give the same
// tree: one v3 builder serves both.
func TestV3ZmetadataMatchesInline(t *testing.T) {
	keys := loadFixture(t, "v3_zmetadata")
	fromZmetadata, err := Open(context.Background(), "a", newMapStore(keys))
	require.NoError(t, err)

	var doc struct {
		Metadata map[string]map[string]any `json:"metadata"`
	}
	require.NoError(t, json.Unmarshal(keys[zmetadataKey], &doc))
	rootNode := doc.Metadata[zarrJSONName]
	inline := map[string]any{}
	for key, entry := range doc.Metadata {
		if key != zarrJSONName {
			inline[strings.TrimSuffix(key, "/"+zarrJSONName)] = entry
		}
	}
	rootNode["consolidated_metadata"] = map[string]any{"kind": "inline", "must_understand": false, "metadata": inline}
	rootJSON, err := json.Marshal(rootNode)
	require.NoError(t, err)
	fromInline, err := Open(context.Background(), "b", newMapStore(map[string][]byte{zarrJSONName: rootJSON}))
	require.NoError(t, err)

	require.ElementsMatch(t, mapKeys(fromInline.folders), mapKeys(fromZmetadata.folders))
	for p, want := range fromInline.folders {
		got := fromZmetadata.folders[p]
		assert.Equal(t, want.Children, got.Children, p)
		assert.Equal(t, want.Array, got.Array, p)
		if p != "" { // the roots differ by .zmetadata and consolidated_metadata
			assert.Equal(t, want.Files, got.Files, p)
		}
	}
}

// TestOpenZmetadataFormats covers which .zmetadata documents open, by the
// formats of their entries.
func TestOpenZmetadataFormats(t *testing.T) {
	const v3Group = `{"zarr_format": 3, "node_type": "group"}`
	tests := []struct {
		name    string
		doc     string
		want    map[string][]string // folder -> files, when it opens
		wantErr []string            // substrings of the error otherwise
	}{
		{
			name: "v3 nodes",
			doc:  zmeta(`"zarr.json": ` + v3Group + `, "a/b/zarr.json": ` + v3Array(``)),
			want: map[string][]string{"": {zmetadataKey, zarrJSONName}, "a": nil, "a/b": {zarrJSONName}},
		},
		{
			name: "v3 nodes without a root entry",
			doc:  zmeta(`"a/zarr.json": ` + v3Group),
			want: map[string][]string{"": {zmetadataKey}, "a": {zarrJSONName}},
		},
		{
			name: "v3 root array",
			doc:  zmeta(`"zarr.json": ` + v3Array(`, "chunk_key_encoding": {"name": "v2", "configuration": {"separator": "."}}`)),
			want: map[string][]string{"": {zmetadataKey, zarrJSONName}},
		},
		{
			name: "v3 nodes and unknown entries",
			doc:  zmeta(`"zarr.json": ` + v3Group + `, "notes.txt": {}`),
			want: map[string][]string{"": {zmetadataKey, zarrJSONName}},
		},
		{
			name: "v2 entries replaced by v3 ones",
			doc:  `{"zarr_consolidated_format": 1, "metadata": {".zgroup": ` + okGroup + `}, "metadata": {"zarr.json": ` + v3Group + `}}`,
			want: map[string][]string{"": {zmetadataKey, zarrJSONName}},
		},
		{
			name: "no entries",
			doc:  zmeta(``),
			want: map[string][]string{"": {zmetadataKey}},
		},
		{
			name:    "mixed v2 group and v3 group",
			doc:     zmeta(`".zgroup": ` + okGroup + `, "zarr.json": ` + v3Group),
			wantErr: []string{".zmetadata", `mixes Zarr v2 entries (".zgroup") and v3 entries ("zarr.json")`},
		},
		{
			name:    "mixed v3 array and v2 attributes",
			doc:     zmeta(`"x/zarr.json": ` + v3Array(``) + `, "x/.zattrs": {}`),
			wantErr: []string{`mixes Zarr v2 entries ("x/.zattrs") and v3 entries ("x/zarr.json")`},
		},
		{
			name:    "mixed with a bad v3 entry",
			doc:     zmeta(`"x/.zarray": ` + okZarray + `, "y/zarr.json": {}`),
			wantErr: []string{"mixes Zarr v2 entries"},
		},
		{
			name:    "none recognised",
			doc:     zmeta(`"x/notes.txt": {"a": 1}, "zarr.json.bak": {}`),
			wantErr: []string{".zmetadata", "none of its 2 metadata entries", `"x/notes.txt"`},
		},
		{
			name:    "v3 node is not an object",
			doc:     zmeta(`"g/zarr.json": [1]`),
			wantErr: []string{"g/zarr.json", "not a JSON object"},
		},
		{
			name:    "v3 node without node type",
			doc:     zmeta(`"g/zarr.json": {"zarr_format": 3}`),
			wantErr: []string{"g/zarr.json", "no node_type"},
		},
		{
			name:    "v2 document in a zarr.json entry",
			doc:     zmeta(`"g/zarr.json": ` + okZarray),
			wantErr: []string{"g/zarr.json", "unsupported zarr_format 2, want 3"},
		},
		{
			name:    "v3 entry traversal",
			doc:     zmeta(`"../zarr.json": ` + v3Group),
			wantErr: []string{`"../zarr.json"`, "rejected"},
		},
		{
			name:    "v3 node inside array",
			doc:     zmeta(`"x/zarr.json": ` + v3Array(``) + `, "x/c/zarr.json": ` + v3Group),
			wantErr: []string{"x/c", "inside array"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := Open(context.Background(), "ds", newMapStore(map[string][]byte{zmetadataKey: []byte(tt.doc)}))
			if tt.wantErr != nil {
				require.Error(t, err)
				assert.Nil(t, h)
				assert.Contains(t, err.Error(), `zarr store "ds"`)
				for _, want := range tt.wantErr {
					assert.Contains(t, err.Error(), want)
				}
				return
			}
			require.NoError(t, err)
			checkHierarchy(t, h)
			got := map[string][]string{}
			for p, f := range h.folders {
				got[p] = fileNames(f)
			}
			assert.Equal(t, tt.want, got)
		})
	}
}
