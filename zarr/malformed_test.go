package zarr

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestValidKey(t *testing.T) {
	tests := []struct {
		key  string
		want string // "" when valid
	}{
		{"a", ""},
		{"a/b/.zarray", ""},
		{"c/0/0", ""},
		{"..zarray", ""},
		{"a..b/c", ""},
		{"", "empty key"},
		{"/abs", "absolute"},
		{"../etc/.zarray", "'..'"},
		{"a/../b", "'..'"},
		{"a/./b", "'.'"},
		{".", "'.'"},
		{"a//b", "empty segment"},
		{"a/", "empty segment"},
		{"a\x00b", "NUL"},
		{`a\b`, "backslash"},
		{strings.Repeat("a", maxKeyLen+1), "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			err := ValidKey(tt.key)
			if tt.want == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

const (
	okZarray = `{"zarr_format": 2, "shape": [4, 4], "chunks": [2, 2], "dtype": "<f4", "fill_value": "NaN", "order": "C", "compressor": null, "filters": null}`
	okGroup  = `{"zarr_format": 2}`
)

func zmeta(entries string) string {
	return `{"zarr_consolidated_format": 1, "metadata": {` + entries + `}}`
}

func v3Array(fields string) string {
	return `{"zarr_format": 3, "node_type": "array", "shape": [4], "data_type": "float32",
		"chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2]}}` + fields + `}`
}

// TestOpenMalformed checks that bad metadata gives an error naming the
// datasource and the key at fault, never a panic or a partial tree.
func TestOpenMalformed(t *testing.T) {
	tests := []struct {
		name string
		keys map[string]string
		want []string // substrings of the error
	}{
		{"truncated zmetadata", map[string]string{".zmetadata": `{"zarr_consolidated_format": 1, "metadata": {".zgroup": {"zarr_f`}, []string{".zmetadata", "invalid JSON"}},
		{"zmetadata not an object", map[string]string{".zmetadata": `[]`}, []string{".zmetadata", "not a JSON object"}},
		{"unknown consolidated format", map[string]string{".zmetadata": `{"zarr_consolidated_format": 2, "metadata": {}}`}, []string{"zarr_consolidated_format 2"}},
		{"missing consolidated format", map[string]string{".zmetadata": `{"metadata": {}}`}, []string{"no zarr_consolidated_format"}},
		{"metadata not an object", map[string]string{".zmetadata": `{"zarr_consolidated_format": 1, "metadata": []}`}, []string{"metadata is missing"}},
		{"path traversal", map[string]string{".zmetadata": zmeta(`"../etc/.zarray": ` + okZarray)}, []string{`"../etc/.zarray"`, "rejected"}},
		{"absolute key", map[string]string{".zmetadata": zmeta(`"/etc/.zgroup": ` + okGroup)}, []string{`"/etc/.zgroup"`, "absolute"}},
		{"backslash key", map[string]string{".zmetadata": zmeta(`"a\\b/.zgroup": ` + okGroup)}, []string{"backslash"}},
		{"NUL key", map[string]string{".zmetadata": zmeta(`"a\u0000/.zgroup": ` + okGroup)}, []string{"NUL"}},
		{"empty segment", map[string]string{".zmetadata": zmeta(`"a//.zgroup": ` + okGroup)}, []string{"empty segment"}},
		{"negative shape", map[string]string{".zmetadata": zmeta(`"x/.zarray": {"zarr_format": 2, "shape": [-1], "chunks": [1], "dtype": "<f4"}`)}, []string{"x/.zarray", "shape[0] is -1"}},
		{"zero chunk", map[string]string{".zmetadata": zmeta(`"x/.zarray": {"zarr_format": 2, "shape": [4], "chunks": [0], "dtype": "<f4"}`)}, []string{"x/.zarray", "chunks[0] is 0"}},
		{"fractional shape", map[string]string{".zmetadata": zmeta(`"x/.zarray": {"zarr_format": 2, "shape": [4.5], "chunks": [1], "dtype": "<f4"}`)}, []string{"shape[0] is 4.5"}},
		{"shape beyond int64", map[string]string{".zmetadata": zmeta(`"x/.zarray": {"zarr_format": 2, "shape": [99999999999999999999], "chunks": [1], "dtype": "<f4"}`)}, []string{"want an integer"}},
		{"shape is a string", map[string]string{".zmetadata": zmeta(`"x/.zarray": {"zarr_format": 2, "shape": "4", "chunks": [1], "dtype": "<f4"}`)}, []string{`shape is "4"`}},
		{"rank mismatch", map[string]string{".zmetadata": zmeta(`"x/.zarray": {"zarr_format": 2, "shape": [4, 4], "chunks": [2], "dtype": "<f4"}`)}, []string{"x/.zarray", "shape has 2 dimensions but chunks has 1"}},
		{"absurd chunk count", map[string]string{".zmetadata": zmeta(`"x/.zarray": {"zarr_format": 2, "shape": [9223372036854775807, 9223372036854775807], "chunks": [1, 1], "dtype": "<f4"}`)}, []string{"more than 2^40 chunks"}},
		{"no dtype", map[string]string{".zmetadata": zmeta(`"x/.zarray": {"zarr_format": 2, "shape": [4], "chunks": [1]}`)}, []string{"no dtype"}},
		{"bad separator", map[string]string{".zmetadata": zmeta(`"x/.zarray": {"zarr_format": 2, "shape": [4], "chunks": [1], "dtype": "<f4", "dimension_separator": "-"}`)}, []string{"dimension_separator"}},
		{"unknown zarr_format", map[string]string{".zmetadata": zmeta(`"x/.zarray": {"zarr_format": 4, "shape": [4], "chunks": [1], "dtype": "<f4"}`)}, []string{"unsupported zarr_format 4"}},
		{"group format", map[string]string{".zmetadata": zmeta(`".zgroup": {"zarr_format": "2"}`)}, []string{".zgroup", `zarr_format "2"`}},
		{"attrs not an object", map[string]string{".zmetadata": zmeta(`".zattrs": [1]`)}, []string{".zattrs", "not a JSON object"}},
		{"group and array", map[string]string{".zmetadata": zmeta(`"x/.zgroup": ` + okGroup + `, "x/.zarray": ` + okZarray)}, []string{"x/.zarray", "both a group and an array"}},
		{"node inside array", map[string]string{".zmetadata": zmeta(`"x/.zarray": ` + okZarray + `, "x/0/.zgroup": ` + okGroup)}, []string{"x/0", "inside array"}},
		{"folder named like a file", map[string]string{".zmetadata": zmeta(`".zattrs": {}, ".zattrs/.zgroup": ` + okGroup)}, []string{".zattrs", "both a folder and a metadata file"}},

		{"v2 truncated zarray", map[string]string{".zgroup": okGroup, "x/.zarray": `{"zarr_format": 2, "shape": [4`}, []string{`"ds"`, "x/.zarray", "invalid JSON"}},
		{"v2 root zgroup wrong type", map[string]string{".zgroup": `[2]`}, []string{".zgroup", "not a JSON object"}},
		{"v2 bad attrs", map[string]string{".zgroup": okGroup, ".zattrs": `{"a": }`}, []string{".zattrs", "invalid JSON"}},
		{"v2 listing traversal", map[string]string{".zgroup": okGroup, "../x/.zarray": okZarray}, []string{"rejected"}},

		{"v3 unknown format", map[string]string{"zarr.json": `{"zarr_format": 5, "node_type": "group"}`}, []string{"zarr.json", "unsupported zarr_format 5"}},
		{"v3 no node type", map[string]string{"zarr.json": `{"zarr_format": 3}`}, []string{"no node_type"}},
		{"v3 bad node type", map[string]string{"zarr.json": `{"zarr_format": 3, "node_type": "dataset"}`}, []string{"node_type is \"dataset\""}},
		{"v3 irregular grid", map[string]string{"zarr.json": `{"zarr_format": 3, "node_type": "array", "shape": [4], "data_type": "int8", "chunk_grid": {"name": "rectilinear", "configuration": {}}}`}, []string{"rectilinear", "only \"regular\""}},
		{"v3 no chunk grid", map[string]string{"zarr.json": `{"zarr_format": 3, "node_type": "array", "shape": [4], "data_type": "int8"}`}, []string{"no chunk_grid"}},
		{"v3 no data type", map[string]string{"zarr.json": `{"zarr_format": 3, "node_type": "array", "shape": [4]}`}, []string{"no data_type"}},
		{"v3 chunk rank", map[string]string{"zarr.json": v3Array(`, "shape": [4, 4]`)}, []string{"shape has 2 dimensions but chunks has 1"}},
		{"v3 bad key encoding", map[string]string{"zarr.json": v3Array(`, "chunk_key_encoding": {"name": "v4"}`)}, []string{"chunk_key_encoding"}},
		{"v3 bad separator", map[string]string{"zarr.json": v3Array(`, "chunk_key_encoding": {"name": "default", "configuration": {"separator": 1}}`)}, []string{"separator is 1"}},
		{"v3 sharding rank", map[string]string{"zarr.json": v3Array(`, "codecs": [{"name": "sharding_indexed", "configuration": {"chunk_shape": [1, 1]}}]`)}, []string{"sharding_indexed"}},
		{"v3 sharding not dividing", map[string]string{"zarr.json": v3Array(`, "codecs": [{"name": "sharding_indexed", "configuration": {"chunk_shape": [3]}}]`)}, []string{"does not divide"}},
		{"v3 consolidated traversal", map[string]string{"zarr.json": `{"zarr_format": 3, "node_type": "group", "consolidated_metadata": {"metadata": {"a/../../x": {"zarr_format": 3, "node_type": "group"}}}}`}, []string{`"a/../../x"`, "rejected"}},
		{"v3 consolidated wrong type", map[string]string{"zarr.json": `{"zarr_format": 3, "node_type": "group", "consolidated_metadata": {"metadata": [1]}}`}, []string{"consolidated_metadata", "metadata is missing"}},
		{"v3 consolidated bad child", map[string]string{"zarr.json": `{"zarr_format": 3, "node_type": "group", "consolidated_metadata": {"metadata": {"a": {"zarr_format": 3, "node_type": "array", "shape": [1]}}}}`}, []string{"a/zarr.json", "no data_type"}},
		{"v3 walked child truncated", map[string]string{"zarr.json": `{"zarr_format": 3, "node_type": "group"}`, "a/zarr.json": `{"zarr_format": 3,`}, []string{"a/zarr.json", "invalid JSON"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys := map[string][]byte{}
			for k, v := range tt.keys {
				keys[k] = []byte(v)
			}
			h, err := Open(context.Background(), "ds", newMapStore(keys))
			require.Error(t, err)
			assert.Nil(t, h)
			assert.Contains(t, err.Error(), `zarr store "ds"`)
			for _, want := range tt.want {
				assert.Contains(t, err.Error(), want)
			}
		})
	}
}

// TestOpenLenient covers input that is unusual but valid.
func TestOpenLenient(t *testing.T) {
	keys := map[string][]byte{".zmetadata": []byte(zmeta(
		`"x/y/.zarray": {"zarr_format": 2, "shape": [3], "chunks": [2], "dtype": [["a", "<i4"], ["b", "|S2"]], "dimension_separator": null},` +
			`"x/.zattrs": {"note": "implicit group with attributes"},` +
			`"x/notes.txt": {"ignored": true}`))}
	h, err := Open(context.Background(), "ds", newMapStore(keys))
	require.NoError(t, err)
	x, ok := h.Folder("x")
	require.True(t, ok)
	assert.Equal(t, []string{"y"}, x.Children)
	assert.Equal(t, []string{".zattrs"}, fileNames(x))
	y, ok := h.Folder("x/y")
	require.True(t, ok)
	require.NotNil(t, y.Array)
	assert.Equal(t, `[["a","<i4"],["b","|S2"]]`, y.Array.DType)
	assert.Equal(t, []string{"0", "1"}, y.Array.ChunkKeysAfter("", 10))
	_, ok = h.Folder("x/notes.txt")
	assert.False(t, ok)
}
