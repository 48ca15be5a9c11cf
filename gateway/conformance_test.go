package gateway

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// protocolClient sends requests the way the official Python client does.
type protocolClient struct {
	t       *testing.T
	base    string
	token   string
	session string
}

func (c *protocolClient) do(method, path string, body []byte, extra ...string) (*http.Response, []byte) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	require.NoError(c.t, err)
	if c.token != "" {
		req.Header.Set("X-DATAMESH-TOKEN", c.token)
		req.Header.Set("Authorization", "Token "+c.token)
	}
	if c.session != "" {
		req.Header.Set("X-DATAMESH-SESSIONID", c.session)
	}
	for i := 0; i+1 < len(extra); i += 2 {
		req.Header.Set(extra[i], extra[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	return resp, b
}

// TestProtocolConformance drives one whole session over real HTTP, as a
// client mounting a datasource would, and checks every status and field
// DESIGN.md §5 names.
func TestProtocolConformance(t *testing.T) {
	s := newServer(t, Config{Token: testToken})
	ts := httptest.NewServer(s)
	defer ts.Close()
	c := &protocolClient{t: t, base: ts.URL, token: testToken}

	// Acquire.
	resp, body := c.do(http.MethodGet, "/session/?duration=600&allow_multiwrite=false", nil, "Cache-Control", "no-store")
	require.Equal(t, 200, resp.StatusCode, string(body))
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var sess map[string]any
	require.NoError(t, json.Unmarshal(body, &sess))
	iso := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$`)
	for _, k := range []string{"creation_time", "end_time"} {
		assert.Regexp(t, iso, sess[k])
	}
	for _, k := range []string{"write", "allow_multiwrite", "verified"} {
		assert.IsType(t, true, sess[k], k)
	}
	assert.IsType(t, "", sess["user"])
	id, _ := sess["id"].(string)
	require.NotEmpty(t, id)
	c.session = id

	resp, body = c.do(http.MethodGet, "/session/"+id, nil)
	require.Equal(t, 200, resp.StatusCode)
	var again map[string]any
	require.NoError(t, json.Unmarshal(body, &again))
	assert.Equal(t, sess, again)

	// Catalog and one datasource.
	resp, body = c.do(http.MethodGet, "/datasource/?search=demo&limit=10", nil)
	require.Equal(t, 200, resp.StatusCode)
	var fc struct {
		Type     string            `json:"type"`
		Features []json.RawMessage `json:"features"`
	}
	require.NoError(t, json.Unmarshal(body, &fc))
	assert.Equal(t, "FeatureCollection", fc.Type)
	require.Len(t, fc.Features, 6) // demo_grid, demo_stations, demo_sparse, demo_archive, demo_large, demo_table
	for _, raw := range fc.Features {
		var f map[string]any
		require.NoError(t, json.Unmarshal(raw, &f))
		assert.Equal(t, "Feature", f["type"])
		assert.Contains(t, f, "geometry")
		props := f["properties"].(map[string]any)
		for _, k := range []string{"name", "driver", "description", "tstart", "tend", "schema"} {
			assert.Contains(t, props, k)
		}
		schema := props["schema"].(map[string]any)
		for _, k := range []string{"dims", "coords", "data_vars", "attrs"} {
			assert.Contains(t, schema, k)
		}
	}
	resp, body = c.do(http.MethodGet, "/datasource/demo_stations", nil)
	require.Equal(t, 200, resp.StatusCode)
	var st map[string]any
	require.NoError(t, json.Unmarshal(body, &st))
	assert.Equal(t, "demo_stations", st["id"])
	assert.Equal(t, "2020-01-30T23:00:00Z", st["properties"].(map[string]any)["tend"])
	resp, body = c.do(http.MethodGet, "/datasource/missing_one", nil)
	assert.Equal(t, 404, resp.StatusCode)
	assert.Contains(t, string(body), `"detail"`)

	// Consolidated metadata first, then chunks.
	resp, body = c.do(http.MethodGet, "/zarr/demo_stations/.zmetadata", nil)
	require.Equal(t, 200, resp.StatusCode)
	var zm struct {
		Format   int                        `json:"zarr_consolidated_format"`
		Metadata map[string]json.RawMessage `json:"metadata"`
	}
	require.NoError(t, json.Unmarshal(body, &zm))
	assert.Equal(t, 1, zm.Format)
	assert.Contains(t, zm.Metadata, "hs/.zarray")

	want, err := os.ReadFile(filepath.Join(demoDir, "demo_stations", "hs", "0.1"))
	require.NoError(t, err)
	resp, body = c.do(http.MethodHead, "/zarr/demo_stations/hs/0.1", nil)
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, int64(len(want)), resp.ContentLength)
	assert.Empty(t, body)
	resp, body = c.do(http.MethodGet, "/zarr/demo_stations/hs/0.1", nil)
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, strconv.Itoa(len(want)), resp.Header.Get("Content-Length"))
	assert.Equal(t, want, body)
	resp, _ = c.do(http.MethodGet, "/zarr/demo_stations/hs/0.9", nil)
	assert.Equal(t, 404, resp.StatusCode)

	resp, body = c.do(http.MethodGet, "/zarr/demo_stations/", nil)
	require.Equal(t, 200, resp.StatusCode)
	assert.Contains(t, string(body), `<a href="hs/">`)

	// Without the session header: 401 "Session ID required".
	saved := c.session
	c.session = ""
	resp, body = c.do(http.MethodGet, "/zarr/demo_stations/.zmetadata", nil)
	assert.Equal(t, 401, resp.StatusCode)
	assert.JSONEq(t, `{"detail":"Session ID required"}`, string(body))
	c.session = saved

	// Close: the JSON-body client sends no token.
	token := c.token
	c.token = ""
	resp, body = c.do(http.MethodDelete, "/session/"+id, []byte(`{"finalise_write": false}`), "Content-Type", "application/json")
	assert.Equal(t, 204, resp.StatusCode, string(body))
	c.token = token
	resp, body = c.do(http.MethodDelete, "/session/"+id+"?finalise_write=false", nil)
	assert.Equal(t, 404, resp.StatusCode)
	assert.JSONEq(t, `{"detail":"Session not found"}`, string(body))
	resp, _ = c.do(http.MethodGet, "/zarr/demo_stations/.zmetadata", nil)
	assert.Equal(t, 401, resp.StatusCode)

	cnt := s.Counters()
	assert.Equal(t, SessionCounters{Acquired: 1, Closed: 1, Open: 0}, cnt.Sessions)
	assert.Equal(t, int64(1), cnt.ZarrKeys["demo_stations/hs/0.1 GET"])
	assert.Equal(t, int64(1), cnt.ZarrKeys["demo_stations/hs/0.1 HEAD"])
	assert.Equal(t, int64(1), cnt.ZarrWithoutSession)

	// The counters endpoint over HTTP needs the token like every endpoint.
	c.session = ""
	resp, body = c.do(http.MethodGet, "/_dmfs/counters", nil)
	require.Equal(t, 200, resp.StatusCode)
	var viaHTTP Counters
	require.NoError(t, json.Unmarshal(body, &viaHTTP))
	assert.Equal(t, cnt.Requests, viaHTTP.Requests)
	c.token = ""
	resp, body = c.do(http.MethodGet, "/_dmfs/counters", nil)
	assert.Equal(t, 401, resp.StatusCode)
	assert.JSONEq(t, `{"detail":"Authentication credentials were not provided."}`, string(body))
}
