package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/parquet-go/parquet-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// compareQuery opens a query path through the mount and the same selection
// made by xarray on the source store, and asserts they are identical.
// argv: query dir, source store, time start, time end, lat north, lat
// south (the store's latitude descends), lon west, lon east, variables.
const compareQuery = `
import sys, xarray as xr
q = xr.open_zarr(sys.argv[1]).load()
s = xr.open_zarr(sys.argv[2]).load()
t0, t1, n, so, w, e = sys.argv[3:9]
want = s.sel(time=slice(t0, t1), lat=slice(float(n), float(so)), lon=slice(float(w), float(e)))[sys.argv[9].split(",")]
xr.testing.assert_identical(q, want)
print("identical", dict(q.sizes))
`

func parquetRows(t *testing.T, data []byte) int64 {
	t.Helper()
	f, err := parquet.OpenFile(bytes.NewReader(data), int64(len(data)))
	require.NoError(t, err, "a Parquet reader opens it")
	return f.NumRows()
}

func TestQueryPathsThroughTheKernel(t *testing.T) {
	g := startGateway(t, "")
	m := mountForeground(t, g)
	const name = "demo_archive@time=2016-01-01,2016-03-31@bbox=-60,-30,60,30@vars=sst"
	g.resetCounters(t)

	out := python(t, compareQuery, filepath.Join(m.Dir, name), filepath.Join(demoDir, "demo_archive"),
		"2016-01-01", "2016-03-31", "30", "-30", "-60", "60", "sst")
	assert.Contains(t, out, "identical")
	c := g.counters(t)
	assert.Equal(t, int64(1), c.ByRoute["stage"], "staged once")
	gets := 0
	for key, n := range c.QueryKeys {
		if strings.HasSuffix(key, " GET") {
			gets++
			assert.Equal(t, int64(1), n, "%s fetched once", key)
		}
	}
	assert.Positive(t, gets)
	assert.Zero(t, c.ByRoute["zarr_get"], "nothing read from the datasource itself")

	// Opened again within the TTL: no stage, no fetch.
	python(t, compareQuery, filepath.Join(m.Dir, name), filepath.Join(demoDir, "demo_archive"),
		"2016-01-01", "2016-03-31", "30", "-30", "-60", "60", "sst")
	c2 := g.counters(t)
	assert.Equal(t, int64(1), c2.ByRoute["stage"], "the stage is kept for the TTL")
	assert.Equal(t, c.ByRoute["query_zarr_get"], c2.ByRoute["query_zarr_get"], "warm: no request")

	// Its description says what it is.
	var info map[string]any
	b, err := os.ReadFile(filepath.Join(m.Dir, name, infoFile))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &info))
	assert.Equal(t, "dataset", info["container"])
	assert.NotNil(t, info["query"])

	// Never listed; malformed names EINVAL with the reason logged (no
	// request); no data ENOENT with "no data" logged.
	for _, e := range strings.Fields(runCmd(t, "ls", "-a", m.Dir)) {
		assert.NotContains(t, e, "@")
	}
	before := g.counters(t).ByRoute["stage"]
	_, err = os.Stat(filepath.Join(m.Dir, "demo_archive@colour=red"))
	assert.True(t, errors.Is(err, syscall.EINVAL), "malformed: %v", err)
	assert.Equal(t, before, g.counters(t).ByRoute["stage"], "a malformed name costs no request")
	m.waitLog(t, `unknown key \"colour\"`)
	_, err = os.Stat(filepath.Join(m.Dir, "demo_archive@time=1900-01-01,1900-02-01"))
	assert.True(t, errors.Is(err, syscall.ENOENT), "no data: %v", err)
	m.waitLog(t, "query: no data")
	_, err = os.Stat(filepath.Join(m.Dir, "demo_archive@vars=nope"))
	assert.True(t, errors.Is(err, syscall.EINVAL), "refused by the gateway: %v", err)
	m.waitLog(t, "query refused by the gateway")
}

func TestTablesAsParquetFiles(t *testing.T) {
	g := startGateway(t, "")
	m := mountForeground(t, g)

	// ls -R of the root: the table's container costs one stage, its
	// download nothing until its file is looked up.
	g.resetCounters(t)
	runCmd(t, "ls", "-R", m.Dir)
	c := g.counters(t)
	assert.Equal(t, int64(1), c.ByRoute["stage"], "one stage: the only datasource whose driver is not zarr")
	assert.Zero(t, c.ByRoute["data"], "no table downloaded by a listing")

	dir := filepath.Join(m.Dir, "demo_table")
	assert.Equal(t, []string{".datasource.json", "demo_table.parquet"}, strings.Fields(runCmd(t, "ls", "-A", dir)))
	got, err := os.ReadFile(filepath.Join(dir, "demo_table.parquet"))
	require.NoError(t, err)
	want, err := os.ReadFile(filepath.Join(demoDir, "demo_table", "data.parquet"))
	require.NoError(t, err)
	assert.True(t, bytes.Equal(want, got), "the table's bytes")
	assert.Equal(t, int64(30*24*6), parquetRows(t, got), "30 days, hourly, 6 stations")
	assert.Equal(t, int64(1), g.counters(t).ByRoute["data"], "downloaded once")

	var info map[string]any
	b, err := os.ReadFile(filepath.Join(dir, infoFile))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &info))
	assert.Equal(t, "dataframe", info["container"])
	assert.Equal(t, "onsql", info["driver"])

	// A query on the table: its rows only (both ends included).
	q, err := os.ReadFile(filepath.Join(m.Dir, "demo_table@time=2020-01-05,2020-01-06", "demo_table.parquet"))
	require.NoError(t, err)
	assert.Equal(t, int64(25*6), parquetRows(t, q), "25 hours of 6 stations")

	// Tables are read-only, also their directory.
	err = os.WriteFile(filepath.Join(dir, "x"), []byte("x"), 0o644)
	assert.True(t, errors.Is(err, syscall.EROFS), "%v", err)
}

func TestFixedQueryAndCatalogListing(t *testing.T) {
	g := startGateway(t, "")
	qfile := filepath.Join(t.TempDir(), "june.json")
	require.NoError(t, os.WriteFile(qfile, []byte(`{"datasource": "demo_archive", "variables": ["sst"],
		"timefilter": {"type": "range", "times": ["2017-06-01", "2017-06-30"]},
		"geofilter": {"type": "bbox", "geom": [-180, -90, 180, 90]}}`), 0o600))
	m := mountForeground(t, g, "--query", "june="+qfile)
	assert.Contains(t, strings.Fields(runCmd(t, "ls", m.Dir)), "june", "a --query is listed")
	out := python(t, compareQuery, filepath.Join(m.Dir, "june"), filepath.Join(demoDir, "demo_archive"),
		"2017-06-01", "2017-06-30", "90", "-90", "-180", "180", "sst")
	assert.Contains(t, out, "identical")

	// A NAME that is a catalog id is refused before anything is mounted.
	cmd := exec.Command(dmfsBin, "mount", "--foreground", "--service", g.URL, "--query", "demo_grid="+qfile, t.TempDir())
	cmd.Env = append(os.Environ(), "DATAMESH_TOKEN="+testToken)
	b, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	require.True(t, errors.As(err, &exit), "%s", b)
	assert.Equal(t, 2, exit.ExitCode(), "%s", b)
	assert.Contains(t, string(b), "--query demo_grid")

	// dmfs ls: the catalog, filtered by the catalog's search.
	ls := exec.Command(dmfsBin, "ls", "--service", g.URL, "--search", "archive")
	ls.Env = append(os.Environ(), "DATAMESH_TOKEN="+testToken)
	b, err = ls.CombinedOutput()
	require.NoError(t, err, "%s", b)
	assert.Contains(t, string(b), "demo_archive")
	assert.NotContains(t, string(b), "demo_grid")
	ls = exec.Command(dmfsBin, "ls", "--service", g.URL, "--json")
	ls.Env = append(os.Environ(), "DATAMESH_TOKEN="+testToken)
	b, err = ls.Output()
	require.NoError(t, err)
	var all []map[string]any
	require.NoError(t, json.Unmarshal(b, &all))
	assert.Len(t, all, 6) // demo_archive, demo_grid, demo_large, demo_sparse, demo_stations, demo_table
	assert.NotContains(t, string(b), testToken)
}
