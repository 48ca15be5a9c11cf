package gateway

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseQuery(t *testing.T) {
	now := time.Date(2024, 3, 10, 12, 30, 15, 500, time.UTC)
	ts := func(s string) string { return s }
	tests := []struct {
		name  string
		body  string
		times []any // normalised [start, end]; nil: no time filter
		vars  []string
	}{
		{"date", `{"datasource":"abc","timefilter":{"type":"range","times":["2020-01-01","2020-02-01"]}}`,
			[]any{ts("2020-01-01T00:00:00Z"), ts("2020-02-01T00:00:00Z")}, nil},
		{"datetime without zone is UTC", `{"datasource":"abc","timefilter":{"times":["2020-01-01T06:30:00","2020-01-01 07:00"]}}`,
			[]any{ts("2020-01-01T06:30:00Z"), ts("2020-01-01T07:00:00Z")}, nil},
		{"zones", `{"datasource":"abc","timefilter":{"times":["2020-01-01T12:00:00+12:00","2020-01-01T00:00:00.25Z"]}}`,
			[]any{ts("2020-01-01T00:00:00Z"), ts("2020-01-01T00:00:00.25Z")}, nil},
		{"open ends", `{"datasource":"abc","timefilter":{"type":"range","times":[null,"2020"]}}`,
			[]any{nil, ts("2020-01-01T00:00:00Z")}, nil},
		{"periods", `{"datasource":"abc","timefilter":{"times":["-P7D","P1D"]}}`,
			[]any{ts("2024-03-03T12:30:15Z"), ts("2024-03-11T12:30:15Z")}, nil},
		{"period with time", `{"datasource":"abc","timefilter":{"times":["-PT6H","-P1DT1H30M"]}}`,
			[]any{ts("2024-03-10T06:30:15Z"), ts("2024-03-09T11:00:15Z")}[0:1], nil},
		{"both null: no filter", `{"datasource":"abc","timefilter":{"type":"range","times":[null,null]}}`, nil, nil},
		{"pydantic dump", `{"datasource":"abc","parameters":{},"description":null,"variables":["b","a","b"],"timefilter":null,
			"geofilter":null,"levelfilter":null,"coordfilter":null,"crs":null,"aggregate":null,"functions":[],"limit":null,"id":null}`,
			nil, []string{"a", "b"}},
		{"empty variables: all", `{"datasource":"abc","variables":[]}`, nil, nil},
		{"years and months", `{"datasource":"abc","timefilter":{"times":["-P1Y2M","PT0S"]}}`,
			[]any{ts("2023-01-10T12:30:15Z"), ts("2024-03-10T12:30:15Z")}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q, qerr := parseQuery([]byte(tc.body), now)
			if tc.name == "period with time" {
				// Start after end is refused: -PT6H is later than -P1DT1H30M.
				require.NotNil(t, qerr)
				assert.Contains(t, qerr.detail, "after end")
				return
			}
			require.Nil(t, qerr)
			n := q.normalised()
			assert.Equal(t, tc.vars, n.Variables)
			if tc.times == nil {
				assert.Nil(t, n.TimeFilter)
				return
			}
			require.NotNil(t, n.TimeFilter)
			assert.Equal(t, "range", n.TimeFilter.Type)
			for i, want := range tc.times {
				got := n.TimeFilter.Times[i]
				if want == nil {
					assert.Nil(t, got)
				} else {
					require.NotNil(t, got)
					assert.Equal(t, want, *got)
				}
			}
		})
	}

	bad := []struct {
		body   string
		status int
		detail string
	}{
		{`not json`, 400, "not a JSON object"},
		{`[1]`, 400, "not a JSON object"},
		{`{}`, 422, "datasource is required"},
		{`{"datasource":"abc","bogus":1}`, 422, `unknown field "bogus"`},
		{`{"datasource":"abc","timefilter":{"times":["yesterday",null]}}`, 422, "neither an ISO 8601 time nor"},
		{`{"datasource":"abc","timefilter":{"times":["2020-01-01"]}}`, 422, "exactly 2 times"},
		{`{"datasource":"abc","timefilter":{"type":"series","times":["2020-01-01"]}}`, 422, `type "series" is not supported`},
		{`{"datasource":"abc","timefilter":{"times":["P","2020"]}}`, 422, "ISO 8601 period"},
		{`{"datasource":"abc","timefilter":{"times":["P1.5Y","2020"]}}`, 422, "whole"},
		{`{"datasource":"abc","timefilter":{"times":["2021-01-01","2020-01-01"]}}`, 422, "after end"},
		{`{"datasource":"abc","timefilter":{"times":[null,null],"resolution":"1D"}}`, 422, "resolution"},
		{`{"datasource":"abc","geofilter":{"type":"bbox","geom":[1,2,3]}}`, 422, "4 numbers"},
		{`{"datasource":"abc","geofilter":{"type":"bbox","geom":[1,20,3,10]}}`, 422, "south 20 is above north 10"},
		{`{"datasource":"abc","geofilter":{"type":"bbox","geom":"x"}}`, 422, "4 numbers"},
		{`{"datasource":"abc","geofilter":{"type":"feature","geom":{"type":"Feature"}}}`, 422, `type "feature" is not supported`},
		{`{"datasource":"abc","levelfilter":{"levels":[10,0]}}`, 422, "low 10 is above high 0"},
		{`{"datasource":"abc","levelfilter":{"levels":[1,2,3]}}`, 422, "exactly 2 levels"},
		{`{"datasource":"abc","aggregate":{"operations":["mean"]}}`, 422, "aggregate"},
		{`{"datasource":"abc","functions":[{"id":"f","args":{}}]}`, 422, "functions"},
		{`{"datasource":"abc","parameters":{"x":1}}`, 422, "parameters"},
		{`{"datasource":"abc","crs":"EPSG:2193"}`, 422, "crs"},
		{`{"datasource":"abc","variables":"u10"}`, 422, "variables"},
		{`{"datasource":"abc","coordfilter":[{"coord":"station","values":["a"]}]}`, 422, "numeric values only"},
		{`{"datasource":"abc","limit":-1}`, 422, "limit"},
	}
	for _, tc := range bad {
		t.Run(tc.body, func(t *testing.T) {
			_, qerr := parseQuery([]byte(tc.body), now)
			require.NotNil(t, qerr)
			assert.Equal(t, tc.status, qerr.status)
			assert.Contains(t, qerr.detail, tc.detail)
		})
	}
}

func TestLonInside(t *testing.T) {
	for _, tc := range []struct {
		x, w, e float64
		in      bool
	}{
		{5, 0, 10, true}, {0, 0, 10, true}, {10, 0, 10, true}, {11, 0, 10, false},
		{355, -10, 10, true}, {350, -10, 10, true}, {349, -10, 10, false}, // a -180..180 box on a 0..360 store
		{-170, 170, -160, true}, {175, 170, -160, true}, {0, 170, -160, false}, // across the antimeridian
		{200, -170, -150, true}, {123, -180, 180, true}, {math.NaN(), -180, 180, false},
	} {
		assert.Equal(t, tc.in, lonInside(tc.x, tc.w, tc.e), "%g in [%g, %g]", tc.x, tc.w, tc.e)
	}
}

// stage posts a query and returns the answer and, for a 200, the Stage.
func stage(t testing.TB, h http.Handler, sess, body string) (*httptest.ResponseRecorder, stageJSON) {
	t.Helper()
	w := call(t, h, http.MethodPost, "/oceanql/stage/", strings.NewReader(body), withSession(sess)...)
	var st stageJSON
	if w.Code == 200 {
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &st), w.Body.String())
	}
	return w, st
}

// queryFixture adds hand-made stores to dir: "levels" (a level
// coordinate, gzip, no compressor, Fortran order, a fill value, and an
// array compressed with a codec the gateway cannot decode), "v3store" from
// fixtureDir, a table with a geometry column, and a store whose
// datasource.json makes its driver "onsql".
func queryFixture(t testing.TB) string {
	t.Helper()
	dir := fixtureDir(t)
	lv := filepath.Join(dir, "levels")
	meta := map[string]any{
		".zgroup": map[string]any{"zarr_format": 2},
		".zattrs": map[string]any{"title": "Levels"},
	}
	arr := func(name string, shape, chunks []int, dtype string, comp any, fill any, order string, dims []string, attrs map[string]any) {
		meta[name+"/.zarray"] = map[string]any{"zarr_format": 2, "shape": shape, "chunks": chunks, "dtype": dtype,
			"compressor": comp, "fill_value": fill, "order": order, "filters": nil}
		za := map[string]any{"_ARRAY_DIMENSIONS": dims}
		for k, v := range attrs {
			za[k] = v
		}
		meta[name+"/.zattrs"] = za
	}
	arr("level", []int{4}, []int{4}, "<f8", nil, nil, "C", []string{"level"}, map[string]any{"units": "m"})
	arr("y", []int{3}, []int{3}, "<i4", nil, nil, "C", []string{"y"}, nil)
	arr("temp", []int{4, 3}, []int{3, 2}, "<f4", map[string]any{"id": "gzip", "level": 5}, -1.0, "C", []string{"level", "y"},
		map[string]any{"units": "K"})
	arr("tempF", []int{4, 3}, []int{3, 2}, "<f4", nil, -1.0, "F", []string{"level", "y"}, nil)
	arr("packed", []int{4, 3}, []int{4, 3}, "<f4", map[string]any{"id": "blosc", "cname": "lz4"}, nil, "C", []string{"level", "y"}, nil)
	for key, doc := range meta {
		b, err := json.Marshal(doc)
		require.NoError(t, err)
		writeFile(t, filepath.Join(lv, filepath.FromSlash(key)), string(b))
	}
	cons, err := json.Marshal(map[string]any{"zarr_consolidated_format": 1, "metadata": meta})
	require.NoError(t, err)
	writeFile(t, filepath.Join(lv, ".zmetadata"), string(cons))
	writeFile(t, filepath.Join(lv, "level", "0"), string(f64le(0, 10, 20, 50)))
	writeFile(t, filepath.Join(lv, "y", "0"), string(binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(
		binary.LittleEndian.AppendUint32(nil, 7), 8), 9)))
	// temp and tempF hold 10*level index + y, chunks (3, 2); C order for
	// temp (gzip), F order for tempF (raw).
	for ci := range 2 {
		for cj := range 2 {
			var c, f []float32
			for a := range 3 {
				for b := range 2 {
					i, j := ci*3+a, cj*2+b
					v := float32(-1)
					if i < 4 && j < 3 {
						v = float32(10*i + j)
					}
					c = append(c, v)
				}
			}
			for b := range 2 {
				for a := range 3 {
					i, j := ci*3+a, cj*2+b
					v := float32(-1)
					if i < 4 && j < 3 {
						v = float32(10*i + j)
					}
					f = append(f, v)
				}
			}
			key := fmt.Sprintf("%d.%d", ci, cj)
			var gz bytes.Buffer
			zw := gzip.NewWriter(&gz)
			_, _ = zw.Write(f32le(c...))
			require.NoError(t, zw.Close())
			writeFile(t, filepath.Join(lv, "temp", key), gz.String())
			writeFile(t, filepath.Join(lv, "tempF", key), string(f32le(f...)))
		}
	}
	writeFile(t, filepath.Join(lv, "packed", "0.0"), "not really blosc")

	// A Zarr store that says it is served by another driver.
	require.NoError(t, os.CopyFS(filepath.Join(dir, "disguised"), os.DirFS(filepath.Join(demoDir, demoStationsID))))
	writeFile(t, filepath.Join(dir, "disguised", overridesFile), `{"driver":"onsql","name":"Disguised","tags":["x"]}`)
	// A store whose datasource.json has a typo: skipped.
	require.NoError(t, os.CopyFS(filepath.Join(dir, "typo"), os.DirFS(filepath.Join(demoDir, demoSparseID))))
	writeFile(t, filepath.Join(dir, "typo", overridesFile), `{"drivr":"onsql"}`)
	// A table copied from the demo, marked geodataframe.
	require.NoError(t, os.CopyFS(filepath.Join(dir, "geo_table"), os.DirFS(filepath.Join(demoDir, demoTableID))))
	writeFile(t, filepath.Join(dir, "geo_table", overridesFile), `{"container":"geodataframe"}`)
	return dir
}

func f64le(vs ...float64) []byte {
	out := make([]byte, 0, 8*len(vs))
	for _, v := range vs {
		out = binary.LittleEndian.AppendUint64(out, math.Float64bits(v))
	}
	return out
}

func TestStageAnswers(t *testing.T) {
	s := newServer(t, Config{Dir: queryFixture(t), Token: testToken})
	demo := newServer(t, Config{Token: testToken})
	sess, dsess := acquire(t, s, "").ID, acquire(t, demo, "").ID
	tests := []struct {
		name      string
		srv       *Server
		sess      string
		body      string
		status    int
		detail    string // a 4xx's detail contains it
		container string // a 200's container
	}{
		{"whole dataset", demo, dsess, `{"datasource":"demo_grid"}`, 200, "", "dataset"},
		{"pydantic-style whole", demo, dsess, `{"datasource":"demo_archive","parameters":{},"variables":null,"timefilter":null,"functions":[],"id":null}`, 200, "", "dataset"},
		{"whole table", demo, dsess, `{"datasource":"demo_table"}`, 200, "", "dataframe"},
		{"geo table", s, sess, `{"datasource":"geo_table"}`, 200, "", "geodataframe"},
		{"driver says otherwise", s, sess, `{"datasource":"disguised"}`, 200, "", "dataset"},
		{"whole v3", s, sess, `{"datasource":"v3store"}`, 200, "", "dataset"},
		{"subset", demo, dsess, `{"datasource":"demo_archive","variables":["sst"],"timefilter":{"times":["2016-01-01","2016-01-31"]}}`, 200, "", "dataset"},
		{"levels", s, sess, `{"datasource":"levels","variables":["temp","tempF"],"levelfilter":{"type":"range","levels":[5,25]}}`, 200, "", "dataset"},
		{"undecodable kept whole", s, sess, `{"datasource":"levels","variables":["packed"]}`, 200, "", "dataset"},
		{"no data: time", demo, dsess, `{"datasource":"demo_archive","timefilter":{"times":["2030-01-01",null]}}`, 204, "", ""},
		{"no data: bbox", demo, dsess, `{"datasource":"demo_stations","geofilter":{"type":"bbox","geom":[0,0,10,10]}}`, 204, "", ""},
		{"no data: table", demo, dsess, `{"datasource":"demo_table","timefilter":{"times":["2030-01-01",null]}}`, 204, "", ""},
		{"no data: level", s, sess, `{"datasource":"levels","levelfilter":{"levels":[11,19]},"variables":["temp"]}`, 204, "", ""},
		{"no session", demo, "", `{"datasource":"demo_grid"}`, 401, "Session ID required", ""},
		{"unknown session", demo, "nope", `{"datasource":"demo_grid"}`, 401, "Session not found", ""},
		{"malformed JSON", demo, dsess, `{"datasource":`, 400, "not a JSON object", ""},
		{"unknown datasource", demo, dsess, `{"datasource":"nothere"}`, 404, `"nothere" not found`, ""},
		{"unknown variable", demo, dsess, `{"datasource":"demo_grid","variables":["u10","nope"]}`, 422, `variable "nope" not found`, ""},
		{"unknown table column", demo, dsess, `{"datasource":"demo_table","variables":["nope"]}`, 422, `variable "nope" not found in table`, ""},
		{"malformed time", demo, dsess, `{"datasource":"demo_grid","timefilter":{"times":["2020-13-45",null]}}`, 422, "ISO 8601", ""},
		{"malformed bbox", demo, dsess, `{"datasource":"demo_grid","geofilter":{"type":"bbox","geom":[0,0,1]}}`, 422, "4 numbers", ""},
		{"no time coordinate", demo, dsess, `{"datasource":"demo_sparse","timefilter":{"times":["2020-01-01",null]}}`, 422, "no time coordinate", ""},
		{"no lat/lon", demo, dsess, `{"datasource":"demo_sparse","geofilter":{"type":"bbox","geom":[0,0,1,1]}}`, 422, "no 1-D lat/lon", ""},
		{"no level", demo, dsess, `{"datasource":"demo_grid","levelfilter":{"levels":[0,1]}}`, 422, "no 1-D level, lev or depth", ""},
		{"table without level", demo, dsess, `{"datasource":"demo_table","levelfilter":{"levels":[0,1]}}`, 422, "no level or lev or depth column", ""},
		{"codec cannot be decoded", s, sess, `{"datasource":"levels","levelfilter":{"levels":[5,25]}}`, 422, `compressor "blosc" cannot be decoded`, ""},
		{"v3 subset", s, sess, `{"datasource":"v3store","variables":["lat"]}`, 422, "Zarr v2 stores only", ""},
		{"limit on a dataset", demo, dsess, `{"datasource":"demo_grid","limit":10}`, 422, "limit applies to tables", ""},
		{"aggregate", demo, dsess, `{"datasource":"demo_grid","aggregate":{"operations":["mean"]}}`, 422, "aggregate", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w, st := stage(t, tc.srv, tc.sess, tc.body)
			require.Equal(t, tc.status, w.Code, w.Body.String())
			switch {
			case tc.status == 200:
				assert.Equal(t, tc.container, st.Container)
				assert.Regexp(t, `^[0-9a-f]{56}$`, st.QHash)
				assert.NotEmpty(t, st.Sig)
				assert.NotEmpty(t, st.Formats)
				assert.Positive(t, st.DLen)
				var q map[string]any
				require.NoError(t, json.Unmarshal(w.Body.Bytes(), &q))
				for _, k := range []string{"query", "qhash", "formats", "size", "dlen", "coordmap", "coordkeys", "container", "sig"} {
					assert.Contains(t, q, k)
				}
			case tc.status == 204:
				assert.Empty(t, w.Body.Bytes())
			default:
				assert.Contains(t, detail(t, w), tc.detail)
			}
		})
	}
	// Only POST stages.
	w := call(t, demo, http.MethodGet, "/oceanql/stage/", nil, withSession(dsess)...)
	assert.Equal(t, 405, w.Code)

	// A datasource.json sets the catalog's properties; one with an
	// unknown field is refused, with its datasource.
	w = call(t, s, http.MethodGet, "/datasource/disguised", nil, auth...)
	require.Equal(t, 200, w.Code)
	var f struct {
		Properties map[string]any `json:"properties"`
	}
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &f))
	assert.Equal(t, "onsql", f.Properties["driver"])
	assert.Equal(t, "Disguised", f.Properties["name"])
	assert.Equal(t, []any{"x"}, f.Properties["tags"])
	assert.Equal(t, 404, call(t, s, http.MethodGet, "/datasource/typo", nil, auth...).Code)
	// It is no key of the store.
	w = call(t, s, http.MethodGet, "/zarr/disguised/", nil, withSession(sess)...)
	require.Equal(t, 200, w.Code)
	assert.NotContains(t, w.Body.String(), overridesFile)
	assert.Contains(t, w.Body.String(), ".zmetadata")
	assert.Equal(t, 404, call(t, s, http.MethodGet, "/zarr/disguised/"+overridesFile, nil, withSession(sess)...).Code)
	w = call(t, s, http.MethodGet, "/datasource/geo_table", nil, auth...)
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &f))
	assert.Equal(t, "onsql", f.Properties["driver"])

	// Stages are counted per normalised query, whatever the answer.
	c := demo.Counters()
	assert.Equal(t, int64(1), c.Stages["demo_archive@time=2016-01-01T00:00:00Z,2016-01-31T00:00:00Z@vars=sst"])
	assert.Equal(t, int64(1), c.Stages["demo_grid"], "bodies that do not parse are not counted here")
	assert.Equal(t, int64(1), c.Stages["demo_grid@vars=nope,u10"])
	assert.Equal(t, int64(1), c.Stages["nothere"])
}

func TestStageQhashStable(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.CopyFS(filepath.Join(dir, demoArchiveID), os.DirFS(filepath.Join(demoDir, demoArchiveID))))
	require.NoError(t, os.CopyFS(filepath.Join(dir, demoTableID), os.DirFS(filepath.Join(demoDir, demoTableID))))
	qdir := t.TempDir()
	s := newServer(t, Config{Dir: dir, Token: testToken, QueryDir: qdir})
	sess := acquire(t, s, "").ID
	body := `{"datasource":"demo_archive","variables":["swh","sst"],"timefilter":{"times":["2017-06-01","2017-06-30"]},"geofilter":{"type":"bbox","geom":[0,-30,90,30]}}`
	w, first := stage(t, s, sess, body)
	require.Equal(t, 200, w.Code)
	meta := filepath.Join(qdir, first.QHash, ".zmetadata")
	fi1, err := os.Stat(meta)
	require.NoError(t, err)

	// The same query again, and written otherwise: same qhash, nothing
	// computed again.
	for _, again := range []string{body,
		`{"datasource":"demo_archive","variables":["sst","swh","sst"],"timefilter":{"type":"range","times":["2017-06-01T00:00:00Z","2017-06-30 00:00"]},"geofilter":{"type":"bbox","geom":[0,-30,90,30]}}`,
	} {
		w, st := stage(t, s, sess, again)
		require.Equal(t, 200, w.Code)
		assert.Equal(t, first.QHash, st.QHash)
		fi2, err := os.Stat(meta)
		require.NoError(t, err)
		assert.Equal(t, fi1.ModTime(), fi2.ModTime(), "not materialised again")
	}
	// Another selection, another qhash.
	w, other := stage(t, s, sess, strings.Replace(body, "2017-06-30", "2017-07-01", 1))
	require.Equal(t, 200, w.Code)
	assert.NotEqual(t, first.QHash, other.QHash)

	// A changed source: a new qhash, though the query is the same.
	chunk := filepath.Join(dir, demoArchiveID, "sst", "14.0.0")
	later := time.Now().Add(time.Hour)
	require.NoError(t, os.Chtimes(chunk, later, later))
	w, changed := stage(t, s, sess, body)
	require.Equal(t, 200, w.Code)
	assert.NotEqual(t, first.QHash, changed.QHash)

	// Tables too: same query, same qhash; the whole table is the
	// datasource itself, nothing copied.
	tbody := `{"datasource":"demo_table","variables":["value"],"timefilter":{"times":["2020-01-05",null]}}`
	_, t1 := stage(t, s, sess, tbody)
	_, t2 := stage(t, s, sess, tbody)
	assert.Equal(t, t1.QHash, t2.QHash)
	_, whole := stage(t, s, sess, `{"datasource":"demo_table"}`)
	assert.NoFileExists(t, filepath.Join(qdir, whole.QHash+".parquet"))
	_, wholeDS := stage(t, s, sess, `{"datasource":"demo_archive"}`)
	assert.NoDirExists(t, filepath.Join(qdir, wholeDS.QHash), "a whole dataset is not copied")

	// Many stagers of one new query at once: one result.
	var wg sync.WaitGroup
	hashes := make([]string, 8)
	for i := range hashes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w, st := stage(t, s, sess, `{"datasource":"demo_archive","variables":["sst"],"geofilter":{"type":"bbox","geom":[-60,-60,60,60]}}`)
			if w.Code == 200 {
				hashes[i] = st.QHash
			}
		}()
	}
	wg.Wait()
	for _, h := range hashes {
		assert.Equal(t, hashes[0], h)
	}
	entries, err := os.ReadDir(qdir)
	require.NoError(t, err)
	for _, e := range entries {
		assert.False(t, strings.HasPrefix(e.Name(), ".tmp-"), "no temporary result left: %s", e.Name())
	}

	// A new server over the same query folder serves what is there.
	s2 := newServer(t, Config{Dir: dir, Token: testToken, QueryDir: qdir})
	sess2 := acquire(t, s2, "").ID
	for _, h := range []string{first.QHash, changed.QHash} {
		w = call(t, s2, http.MethodGet, "/zarr/query/"+h+"/.zmetadata", nil, withSession(sess2)...)
		assert.Equal(t, 200, w.Code)
	}
	// Staged again there, the Stage is whole (sizes, coordinates).
	w, again := stage(t, s2, sess2, body)
	require.Equal(t, 200, w.Code)
	assert.Equal(t, changed.QHash, again.QHash)
	assert.Equal(t, changed.Size, again.Size)
	assert.Positive(t, again.Size)
	assert.Equal(t, map[string]string{"t": "time", "x": "lon", "y": "lat"}, again.CoordMap)

	// A query folder inside DIR would become datasources: refused.
	_, err = New(Config{Dir: dir, QueryDir: filepath.Join(dir, "queries")})
	assert.ErrorContains(t, err, "inside the datasource folder")
}

// zarrRead decodes an array of float32 from a Zarr v2 store on disk: its
// shape, chunks and values in C order (absent chunks read as fill). It is
// written apart from the gateway's code, as a reader would be.
func zarrRead(t testing.TB, store, name string) (shape, chunks []int, vals []float32) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(store, name, ".zarray"))
	require.NoError(t, err)
	var z struct {
		Shape      []int `json:"shape"`
		Chunks     []int `json:"chunks"`
		Dtype      string
		Order      string
		Compressor *struct{ ID string }
		FillValue  any    `json:"fill_value"`
		Sep        string `json:"dimension_separator"`
	}
	require.NoError(t, json.Unmarshal(raw, &z))
	require.Equal(t, "<f4", z.Dtype)
	fill := float32(math.NaN())
	if f, ok := z.FillValue.(float64); ok {
		fill = float32(f)
	}
	if z.Sep == "" {
		z.Sep = "."
	}
	nd := len(z.Shape)
	total := 1
	for _, n := range z.Shape {
		total *= n
	}
	vals = make([]float32, total)
	for i := range vals {
		vals[i] = fill
	}
	grid := make([]int, nd)
	for d := range grid {
		grid[d] = (z.Shape[d] + z.Chunks[d] - 1) / z.Chunks[d]
	}
	forEachIndex(grid, func(c []int) bool {
		parts := make([]string, nd)
		for d := range c {
			parts[d] = strconv.Itoa(c[d])
		}
		b, err := os.ReadFile(filepath.Join(store, name, filepath.FromSlash(strings.Join(parts, z.Sep))))
		if os.IsNotExist(err) {
			return true
		}
		require.NoError(t, err)
		if z.Compressor != nil {
			var r io.Reader
			switch z.Compressor.ID {
			case "zlib":
				r, err = zlib.NewReader(bytes.NewReader(b))
			case "gzip":
				r, err = gzip.NewReader(bytes.NewReader(b))
			default:
				t.Fatalf("compressor %s", z.Compressor.ID)
			}
			require.NoError(t, err)
			b, err = io.ReadAll(r)
			require.NoError(t, err)
		}
		forEachIndex(z.Chunks, func(l []int) bool {
			off, goff, stride, gstride := 0, 0, 1, 1
			inside := true
			for d := nd - 1; d >= 0; d-- {
				g := c[d]*z.Chunks[d] + l[d]
				inside = inside && g < z.Shape[d]
				goff += g * gstride
				gstride *= z.Shape[d]
			}
			if z.Order == "F" {
				for d := 0; d < nd; d++ {
					off += l[d] * stride
					stride *= z.Chunks[d]
				}
			} else {
				for d := nd - 1; d >= 0; d-- {
					off += l[d] * stride
					stride *= z.Chunks[d]
				}
			}
			if inside {
				vals[goff] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*off:]))
			}
			return true
		})
		return true
	})
	return z.Shape, z.Chunks, vals
}

func span(a, b int) []int {
	var out []int
	for i := a; i <= b; i++ {
		out = append(out, i)
	}
	return out
}

func TestSubsetValues(t *testing.T) {
	s := newServer(t, Config{Token: testToken})
	fx := newServer(t, Config{Dir: queryFixture(t), Token: testToken})
	grid := newDemoGrid(demoDefault)
	tests := []struct {
		name, body string
		srv        *Server
		variable   string
		idx        [][]int // source indices kept per axis
		value      func(idx []int) float32
		dims       []string
		coords     []string // arrays the result holds
	}{
		{"time and bbox, latitude descending", `{"datasource":"demo_archive","variables":["sst"],
			"timefilter":{"type":"range","times":["2016-01-01","2016-03-31T00:00:00Z"]},"geofilter":{"type":"bbox","geom":[-30,-40,60,10]}}`,
			s, "sst", [][]int{span(365, 455), span(8, 13), span(8, 12)},
			func(i []int) float32 { return demoArchiveValue(0, i[0], i[1], i[2]) }, []string{"time", "lat", "lon"},
			[]string{"lat", "lon", "sst", "time"}},
		{"across the antimeridian, open start", `{"datasource":"demo_archive","variables":["swh"],
			"timefilter":{"times":[null,"2015-01-10"]},"geofilter":{"type":"bbox","geom":[150,-20,-165,20]}}`,
			s, "swh", [][]int{span(0, 9), span(7, 11), {0, 17}},
			func(i []int) float32 { return demoArchiveValue(1, i[0], i[1], i[2]) }, []string{"time", "lat", "lon"}, nil},
		{"-180..180 box on a 0..360 store", `{"datasource":"demo_grid","variables":["u10"],
			"timefilter":{"times":["2020-01-01T03:00:00","2020-01-01T10:00"]},"geofilter":{"type":"bbox","geom":[-10,-20,10,20]}}`,
			s, "u10", [][]int{span(3, 10), span(35, 55), append(span(0, 5), span(175, 179)...)},
			func(i []int) float32 { return grid.value(0, i[0], i[1], i[2]) }, []string{"time", "lat", "lon"},
			[]string{"lat", "lon", "time", "u10"}},
		{"time only, chunk-aligned", `{"datasource":"demo_grid","variables":["t2m"],"timefilter":{"times":["2020-01-01T06:00:00Z","2020-01-01T17:00:00Z"]}}`,
			s, "t2m", [][]int{span(6, 17), span(0, 90), span(0, 179)},
			func(i []int) float32 { return grid.value(2, i[0], i[1], i[2]) }, []string{"time", "lat", "lon"}, nil},
		{"stations in a box", `{"datasource":"demo_stations","variables":["hs"],"geofilter":{"type":"bbox","geom":[172,-44,175,-40]}}`,
			s, "hs", [][]int{{1, 2}, span(0, demoStationSteps-1)},
			func(i []int) float32 { return demoStationValue(0, i[0], i[1]) }, []string{"station", "time"},
			[]string{"hs", "latitude", "longitude", "station", "time"}},
		{"levels, gzip", `{"datasource":"levels","variables":["temp"],"levelfilter":{"levels":[5,25]}}`,
			fx, "temp", [][]int{{1, 2}, {0, 1, 2}},
			func(i []int) float32 { return float32(10*i[0] + i[1]) }, []string{"level", "y"}, []string{"level", "temp", "y"}},
		{"levels, Fortran order", `{"datasource":"levels","variables":["tempF"],"levelfilter":{"levels":[20,null]}}`,
			fx, "tempF", [][]int{{2, 3}, {0, 1, 2}},
			func(i []int) float32 { return float32(10*i[0] + i[1]) }, []string{"level", "y"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sess := acquire(t, tc.srv, "").ID
			w, st := stage(t, tc.srv, sess, tc.body)
			require.Equal(t, 200, w.Code, w.Body.String())
			out := filepath.Join(tc.srv.queryDir, st.QHash)
			q, _ := parseQuery([]byte(tc.body), time.Now())
			src := filepath.Join(tc.srv.cfg.Dir, q.Datasource)

			shape, chunks, vals := zarrRead(t, out, tc.variable)
			_, srcChunks, _ := zarrRead(t, src, tc.variable)
			want := make([]int, len(tc.idx))
			for d := range tc.idx {
				want[d] = len(tc.idx[d])
			}
			require.Equal(t, want, shape)
			assert.Equal(t, srcChunks, chunks, "same chunk shape")
			k := 0
			bad := 0
			forEachIndex(want, func(o []int) bool {
				si := make([]int, len(o))
				for d := range o {
					si[d] = tc.idx[d][o[d]]
				}
				if exp := tc.value(si); vals[k] != exp && bad < 5 {
					bad++
					t.Errorf("at %v (source %v): got %v, want %v", o, si, vals[k], exp)
				}
				k++
				return true
			})

			// Metadata: attributes and dimensions kept, the rest of .zarray
			// as in the source but the shape.
			for _, name := range []string{".zattrs", tc.variable + "/.zattrs"} {
				a, err := os.ReadFile(filepath.Join(src, name))
				require.NoError(t, err)
				b, err := os.ReadFile(filepath.Join(out, name))
				require.NoError(t, err)
				assert.JSONEq(t, string(a), string(b), name)
			}
			var sa, oa map[string]any
			readJSON(t, filepath.Join(src, tc.variable, ".zarray"), &sa)
			readJSON(t, filepath.Join(out, tc.variable, ".zarray"), &oa)
			delete(sa, "shape")
			delete(oa, "shape")
			assert.Equal(t, sa, oa)
			var za map[string]any
			readJSON(t, filepath.Join(out, tc.variable, ".zattrs"), &za)
			assert.Equal(t, tc.dims, toStrings(za["_ARRAY_DIMENSIONS"]))

			// Consolidated metadata names exactly the arrays kept.
			var zm struct {
				Format   int                        `json:"zarr_consolidated_format"`
				Metadata map[string]json.RawMessage `json:"metadata"`
			}
			readJSON(t, filepath.Join(out, ".zmetadata"), &zm)
			assert.Equal(t, 1, zm.Format)
			if tc.coords != nil {
				var arrays []string
				for k := range zm.Metadata {
					if name, ok := strings.CutSuffix(k, "/.zarray"); ok {
						arrays = append(arrays, name)
					}
				}
				assert.ElementsMatch(t, tc.coords, arrays)
			}
			assert.Contains(t, zm.Metadata, ".zgroup")
		})
	}
}

// TestSubsetChunks checks chunk-level rules: aligned chunks are copied
// byte for byte, edge chunks are padded with the fill value, absent
// source chunks stay absent.
func TestSubsetChunks(t *testing.T) {
	s := newServer(t, Config{Token: testToken})
	sess := acquire(t, s, "").ID
	// demo_grid's time chunks are 6 hours: 06:00 to 17:00 is chunks 1 and 2.
	_, st := stage(t, s, sess, `{"datasource":"demo_grid","variables":["t2m"],"timefilter":{"times":["2020-01-01T06:00:00Z","2020-01-01T17:00:00Z"]}}`)
	out := filepath.Join(s.queryDir, st.QHash)
	for _, pair := range [][2]string{{"1.0.0", "0.0.0"}, {"2.2.3", "1.2.3"}} {
		a, err := os.ReadFile(filepath.Join(demoDir, demoGridID, "t2m", pair[0]))
		require.NoError(t, err)
		b, err := os.ReadFile(filepath.Join(out, "t2m", pair[1]))
		require.NoError(t, err)
		assert.Equal(t, a, b, "aligned chunk %s copied as %s", pair[0], pair[1])
	}
	assert.NoFileExists(t, filepath.Join(out, "t2m", "2.0.0"))

	// An edge chunk: 91 days in chunks of 60, the second holds 31 days;
	// the chunk keeps the source's shape (60, 19, 18), everything outside
	// the 31 x 6 x 5 values is fill value (NaN), as zarr writes it.
	_, st = stage(t, s, sess, `{"datasource":"demo_archive","variables":["sst"],"timefilter":{"times":["2016-01-01","2016-03-31"]},"geofilter":{"type":"bbox","geom":[-30,-40,60,10]}}`)
	raw, err := os.ReadFile(filepath.Join(s.queryDir, st.QHash, "sst", "1.0.0"))
	require.NoError(t, err)
	r, err := zlib.NewReader(bytes.NewReader(raw))
	require.NoError(t, err)
	data, err := io.ReadAll(r)
	require.NoError(t, err)
	require.Len(t, data, 60*demoArchiveLat*demoArchiveLon*4, "a full chunk of the source's chunk shape")
	e := 0
	forEachIndex([]int{60, demoArchiveLat, demoArchiveLon}, func(l []int) bool {
		v := math.Float32frombits(binary.LittleEndian.Uint32(data[4*e:]))
		if l[0] < 31 && l[1] < 6 && l[2] < 5 {
			require.Equal(t, demoArchiveValue(0, 365+60+l[0], 8+l[1], 8+l[2]), v, "%v", l)
		} else {
			require.True(t, math.IsNaN(float64(v)), "padding at %v", l)
		}
		e++
		return true
	})

	// demo_sparse has absent chunks: a query that only cuts through them
	// leaves them absent, and present ones are cut.
	demoSparse := filepath.Join(demoDir, demoSparseID)
	plan := &subsetPlan{ds: s.lookup(demoSparseID)}
	meta, err := readDatasetMeta(plan.ds.root)
	require.NoError(t, err)
	plan.meta, plan.arrays = meta, []*zarrArray{meta.arrays["field"]}
	ys := append(span(0, 9), span(25, 29)...)
	plan.sel = map[string][]int{"y": ys, "x": span(12, 13)}
	dst := filepath.Join(t.TempDir(), "out")
	require.NoError(t, plan.materialise(t.Context(), dst))
	shape, _, vals := zarrRead(t, dst, "field")
	_, _, full := zarrRead(t, demoSparse, "field")
	require.Equal(t, []int{15, 2}, shape)
	for i, v := range vals {
		y, x := ys[i/2], 12+i%2
		assert.Equal(t, full[y*demoSparseN+x], v, "y=%d x=%d", y, x)
	}
	// Output chunk 0 comes from source chunk (0, 1), absent
	// ((0+1)%3 == 1): absent too; chunk 1 from (2, 1), present.
	assert.NoFileExists(t, filepath.Join(dst, "field", "0", "0"))
	assert.FileExists(t, filepath.Join(dst, "field", "1", "0"))
}

func readJSON(t testing.TB, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, v), path)
}

func toStrings(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}

func TestStageTimePeriods(t *testing.T) {
	s := newServer(t, Config{Token: testToken})
	s.now = func() time.Time { return time.Date(2016, 3, 1, 12, 0, 0, 0, time.UTC) }
	sess := acquire(t, s, "").ID
	w, st := stage(t, s, sess, `{"datasource":"demo_archive","variables":["sst"],"timefilter":{"type":"range","times":["-P7D","P1D"]}}`)
	require.Equal(t, 200, w.Code, w.Body.String())
	assert.Equal(t, []*string{ptr("2016-02-23T12:00:00Z"), ptr("2016-03-02T12:00:00Z")}, st.Query.TimeFilter.Times)
	// Days 2016-02-24 .. 2016-03-02: 8 daily steps.
	shape, _, _ := zarrRead(t, filepath.Join(s.queryDir, st.QHash), "sst")
	assert.Equal(t, []int{8, demoArchiveLat, demoArchiveLon}, shape)
	w, st = stage(t, s, sess, `{"datasource":"demo_archive","variables":["sst"],"timefilter":{"times":["-PT36H","PT0S"]}}`)
	require.Equal(t, 200, w.Code)
	shape, _, _ = zarrRead(t, filepath.Join(s.queryDir, st.QHash), "sst")
	assert.Equal(t, 2, shape[0], "2016-02-29 and 2016-03-01, between 2016-02-29T00:00 and now")
}

func ptr[T any](v T) *T { return &v }

func TestQueryZarrRoutes(t *testing.T) {
	s := newServer(t, Config{Token: testToken})
	sess := acquire(t, s, "").ID
	_, st := stage(t, s, sess, `{"datasource":"demo_archive","variables":["sst"],"timefilter":{"times":["2016-01-01","2016-03-31"]}}`)
	_, whole := stage(t, s, sess, `{"datasource":"demo_sparse"}`)
	base := "/zarr/query/" + st.QHash + "/"
	s.counters.reset()
	tests := []struct {
		target  string
		method  string
		hdr     []string
		status  int
		want    []string
		notWant []string
	}{
		{base, "GET", withSession(sess), 200, []string{`<a href=".zmetadata">`, `<a href="sst/">sst/</a>`, `<a href="time/">`}, []string{"swh"}},
		{base + "sst/", "GET", withSession(sess), 200, []string{`<a href=".zarray">`, `<a href="0.0.0">0.0.0</a>`, `<a href="1.0.0">`}, []string{"2.0.0"}},
		{base + "nothing/", "GET", withSession(sess), 404, nil, nil},
		{base + ".zmetadata", "GET", withSession(sess), 200, []string{`"sst/.zarray"`}, nil},
		{base + "sst/0.0.0", "HEAD", withSession(sess), 200, nil, nil},
		{base + "sst/5.0.0", "GET", withSession(sess), 404, nil, nil},
		{base + "../demo_grid/.zgroup", "GET", withSession(sess), 400, nil, nil},
		{base + ".zmetadata", "GET", auth, 401, nil, nil},
		{"/zarr/query/" + strings.Repeat("ab", 28) + "/.zmetadata", "GET", withSession(sess), 404, nil, nil},
		{"/zarr/query/" + st.QHash, "GET", withSession(sess), 404, nil, nil},
		{base + ".zmetadata", "DELETE", withSession(sess), 405, nil, nil},
		// A whole-store query is served from the datasource itself.
		{"/zarr/query/" + whole.QHash + "/field/0/", "GET", withSession(sess), 200, []string{`<a href="0">0</a>`}, []string{`<a href="1">`}},
		{"/zarr/query/" + whole.QHash + "/field/0/1", "GET", withSession(sess), 404, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.target, func(t *testing.T) {
			w := call(t, s, tc.method, tc.target, nil, tc.hdr...)
			require.Equal(t, tc.status, w.Code, w.Body.String())
			for _, x := range tc.want {
				assert.Contains(t, w.Body.String(), x)
			}
			for _, x := range tc.notWant {
				assert.NotContains(t, w.Body.String(), x)
			}
		})
	}
	want, err := os.ReadFile(filepath.Join(s.queryDir, st.QHash, "sst", "0.0.0"))
	require.NoError(t, err)
	w := call(t, s, http.MethodGet, base+"sst/0.0.0", nil, withSession(sess)...)
	assert.Equal(t, want, w.Body.Bytes())
	h := call(t, s, http.MethodHead, base+"sst/0.0.0", nil, withSession(sess)...)
	assert.Equal(t, strconv.Itoa(len(want)), h.Header().Get("Content-Length"))
	assert.NotEmpty(t, h.Header().Get("Last-Modified"))

	c := s.Counters()
	assert.Equal(t, int64(1), c.QueryKeys[st.QHash+"/sst/0.0.0 GET"])
	assert.Equal(t, int64(2), c.QueryKeys[st.QHash+"/sst/0.0.0 HEAD"])
	assert.Positive(t, c.ByRoute[routeQueryZarrList])
	assert.Positive(t, c.ByRoute[routeQueryZarrHead])
	assert.Empty(t, c.ZarrKeys, "query keys are not datasource keys")
}
