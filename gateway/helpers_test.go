package gateway

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

const testToken = "s3cret-test-token"

// demoDir holds the small demo stores, written once for the whole package.
var demoDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gateway-demo-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	demoDir = dir
	if err := WriteDemo(context.Background(), dir, DemoOptions{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
}

// fixtureDir builds a folder with hand-made stores next to copies of nothing
// else: a v3 store, a v2 store named "query", a store with symlinks, and
// folders that must be skipped.
func fixtureDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	// v3 group with one float32 array "lat" (2 chunks of 2) and "temp".
	writeFile(t, filepath.Join(dir, "v3store", "zarr.json"),
		`{"zarr_format":3,"node_type":"group","attributes":{"title":"Version three","description":"hand-made v3"}}`)
	writeFile(t, filepath.Join(dir, "v3store", "lat", "zarr.json"),
		`{"zarr_format":3,"node_type":"array","shape":[4],"data_type":"float32",
		"chunk_grid":{"name":"regular","configuration":{"chunk_shape":[2]}},
		"chunk_key_encoding":{"name":"default","configuration":{"separator":"/"}},
		"codecs":[{"name":"bytes","configuration":{"endian":"little"}}],"fill_value":0,
		"attributes":{"units":"degrees_north"},"dimension_names":["lat"]}`)
	writeFile(t, filepath.Join(dir, "v3store", "lat", "c", "0"), string(f32le(-10, -5)))
	writeFile(t, filepath.Join(dir, "v3store", "lat", "c", "1"), string(f32le(0, 5)))
	// A datasource named like the query route.
	writeFile(t, filepath.Join(dir, "query", ".zgroup"), `{"zarr_format":2}`)
	// Symlinks: one inside the store, one escaping it.
	outside := filepath.Join(t.TempDir(), "secret")
	writeFile(t, outside, "outside bytes")
	writeFile(t, filepath.Join(dir, "links", ".zgroup"), `{"zarr_format":2}`)
	writeFile(t, filepath.Join(dir, "links", "real"), "inside bytes")
	writeFile(t, filepath.Join(dir, "links", "a b#c?d"), "odd name")
	writeFile(t, filepath.Join(dir, "links", "sub", "x:y"), "colon")
	require.NoError(t, os.Symlink(filepath.Join(dir, "links", "real"), filepath.Join(dir, "links", "inner")))
	require.NoError(t, os.Symlink(outside, filepath.Join(dir, "links", "escape")))
	require.NoError(t, os.Symlink(filepath.Dir(outside), filepath.Join(dir, "links", "escapedir")))
	// Served, though outside the rule for new ids (DESIGN §3).
	writeFile(t, filepath.Join(dir, "Bad.Name", ".zgroup"), `{"zarr_format":2}`)
	// Skipped: not a store, symlinked store.
	writeFile(t, filepath.Join(dir, "notzarr", "readme.txt"), "hello")
	require.NoError(t, os.Symlink(filepath.Join(dir, "query"), filepath.Join(dir, "linked")))
	return dir
}

func f32le(vs ...float32) []byte {
	out := make([]byte, 0, 4*len(vs))
	for _, v := range vs {
		out = binary.LittleEndian.AppendUint32(out, math.Float32bits(v))
	}
	return out
}

func newServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = demoDir
	}
	s, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// call sends one request straight to the handler. hdr: header pairs.
func call(t testing.TB, h http.Handler, method, target string, body io.Reader, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, target, body)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// auth is the header pair pattern the official Python client sends.
var auth = []string{"X-DATAMESH-TOKEN", testToken, "Authorization", "Token " + testToken}

func withSession(id string) []string {
	return append(append([]string{}, auth...), "X-DATAMESH-SESSIONID", id)
}

func acquire(t testing.TB, h http.Handler, query string) sessionJSON {
	t.Helper()
	w := call(t, h, http.MethodGet, "/session/"+query, nil, auth...)
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	var s sessionJSON
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &s))
	return s
}

func detail(t testing.TB, w *httptest.ResponseRecorder) string {
	t.Helper()
	require.Equal(t, "application/json", w.Header().Get("Content-Type"))
	var d struct {
		Detail *string `json:"detail"`
	}
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &d), w.Body.String())
	require.NotNil(t, d.Detail, "answer has no detail: %s", w.Body.String())
	return *d.Detail
}

func httptestRequest(ctx context.Context, target string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, target, nil).WithContext(ctx)
	for i := 0; i+1 < len(auth); i += 2 {
		r.Header.Set(auth[i], auth[i+1])
	}
	return r
}

func newDiscardWriter() http.ResponseWriter { return httptest.NewRecorder() }
