package session

import (
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const catalogJSON = `{
 "type": "FeatureCollection",
 "features": [
  {"type": "Feature", "id": "era5_wind10m", "geometry": {"type": "Point", "coordinates": [1, 2]},
   "properties": {"name": "ERA5 wind", "description": "10 m wind", "driver": "zarr",
     "tstart": "1979-01-01T00:00:00Z", "tend": "2020-12-31T23:00:00", "schema": {"dims": {}}, "tags": ["x"]}},
  {"type": "Feature", "geometry": null, "properties": {"id": "from_props", "name": "P", "tstart": null}},
  {"type": "Feature", "id": "..", "properties": {"name": "skipped: not a name"}},
  {"type": "Feature", "id": "a/b", "properties": {"name": "skipped: a slash"}},
  {"type": "Feature", "properties": {"name": "no id at all"}},
  {"type": "Feature", "id": "era5.wind", "properties": {"name": "dotted", "modified": "2024-05-06T07:08:09.5+02:00"}},
  {"type": "Feature", "id": "UPPER", "properties": {"modified": "last tuesday"}},
  {"type": "Feature", "id": "a b", "properties": {"modified": null}}
 ]
}`

func TestCatalog(t *testing.T) {
	var got *http.Request
	srv := newHandlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		got = r.Clone(r.Context())
		_, _ = w.Write([]byte(catalogJSON))
	})
	var logs logBuffer
	c := newTestClient(t, testConfig(srv, &logs))

	list, err := c.Catalog(t.Context(), Query{Search: "wind speed", Limit: 20})
	require.NoError(t, err)
	require.NotNil(t, got)
	assert.Equal(t, "/datasource/", got.URL.Path)
	assert.Equal(t, "wind speed", got.URL.Query().Get("search"))
	assert.Equal(t, "20", got.URL.Query().Get("limit"))
	assert.Equal(t, "Token "+testToken, got.Header.Get("Authorization"))

	tstart := time.Date(1979, 1, 1, 0, 0, 0, 0, time.UTC)
	tend := time.Date(2020, 12, 31, 23, 0, 0, 0, time.UTC)
	require.Len(t, list, 5)
	assert.Equal(t, Datasource{ID: "era5_wind10m", Name: "ERA5 wind", Description: "10 m wind", Driver: "zarr",
		TStart: &tstart, TEnd: &tend, Geometry: json.RawMessage(`{"type": "Point", "coordinates": [1, 2]}`),
		Tags: []string{"x"}, BBox: []float64{1, 2, 1, 2}}, list[0])
	assert.Equal(t, Datasource{ID: "from_props", Name: "P"}, list[1])
	assert.Equal(t, Datasource{ID: "era5.wind", Name: "dotted",
		Modified: time.Date(2024, 5, 6, 5, 8, 9, 500_000_000, time.UTC)}, list[2])
	assert.Equal(t, Datasource{ID: "UPPER"}, list[3], "unreadable modified: zero")
	assert.Equal(t, Datasource{ID: "a b"}, list[4])
	assert.Contains(t, logs.String(), `id=..`, "skipped entries are logged")
	assert.Contains(t, logs.String(), `id=a/b`, "skipped entries are logged")

	_, err = c.Catalog(t.Context(), Query{})
	require.NoError(t, err)
	assert.Empty(t, got.URL.RawQuery, "no empty parameters")
}

func TestCatalogBadBody(t *testing.T) {
	srv := newHandlerServer(t, func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(`<html>`)) })
	c := newTestClient(t, testConfig(srv, nil))
	_, err := c.Catalog(t.Context(), Query{})
	assert.ErrorContains(t, err, "FeatureCollection")
}

func TestDatasource(t *testing.T) {
	tests := []struct {
		name, id  string
		wantPath  string // escaped; "" = /datasource/ID
		status    int
		body      string
		want      Datasource
		wantErr   string
		notExist  bool
		wantCalls int
	}{
		{
			name: "found", id: "era5_wind10m", status: 200,
			body: `{"type":"Feature","id":"era5_wind10m","geometry":null,"properties":{"name":"E","driver":"zarr","extra":1}}`,
			want: Datasource{ID: "era5_wind10m", Name: "E", Driver: "zarr"}, wantCalls: 1,
		},
		{
			name: "id only in properties", id: "abc", status: 200,
			body: `{"properties":{"id":"abc","tend":"2001-02-03"}}`,
			want: Datasource{ID: "abc", TEnd: ptr(time.Date(2001, 2, 3, 0, 0, 0, 0, time.UTC))}, wantCalls: 1,
		},
		{
			name: "not found", id: "nope_nope", status: 404, body: `{"detail":"Datasource nope_nope not found"}`,
			wantErr: "Datasource nope_nope not found", notExist: true, wantCalls: 1,
		},
		{
			name: "modified", id: "abc", status: 200,
			body: `{"properties":{"modified":"2023-01-02T03:04:05Z"}}`,
			want: Datasource{ID: "abc", Modified: time.Date(2023, 1, 2, 3, 4, 5, 0, time.UTC)}, wantCalls: 1,
		},
		{name: "dotted id", id: "era5.wind", status: 200, body: `{"id":"era5.wind"}`,
			want: Datasource{ID: "era5.wind"}, wantCalls: 1},
		{name: "upper case id", id: "UPPER", status: 200, body: `{"id":"UPPER"}`,
			want: Datasource{ID: "UPPER"}, wantCalls: 1},
		{name: "id with a space, escaped", id: "a b", wantPath: "/datasource/a%20b", status: 200, body: `{"id":"a b"}`,
			want: Datasource{ID: "a b"}, wantCalls: 1},
		{name: "id with a percent, escaped", id: "x%2Fy", wantPath: "/datasource/x%252Fy", status: 200, body: `{}`,
			want: Datasource{ID: "x%2Fy"}, wantCalls: 1},
		{name: "slash never sent", id: "../session", wantErr: "datasource id", wantCalls: 0},
		{name: "dot-dot never sent", id: "..", wantErr: "datasource id", wantCalls: 0},
		{name: "256 bytes never sent", id: strings.Repeat("x", 256), wantErr: "datasource id", wantCalls: 0},
		{name: "255 bytes sent", id: strings.Repeat("x", 255), status: 200, body: `{}`,
			want: Datasource{ID: strings.Repeat("x", 255)}, wantCalls: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			srv := newHandlerServer(t, func(w http.ResponseWriter, r *http.Request) {
				calls++
				want := tt.wantPath
				if want == "" {
					want = "/datasource/" + tt.id
				}
				assert.Equal(t, want, r.URL.EscapedPath())
				w.WriteHeader(tt.status)
				_, _ = w.Write([]byte(tt.body))
			})
			c := newTestClient(t, testConfig(srv, nil))
			ds, err := c.Datasource(t.Context(), tt.id)
			assert.Equal(t, tt.wantCalls, calls)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Equal(t, tt.notExist, errors.Is(err, fs.ErrNotExist))
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, ds)
		})
	}
}

func ptr[T any](v T) *T { return &v }
