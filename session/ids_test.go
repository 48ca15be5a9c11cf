package session

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestValidIDs(t *testing.T) {
	tests := []struct {
		id           string
		valid, isNew bool
	}{
		{id: "era5_wind10m", valid: true, isNew: true},
		{id: "era5.wind", valid: true},
		{id: "UPPER", valid: true},
		{id: "a b", valid: true},
		{id: "ab", valid: true},
		{id: "x", valid: true},
		{id: "..a", valid: true},
		{id: strings.Repeat("a", 80), valid: true, isNew: true},
		{id: strings.Repeat("a", 81), valid: true},
		{id: strings.Repeat("a", 255), valid: true},
		{id: strings.Repeat("a", 256)},
		{id: ""},
		{id: "."},
		{id: ".."},
		{id: "a/b"},
		{id: "/"},
		{id: "a\x00b"},
	}
	for _, tt := range tests {
		name := tt.id
		if len(name) > 20 {
			name = name[:10] + "..."
		}
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tt.valid, ValidID(tt.id), "ValidID")
			assert.Equal(t, tt.isNew, ValidNewID(tt.id), "ValidNewID")
		})
	}
}

// Every usable id reaches the gateway, percent-encoded as one segment.
func TestStoreIDsEscaped(t *testing.T) {
	tests := []struct{ id, wantPath string }{
		{"era5.wind", "/zarr/era5.wind/.zmetadata"},
		{"UPPER", "/zarr/UPPER/.zmetadata"},
		{"a b", "/zarr/a%20b/.zmetadata"},
		{"50%", "/zarr/50%25/.zmetadata"},
		{"q?x#y", "/zarr/q%3Fx%23y/.zmetadata"},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			g := newFakeGateway(t)
			var got string
			g.zarr = func(w http.ResponseWriter, r *http.Request) {
				got = r.URL.EscapedPath()
				_, _ = w.Write([]byte("{}"))
			}
			c := acquired(t, testConfig(g.srv.URL, nil))
			b, err := c.Store(tt.id).Get(t.Context(), ".zmetadata")
			require.NoError(t, err)
			assert.Equal(t, "{}", string(b))
			assert.Equal(t, tt.wantPath, got)
			assert.Equal(t, int32(1), g.zarrReqs.Load())
		})
	}
}
