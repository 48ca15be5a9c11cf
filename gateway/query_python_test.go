package gateway

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/internal/testenv"
)

// pythonCompare opens each query result with xarray and compares it with
// the source opened with xarray and cut with .sel/.isel, as a user would.
const pythonCompare = `
import json, sys
import xarray as xr
cases = json.load(open(sys.argv[1]))
out = []
for c in cases:
    try:
        got = xr.open_zarr(c["result"]).load()
        src = xr.open_zarr(c["source"])
        exp = src.sel(**{k: slice(*v) for k, v in c.get("sel", {}).items()})
        exp = exp.isel(**c.get("isel", {}))
        exp = exp[c["vars"]].load()
        xr.testing.assert_identical(got, exp)
        out.append("ok")
    except Exception as e:
        out.append(type(e).__name__ + ": " + str(e)[:3000])
print(json.dumps(out))
`

func TestQueryResultsMatchXarray(t *testing.T) {
	testenv.RequirePython(t, "xarray, zarr")
	fixture := queryFixture(t)
	s := newServer(t, Config{Token: testToken})
	fx := newServer(t, Config{Dir: fixture, Token: testToken})
	type pyCase struct {
		Result string           `json:"result"`
		Source string           `json:"source"`
		Vars   []string         `json:"vars"`
		Sel    map[string][]any `json:"sel,omitempty"`
		Isel   map[string][]int `json:"isel,omitempty"`
	}
	cases := []struct {
		name string
		srv  *Server
		body string
		py   pyCase
	}{
		{"time and bbox, latitude descending", s,
			`{"datasource":"demo_archive","variables":["sst"],"timefilter":{"times":["2016-01-01","2016-03-31"]},"geofilter":{"type":"bbox","geom":[-30,-40,60,10]}}`,
			pyCase{Vars: []string{"sst"}, Sel: map[string][]any{"time": {"2016-01-01T00:00:00", "2016-03-31T00:00:00"}, "lat": {10, -40}, "lon": {-30, 60}}}},
		{"two variables, all times, bbox", s,
			`{"datasource":"demo_archive","variables":["swh","sst"],"geofilter":{"type":"bbox","geom":[100,0,150,50]}}`,
			pyCase{Vars: []string{"sst", "swh"}, Sel: map[string][]any{"lat": {50, 0}, "lon": {100, 150}}}},
		{"-180..180 box on a 0..360 store", s,
			`{"datasource":"demo_grid","variables":["u10","v10"],"timefilter":{"times":["2020-01-01T03:00:00","2020-01-01T10:00:00"]},"geofilter":{"type":"bbox","geom":[-10,-20,10,20]}}`,
			pyCase{Vars: []string{"u10", "v10"}, Sel: map[string][]any{"time": {"2020-01-01T03:00:00", "2020-01-01T10:00:00"}, "lat": {-20, 20}},
				Isel: map[string][]int{"lon": append(span(0, 5), span(175, 179)...)}}},
		{"chunk-aligned time", s,
			`{"datasource":"demo_grid","variables":["t2m"],"timefilter":{"times":["2020-01-01T06:00:00Z","2020-01-01T17:00:00Z"]}}`,
			pyCase{Vars: []string{"t2m"}, Sel: map[string][]any{"time": {"2020-01-01T06:00:00", "2020-01-01T17:00:00"}}}},
		{"stations in a box", s,
			`{"datasource":"demo_stations","variables":["hs","tp"],"geofilter":{"type":"bbox","geom":[172,-44,175,-40]},"timefilter":{"times":["2020-01-10",null]}}`,
			pyCase{Vars: []string{"hs", "tp"}, Sel: map[string][]any{"time": {"2020-01-10T00:00:00", nil}}, Isel: map[string][]int{"station": {1, 2}}}},
		{"levels with a fill value", fx,
			`{"datasource":"levels","variables":["temp","tempF"],"levelfilter":{"levels":[5,25]}}`,
			pyCase{Vars: []string{"temp", "tempF"}, Sel: map[string][]any{"level": {5, 25}}}},
	}
	var py []pyCase
	for _, tc := range cases {
		sess := acquire(t, tc.srv, "").ID
		w, st := stage(t, tc.srv, sess, tc.body)
		require.Equal(t, 200, w.Code, "%s: %s", tc.name, w.Body.String())
		q, _ := parseQuery([]byte(tc.body), time.Now())
		c := tc.py
		c.Result = filepath.Join(tc.srv.queryDir, st.QHash)
		c.Source = filepath.Join(tc.srv.cfg.Dir, q.Datasource)
		py = append(py, c)
	}
	input := filepath.Join(t.TempDir(), "cases.json")
	b, err := json.Marshal(py)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(input, b, 0o644))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, testenv.DebianPython, "-c", pythonCompare, input).Output()
	if ee, ok := err.(*exec.ExitError); ok {
		t.Fatalf("python: %v\n%s", err, ee.Stderr)
	}
	require.NoError(t, err)
	var results []string
	require.NoError(t, json.Unmarshal(out, &results), string(out))
	require.Len(t, results, len(cases))
	for i, r := range results {
		assert.Equal(t, "ok", r, cases[i].name)
	}
}
