package gateway

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDataRoute(t *testing.T) {
	s := newServer(t, Config{Token: testToken})
	want, err := os.ReadFile(filepath.Join(demoDir, demoTableID, tableFile))
	require.NoError(t, err)
	fi, err := os.Stat(filepath.Join(demoDir, demoTableID, tableFile))
	require.NoError(t, err)
	tests := []struct {
		method, target string
		hdr            []string
		status         int
	}{
		{"GET", "/data/demo_table", append(append([]string{}, auth...), "Accept", "application/parquet"), 200},
		{"GET", "/data/demo_table", auth, 200},
		{"HEAD", "/data/demo_table", auth, 200},
		{"GET", "/data/demo_table", append(append([]string{}, auth...), "Accept", "text/csv"), 406},
		{"GET", "/data/demo_grid", auth, 415},
		{"GET", "/data/nothere", auth, 404},
		{"POST", "/data/demo_table", auth, 405},
		{"GET", "/data/demo_table", nil, 401},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.target+" "+strings.Join(tc.hdr[min(len(tc.hdr), 4):], " "), func(t *testing.T) {
			w := call(t, s, tc.method, tc.target, nil, tc.hdr...)
			require.Equal(t, tc.status, w.Code, w.Body.String())
			if tc.status != 200 {
				assert.NotEmpty(t, detail(t, w))
				return
			}
			assert.Equal(t, "application/parquet", w.Header().Get("Content-Type"))
			assert.Equal(t, strconv.Itoa(len(want)), w.Header().Get("Content-Length"))
			assert.Equal(t, fi.ModTime().UTC().Format(http.TimeFormat), w.Header().Get("Last-Modified"))
			if tc.method == "GET" {
				assert.Equal(t, want, w.Body.Bytes(), "the file's exact bytes")
			} else {
				assert.Empty(t, w.Body.Bytes())
			}
		})
	}
	// A table is no Zarr store, and is not written through /zarr/.
	sess := acquire(t, s, "").ID
	w := call(t, s, http.MethodGet, "/zarr/demo_table/.zmetadata", nil, withSession(sess)...)
	assert.Equal(t, 404, w.Code)
	assert.Contains(t, detail(t, w), "is a table")
	w = call(t, s, http.MethodPost, "/zarr/demo_table/x", strings.NewReader("x"), withSession(sess)...)
	assert.Equal(t, 400, w.Code)
	assert.Equal(t, int64(7), s.Counters().ByRoute[routeData], "every authenticated /data/ request")
}

// tableRow reads demo_table's columns back.
type tableRow struct {
	Time      time.Time `parquet:"time,timestamp(millisecond)"`
	Latitude  float64   `parquet:"latitude"`
	Longitude float64   `parquet:"longitude"`
	Station   string    `parquet:"station"`
	Value     float64   `parquet:"value"`
}

func TestTableQueries(t *testing.T) {
	s := newServer(t, Config{Token: testToken})
	sess := acquire(t, s, "").ID
	source, err := os.ReadFile(filepath.Join(demoDir, demoTableID, tableFile))
	require.NoError(t, err)
	all := demoTableRows()

	// The whole table: the datasource's exact bytes.
	w, st := stage(t, s, sess, `{"datasource":"demo_table"}`)
	require.Equal(t, 200, w.Code)
	assert.Equal(t, int64(len(all)), st.DLen)
	assert.Equal(t, int64(len(source)), st.Size)
	assert.Equal(t, []string{"parquet"}, st.Formats)
	assert.Equal(t, map[string]string{"t": "time", "x": "longitude", "y": "latitude"}, st.CoordMap)
	for _, target := range []string{"/oceanql/" + st.QHash + "?f=parquet", "/oceanql/" + st.QHash} {
		w = call(t, s, http.MethodGet, target, nil, auth...)
		require.Equal(t, 200, w.Code)
		assert.Equal(t, source, w.Body.Bytes())
		assert.Equal(t, "application/parquet", w.Header().Get("Content-Type"))
	}

	day2, day3 := time.Date(2020, 1, 2, 0, 0, 0, 0, time.UTC), time.Date(2020, 1, 3, 0, 0, 0, 0, time.UTC)
	inBox := func(r demoTableRow) bool {
		return r.Latitude >= -44 && r.Latitude <= -40 && r.Longitude >= 172 && r.Longitude <= 175
	}
	tests := []struct {
		name    string
		body    string
		columns []string
		keep    func(demoTableRow) bool
		limit   int
	}{
		{"time and bbox, one variable", `{"datasource":"demo_table","variables":["value"],"timefilter":{"times":["2020-01-02","2020-01-03"]},"geofilter":{"type":"bbox","geom":[172,-44,175,-40]}}`,
			[]string{"time", "latitude", "longitude", "value"},
			func(r demoTableRow) bool { return !r.Time.Before(day2) && !r.Time.After(day3) && inBox(r) }, 0},
		{"time only, open end", `{"datasource":"demo_table","timefilter":{"times":["2020-01-30T12:00:00Z",null]}}`,
			[]string{"time", "latitude", "longitude", "station", "value"},
			func(r demoTableRow) bool { return !r.Time.Before(day2.AddDate(0, 0, 28).Add(12 * time.Hour)) }, 0},
		{"variables only", `{"datasource":"demo_table","variables":["station"]}`,
			[]string{"time", "latitude", "longitude", "station"}, func(demoTableRow) bool { return true }, 0},
		{"bbox across the antimeridian", `{"datasource":"demo_table","geofilter":{"type":"bbox","geom":[174,-40,-170,-30]}}`,
			[]string{"time", "latitude", "longitude", "station", "value"},
			func(r demoTableRow) bool { return r.Latitude >= -40 && r.Longitude >= 174 }, 0},
		{"limit", `{"datasource":"demo_table","limit":10,"geofilter":{"type":"bbox","geom":[170,-50,180,-40]}}`,
			[]string{"time", "latitude", "longitude", "station", "value"},
			func(r demoTableRow) bool { return r.Latitude <= -40 }, 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w, st := stage(t, s, sess, tc.body)
			require.Equal(t, 200, w.Code, w.Body.String())
			assert.Equal(t, "dataframe", st.Container)
			var want []demoTableRow
			for _, r := range all {
				if tc.keep(r) && (tc.limit == 0 || len(want) < tc.limit) {
					want = append(want, r)
				}
			}
			require.NotEmpty(t, want)
			assert.Equal(t, int64(len(want)), st.DLen)

			w = call(t, s, http.MethodGet, "/oceanql/"+st.QHash+"?f=parquet", nil, auth...)
			require.Equal(t, 200, w.Code)
			body := w.Body.Bytes()
			assert.Equal(t, st.Size, int64(len(body)))
			pf, err := parquet.OpenFile(bytes.NewReader(body), int64(len(body)))
			require.NoError(t, err)
			var cols []string
			for _, f := range pf.Schema().Fields() {
				cols = append(cols, f.Name())
			}
			assert.Equal(t, tc.columns, cols, "the kept columns, in the file's order")
			got, err := parquet.Read[tableRow](bytes.NewReader(body), int64(len(body)))
			require.NoError(t, err)
			require.Len(t, got, len(want))
			for i, r := range want {
				assert.True(t, r.Time.Equal(got[i].Time), "row %d time %s != %s", i, got[i].Time, r.Time)
				assert.Equal(t, r.Latitude, got[i].Latitude)
				assert.Equal(t, r.Longitude, got[i].Longitude)
				if slicesContains(tc.columns, "station") {
					assert.Equal(t, r.Station, got[i].Station)
				}
				if slicesContains(tc.columns, "value") {
					assert.Equal(t, r.Value, got[i].Value)
				}
			}
		})
	}

	// Formats and routes.
	_, ds := stage(t, s, sess, `{"datasource":"demo_archive","variables":["sst"],"timefilter":{"times":["2016-01-01","2016-01-02"]}}`)
	for _, tc := range []struct {
		target string
		status int
		detail string
	}{
		{"/oceanql/" + st.QHash + "?f=csv", 415, "not available"},
		{"/oceanql/" + st.QHash + "?f=nc", 415, "not available"},
		{"/oceanql/" + st.QHash + "?f=xyz", 400, "unknown format"},
		{"/oceanql/" + strings.Repeat("0", 56) + "?f=parquet", 404, "Query not found"},
		{"/oceanql/" + ds.QHash + "?f=parquet", 415, "/zarr/query/" + ds.QHash},
	} {
		w := call(t, s, http.MethodGet, tc.target, nil, auth...)
		assert.Equal(t, tc.status, w.Code, tc.target)
		assert.Contains(t, detail(t, w), tc.detail)
	}
	w = call(t, s, http.MethodGet, "/zarr/query/"+st.QHash+"/.zmetadata", nil, withSession(sess)...)
	assert.Equal(t, 404, w.Code, "a table result is no Zarr store")

	// POST /oceanql/ answers a table query at once, as the Python client
	// asks; a dataset query is refused with where to read it.
	w = call(t, s, http.MethodPost, "/oceanql/", strings.NewReader(`{"datasource":"demo_table"}`),
		append(append([]string{}, auth...), "Accept", "application/parquet")...)
	require.Equal(t, 200, w.Code)
	assert.Equal(t, source, w.Body.Bytes())
	w = call(t, s, http.MethodPost, "/oceanql/", strings.NewReader(`{"datasource":"demo_grid"}`),
		append(append([]string{}, auth...), "Accept", "application/x-netcdf4")...)
	assert.Equal(t, 415, w.Code)
	w = call(t, s, http.MethodPost, "/oceanql/", strings.NewReader(`{"datasource":"demo_table","timefilter":{"times":["2030-01-01",null]}}`), auth...)
	assert.Equal(t, 204, w.Code)
}

// TestTableGeometryMarker: a geometry column or GeoParquet metadata makes
// a table a geodataframe.
func TestTableGeometryMarker(t *testing.T) {
	dir := t.TempDir()
	type geoRow struct {
		Name     string `parquet:"name"`
		Geometry []byte `parquet:"geometry"`
	}
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "shapes"), 0o755))
	f, err := os.Create(filepath.Join(dir, "shapes", tableFile))
	require.NoError(t, err)
	require.NoError(t, parquet.Write(f, []geoRow{{"a", []byte{1, 1, 0, 0, 0}}}))
	require.NoError(t, f.Close())
	s := newServer(t, Config{Dir: dir, Token: testToken})
	w := call(t, s, http.MethodGet, "/datasource/shapes", nil, auth...)
	require.Equal(t, 200, w.Code)
	var feat struct {
		Properties struct {
			Driver string         `json:"driver"`
			Schema map[string]any `json:"schema"`
		} `json:"properties"`
	}
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &feat))
	assert.Equal(t, "onsql", feat.Properties.Driver)
	assert.ElementsMatch(t, []string{"name", "geometry"}, keys(feat.Properties.Schema["data_vars"]))
	sess := acquire(t, s, "").ID
	w, st := stage(t, s, sess, `{"datasource":"shapes"}`)
	require.Equal(t, 200, w.Code)
	assert.Equal(t, "geodataframe", st.Container)
	w, _ = stage(t, s, sess, `{"datasource":"shapes","geofilter":{"type":"bbox","geom":[0,0,1,1]}}`)
	assert.Equal(t, 422, w.Code)
	assert.Contains(t, detail(t, w), "no latitude or lat column")
}

func slicesContains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// TestTableOptionalColumns: nullable columns, as pandas writes them, are
// filtered (a null never matches) and projected.
func TestTableOptionalColumns(t *testing.T) {
	type optRow struct {
		Time  *time.Time `parquet:"time,optional,timestamp(microsecond)"`
		Lat   *float64   `parquet:"lat,optional"`
		Lon   *float64   `parquet:"lon,optional"`
		Name  *string    `parquet:"name,optional"`
		Value *int64     `parquet:"value,optional"`
	}
	t0 := time.Date(2021, 5, 1, 0, 0, 0, 0, time.UTC)
	var rows []optRow
	for i := range 50 {
		r := optRow{Lat: ptr(float64(i) - 25), Lon: ptr(float64(i)), Value: ptr(int64(i))}
		if i%7 != 0 {
			r.Time = ptr(t0.Add(time.Duration(i) * time.Hour))
		}
		if i%2 == 0 {
			r.Name = ptr("n" + strconv.Itoa(i))
		}
		rows = append(rows, r)
	}
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "nullable"), 0o755))
	f, err := os.Create(filepath.Join(dir, "nullable", tableFile))
	require.NoError(t, err)
	require.NoError(t, parquet.Write(f, rows, parquet.Compression(&parquet.Zstd)))
	require.NoError(t, f.Close())
	s := newServer(t, Config{Dir: dir, Token: testToken})
	sess := acquire(t, s, "").ID
	w, st := stage(t, s, sess, `{"datasource":"nullable","variables":["name"],"timefilter":{"times":["2021-05-01T10:00:00Z","2021-05-01T20:00:00Z"]},"geofilter":{"type":"bbox","geom":[0,-20,15,0]}}`)
	require.Equal(t, 200, w.Code, w.Body.String())
	w = call(t, s, http.MethodGet, "/oceanql/"+st.QHash+"?f=parquet", nil, auth...)
	require.Equal(t, 200, w.Code)
	body := w.Body.Bytes()
	got, err := parquet.Read[optRow](bytes.NewReader(body), int64(len(body)))
	require.NoError(t, err)
	var want []int
	for i := 10; i <= 15; i++ { // lat <= 0 means i <= 25; lon <= 15; time 10..20 h; no null time (i%7 != 0)
		if i%7 != 0 {
			want = append(want, i)
		}
	}
	require.Len(t, got, len(want))
	for k, i := range want {
		assert.True(t, got[k].Time.Equal(t0.Add(time.Duration(i)*time.Hour)))
		assert.Equal(t, float64(i), *got[k].Lon)
		if i%2 == 0 {
			assert.Equal(t, "n"+strconv.Itoa(i), *got[k].Name)
		} else {
			assert.Nil(t, got[k].Name)
		}
		assert.Nil(t, got[k].Value, "not asked for")
	}
	pf, err := parquet.OpenFile(bytes.NewReader(body), int64(len(body)))
	require.NoError(t, err)
	var cols []string
	for _, c := range pf.Schema().Fields() {
		cols = append(cols, c.Name())
		assert.True(t, c.Optional(), c.Name())
	}
	assert.Equal(t, []string{"time", "lat", "lon", "name"}, cols)
}

// A client holding a copy of a table asks whether it changed: 304 while it
// has not, by ETag (which wins) or by Last-Modified.
func TestDataConditional(t *testing.T) {
	s := newServer(t, Config{Token: testToken})
	w := call(t, s, http.MethodGet, "/data/demo_table", nil, auth...)
	require.Equal(t, 200, w.Code)
	etag, modified := w.Header().Get("ETag"), w.Header().Get("Last-Modified")
	require.NotEmpty(t, etag)
	for _, tc := range []struct {
		name   string
		hdr    []string
		status int
	}{
		{"same etag", []string{"If-None-Match", etag}, 304},
		{"other etag", []string{"If-None-Match", `"other"`}, 200},
		{"other etag, same date: the etag wins", []string{"If-None-Match", `"other"`, "If-Modified-Since", modified}, 200},
		{"same date", []string{"If-Modified-Since", modified}, 304},
		{"older date", []string{"If-Modified-Since", "Mon, 01 Jan 2001 00:00:00 GMT"}, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := call(t, s, http.MethodGet, "/data/demo_table", nil, append(append([]string{}, auth...), tc.hdr...)...)
			assert.Equal(t, tc.status, w.Code)
			if tc.status == 304 {
				assert.Empty(t, w.Body.Bytes())
			}
		})
	}
}
