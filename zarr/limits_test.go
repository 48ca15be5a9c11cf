package zarr

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSizeLimitContext(t *testing.T) {
	_, ok := SizeLimit(context.Background())
	assert.False(t, ok)
	n, ok := SizeLimit(WithSizeLimit(context.Background(), 42))
	assert.True(t, ok)
	assert.EqualValues(t, 42, n)
}

// TestOpenAsksForSizeLimit checks that every metadata Get carries the
// limit, whichever way the hierarchy is read.
func TestOpenAsksForSizeLimit(t *testing.T) {
	for _, fixture := range []string{"v2_xarray", "v2_groups", "v2_root_array", "v3_consolidated", "v3_default", "v3_zmetadata"} {
		t.Run(fixture, func(t *testing.T) {
			ms := newMapStore(loadFixture(t, fixture))
			_, err := Open(context.Background(), fixture, ms)
			require.NoError(t, err)
			ms.mu.Lock()
			defer ms.mu.Unlock()
			require.NotEmpty(t, ms.limits)
			for key, limit := range ms.limits {
				assert.EqualValues(t, MaxMetadataSize, limit, key)
			}
		})
	}
}

// padded returns doc followed by white space up to n bytes: still the same
// JSON value, n bytes long.
func padded(doc string, n int) []byte {
	return []byte(doc + strings.Repeat(" ", n-len(doc)))
}

// nestedList is a list nested depth deep around one number: a few bytes per
// level as written compactly, but re-indented each level indents all the
// lines below it, so its canonical form grows with the square of depth.
func nestedList(depth int) string {
	return strings.Repeat("[", depth) + "0" + strings.Repeat("]", depth)
}

func TestOpenSizeLimits(t *testing.T) {
	groupKeys := loadFixture(t, "v2_groups")
	withKey := func(base map[string][]byte, key string, data []byte) map[string][]byte {
		keys := maps.Clone(base)
		keys[key] = data
		return keys
	}
	// About 1 MiB of canonical JSON for 1 KiB of document: 6 MiB in all.
	bomb := nestedList(500)
	bombs := strings.TrimSuffix(strings.Repeat(bomb+", ", 6), ", ")
	tests := []struct {
		name    string
		keys    map[string][]byte
		lim     limits
		wantErr string // "" when the store must open
	}{
		{
			name: "zmetadata at the limit",
			keys: map[string][]byte{zmetadataKey: padded(zmeta(`".zgroup": `+okGroup), MaxMetadataSize)},
			lim:  defaultLimits,
		},
		{
			name:    "zmetadata over the limit",
			keys:    map[string][]byte{zmetadataKey: padded(zmeta(`".zgroup": `+okGroup), MaxMetadataSize+1)},
			lim:     defaultLimits,
			wantErr: `zarr store "ds": .zmetadata is 16777217 bytes, more than the 16 MiB allowed for a metadata document`,
		},
		{
			name:    "root zarr.json over the limit",
			keys:    map[string][]byte{zarrJSONName: padded(`{"zarr_format": 3, "node_type": "group"}`, MaxMetadataSize+1)},
			lim:     defaultLimits,
			wantErr: `zarr store "ds": zarr.json is 16777217 bytes, more than the 16 MiB allowed`,
		},
		{
			name:    "walked child zarray over the limit",
			keys:    withKey(groupKeys, "a/b/nested/.zarray", padded(string(groupKeys["a/b/nested/.zarray"]), MaxMetadataSize+1)),
			lim:     defaultLimits,
			wantErr: `zarr store "ds": a/b/nested/.zarray is 16777217 bytes, more than the 16 MiB allowed`,
		},
		{
			name: "walked v3 child over the limit",
			keys: map[string][]byte{
				zarrJSONName:  []byte(`{"zarr_format": 3, "node_type": "group"}`),
				"g/zarr.json": padded(`{"zarr_format": 3, "node_type": "group"}`, 1001),
			},
			lim:     limits{doc: 1000, total: 1 << 20},
			wantErr: `g/zarr.json is 1001 bytes, more than the 1000 bytes allowed for a metadata document`,
		},
		{
			name:    "walked documents over the total",
			keys:    groupKeys,
			lim:     limits{doc: 1 << 20, total: 1000},
			wantErr: "the metadata of the hierarchy is more than the 1000 bytes allowed in all",
		},
		{
			name:    "rebuilt files over the total",
			keys:    map[string][]byte{zmetadataKey: []byte(zmeta(`".zgroup": ` + okGroup + `, ".zattrs": {"x": [` + bombs + `]}`))},
			lim:     limits{doc: MaxMetadataSize, total: 4 << 20},
			wantErr: `.zattrs: the metadata of the hierarchy is more than the 4 MiB allowed in all`,
		},
		{
			name:    "v3 rebuilt files over the total",
			keys:    map[string][]byte{zarrJSONName: []byte(`{"zarr_format": 3, "node_type": "group", "consolidated_metadata": {"metadata": {"g": {"zarr_format": 3, "node_type": "group", "attributes": {"x": [` + bombs + `]}}}}}`)},
			lim:     limits{doc: MaxMetadataSize, total: 4 << 20},
			wantErr: `g/zarr.json: the metadata of the hierarchy is more than the 4 MiB allowed in all`,
		},
		{
			name:    "v3 zmetadata rebuilt files over the total",
			keys:    map[string][]byte{zmetadataKey: []byte(zmeta(`"zarr.json": {"zarr_format": 3, "node_type": "group"}, "g/zarr.json": {"zarr_format": 3, "node_type": "group", "attributes": {"x": [` + bombs + `]}}`))},
			lim:     limits{doc: MaxMetadataSize, total: 4 << 20},
			wantErr: `g/zarr.json: the metadata of the hierarchy is more than the 4 MiB allowed in all`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := open(context.Background(), "ds", newMapStore(tt.keys), tt.lim)
			if tt.wantErr == "" {
				require.NoError(t, err)
				checkHierarchy(t, h)
				return
			}
			require.ErrorIs(t, err, ErrMetadataTooLarge)
			assert.Nil(t, h)
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}
}

// TestNestedListCanonicalSize checks the premise of the "rebuilt files over
// the total" cases: the expansion is real, so the limit is what stops them.
func TestNestedListCanonicalSize(t *testing.T) {
	raw := nestedList(500)
	v, err := parseJSON([]byte(raw))
	require.NoError(t, err)
	assert.Greater(t, len(canonicalJSON(&v)), 900*len(raw))
}

func TestAppendCanonicalLimited(t *testing.T) {
	v, err := parseJSON([]byte(`{"b": [1, 2, {"c": "\u00e9\u00e9\u00e9"}], "a": "` + strings.Repeat("\x7f", 100) + `"}`))
	require.NoError(t, err)
	full := canonicalJSON(&v)
	for _, limit := range []int{0, 1, 10, 50, len(full) - 1, len(full), len(full) + 10} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			got, ok := appendCanonicalLimited(nil, &v, limit)
			assert.Equal(t, len(full) <= limit, ok)
			if ok {
				assert.Equal(t, string(full), string(got))
				return
			}
			assert.Greater(t, len(got), limit)
			assert.LessOrEqual(t, len(got), limit+16, "stops soon after the limit")
			assert.True(t, strings.HasPrefix(string(full), string(got)), "a prefix of the full output")
		})
	}
}

// TestConsolidatedDuplicateKeys checks that consolidated metadata read entry
// by entry keeps Python's rule for duplicate keys, the last wins, and gives
// back what a replaced entry had reserved.
func TestConsolidatedDuplicateKeys(t *testing.T) {
	attrs := `{"text": "` + strings.Repeat("x", 400) + `"}`
	// Room for the document and about two of its entries' files, not twenty.
	repeated := zmeta(strings.TrimSuffix(strings.Repeat(`"x/.zattrs": `+attrs+`, `, 20), ", "))
	tests := []struct {
		name    string
		keys    map[string]string
		lim     limits
		want    map[string][]string // folder -> files
		wantErr string
	}{
		{
			name: "bad entry replaced by a good one",
			keys: map[string]string{zmetadataKey: zmeta(`"x/.zarray": {"zarr_format": 2}, "x/.zarray": ` + okZarray)},
			want: map[string][]string{"": {zmetadataKey}, "x": {zarrayName}},
		},
		{
			name:    "good entry replaced by a bad one",
			keys:    map[string]string{zmetadataKey: zmeta(`"x/.zarray": ` + okZarray + `, "x/.zarray": {"zarr_format": 2}`)},
			wantErr: "x/.zarray: no shape",
		},
		{
			name: "second metadata member wins",
			keys: map[string]string{zmetadataKey: `{"zarr_consolidated_format": 1, "metadata": {"a/.zgroup": ` + okGroup + `}, "metadata": {"b/.zgroup": ` + okGroup + `}}`},
			want: map[string][]string{"": {zmetadataKey}, "b": {zgroupName}},
		},
		{
			name:    "metadata replaced by a list",
			keys:    map[string]string{zmetadataKey: `{"zarr_consolidated_format": 1, "metadata": {"a/.zgroup": ` + okGroup + `}, "metadata": []}`},
			wantErr: "metadata is missing or not an object",
		},
		{
			name: "format after metadata",
			keys: map[string]string{zmetadataKey: `{"metadata": {".zgroup": ` + okGroup + `}, "zarr_consolidated_format": 1}`},
			want: map[string][]string{"": {zgroupName, zmetadataKey}},
		},
		{
			name: "replaced entries give back their bytes",
			keys: map[string]string{zmetadataKey: repeated},
			lim:  limits{doc: 1 << 20, total: len(repeated) + 2*len(attrs) + 100},
			want: map[string][]string{"": {zmetadataKey}, "x": {zattrsName}},
		},
		{
			name: "v3 consolidated replaced by null: walked",
			keys: map[string]string{
				zarrJSONName:  `{"zarr_format": 3, "node_type": "group", "consolidated_metadata": {"metadata": {"a": {"zarr_format": 3, "node_type": "group"}}}, "consolidated_metadata": null}`,
				"b/zarr.json": `{"zarr_format": 3, "node_type": "group"}`,
			},
			want: map[string][]string{"": {zarrJSONName}, "b": {zarrJSONName}},
		},
		{
			name: "v3 duplicate entry",
			keys: map[string]string{zarrJSONName: `{"zarr_format": 3, "node_type": "group", "consolidated_metadata": {"metadata": {"a": {"zarr_format": 3}, "a": {"zarr_format": 3, "node_type": "group"}}}}`},
			want: map[string][]string{"": {zarrJSONName}, "a": {zarrJSONName}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys := map[string][]byte{}
			for k, v := range tt.keys {
				keys[k] = []byte(v)
			}
			lim := tt.lim
			if lim == (limits{}) {
				lim = defaultLimits
			}
			h, err := open(context.Background(), "ds", newMapStore(keys), lim)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			got := map[string][]string{}
			for p, f := range h.folders {
				got[p] = fileNames(f)
			}
			assert.Equal(t, tt.want, got)
		})
	}
}
