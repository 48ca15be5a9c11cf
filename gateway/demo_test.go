package gateway

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/internal/testenv"
)

// pythonReader is run by Debian's python over the demo stores; it prints
// what xarray decoded, as JSON.
const pythonReader = `
import json, sys, math
import xarray as xr
d = sys.argv[1]
g = xr.open_zarr(d + "/demo_grid")
s = xr.open_zarr(d + "/demo_stations")
p = xr.open_zarr(d + "/demo_sparse", consolidated=False)
l = xr.open_zarr(d + "/demo_large")
def f(v):
    v = float(v)
    return None if math.isnan(v) else v
out = {
    "grid_dims": {k: int(v) for k, v in g.sizes.items()},
    "grid_time": [str(t)[:19] for t in g.time.values[[0, 5, -1]]],
    "grid_lat": [f(x) for x in g.lat.values[[0, 45, -1]]],
    "grid_lon": [f(x) for x in g.lon.values[[0, 1, -1]]],
    "grid_points": {v: [f(g[v].values[t, i, j]) for (t, i, j) in [(0, 0, 0), (3, 10, 20), (23, 90, 179), (7, 45, 91)]] for v in ["u10", "v10", "t2m"]},
    "grid_units": g.u10.attrs.get("units"),
    "stations": [int(x) for x in s.station.values],
    "station_lat": [f(x) for x in s.latitude.values],
    "hs": [f(s.hs.values[i, t]) for (i, t) in [(0, 0), (2, 100), (5, 719)]],
    "tp": [f(s.tp.values[i, t]) for (i, t) in [(1, 1), (4, 500)]],
    "station_time_last": str(s.time.values[-1])[:19],
    "sparse": [f(p.field.values[y, x]) for (y, x) in [(0, 0), (0, 15), (15, 0), (39, 39), (25, 5)]],
    "large_dims": {k: int(v) for k, v in l.sizes.items()},
    "large_field": [f(l.field.values[t, y, x]) for (t, y, x) in [(0, 0, 0), (2, 10, 20), (1, 1023, 1023)]],
    "large_shard": [f(l.shard.values[y, x]) for (y, x) in [(0, 0), (100, 200), (4095, 4095)]],
}
print(json.dumps(out))
`

// TestDemoReadableByXarray checks that xarray with zarr 2.x opens each demo
// store and decodes the values Go wrote.
func TestDemoReadableByXarray(t *testing.T) {
	testenv.RequirePython(t, "xarray, zarr")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, testenv.DebianPython, "-c", pythonReader, demoDir).Output()
	if ee, ok := err.(*exec.ExitError); ok {
		t.Fatalf("python: %v\n%s", err, ee.Stderr)
	}
	require.NoError(t, err)
	var got struct {
		GridDims        map[string]int        `json:"grid_dims"`
		GridTime        []string              `json:"grid_time"`
		GridLat         []float64             `json:"grid_lat"`
		GridLon         []float64             `json:"grid_lon"`
		GridPoints      map[string][]*float64 `json:"grid_points"`
		GridUnits       string                `json:"grid_units"`
		Stations        []int                 `json:"stations"`
		StationLat      []float64             `json:"station_lat"`
		Hs, Tp          []*float64
		StationTimeLast string         `json:"station_time_last"`
		Sparse          []*float64     `json:"sparse"`
		LargeDims       map[string]int `json:"large_dims"`
		LargeField      []float64      `json:"large_field"`
		LargeShard      []float64      `json:"large_shard"`
	}
	require.NoError(t, json.Unmarshal(out, &got), string(out))

	g := newDemoGrid(demoDefault)
	assert.Equal(t, map[string]int{"time": 24, "lat": 91, "lon": 180}, got.GridDims)
	assert.Equal(t, []string{"2020-01-01T00:00:00", "2020-01-01T05:00:00", "2020-01-01T23:00:00"}, got.GridTime)
	assert.Equal(t, []float64{-90, 0, 90}, got.GridLat)
	assert.Equal(t, []float64{0, 2, 358}, got.GridLon)
	assert.Equal(t, "m s-1", got.GridUnits)
	points := [][3]int{{0, 0, 0}, {3, 10, 20}, {23, 90, 179}, {7, 45, 91}}
	for v, meta := range demoGridVars {
		require.Len(t, got.GridPoints[meta.name], len(points))
		for k, p := range points {
			want := float64(g.value(v, p[0], p[1], p[2]))
			require.NotNil(t, got.GridPoints[meta.name][k])
			assert.Equal(t, want, *got.GridPoints[meta.name][k], "%s%v", meta.name, p)
		}
	}
	assert.Equal(t, []int{1001, 1002, 1003, 1004, 1005, 1006}, got.Stations)
	for i, p := range demoStationsPos {
		assert.Equal(t, p.lat, got.StationLat[i])
	}
	for k, p := range [][2]int{{0, 0}, {2, 100}, {5, 719}} {
		assert.Equal(t, float64(demoStationValue(0, p[0], p[1])), *got.Hs[k])
	}
	for k, p := range [][2]int{{1, 1}, {4, 500}} {
		assert.Equal(t, float64(demoStationValue(1, p[0], p[1])), *got.Tp[k])
	}
	assert.Equal(t, "2020-01-30T23:00:00", got.StationTimeLast)
	for k, p := range [][2]int{{0, 0}, {0, 15}, {15, 0}, {39, 39}, {25, 5}} {
		if demoSparsePresent(p[0]/demoSparseChunk, p[1]/demoSparseChunk) {
			require.NotNil(t, got.Sparse[k], "%v", p)
			assert.Equal(t, float64(demoSparseValue(p[0], p[1])), *got.Sparse[k], "%v", p)
		} else {
			assert.Nil(t, got.Sparse[k], "absent chunk at %v must read as fill_value (NaN)", p)
		}
	}
	assert.Equal(t, map[string]int{"time": demoLargeMinSteps, "y": 1024, "x": 1024, "shard_y": 4096, "shard_x": 4096}, got.LargeDims)
	for k, p := range [][3]int{{0, 0, 0}, {2, 10, 20}, {1, 1023, 1023}} {
		assert.Equal(t, float64(demoLargeValue(0, uint64((p[0]*1024+p[1])*1024+p[2]))), got.LargeField[k], "field%v", p)
	}
	for k, p := range [][2]int{{0, 0}, {100, 200}, {4095, 4095}} {
		assert.Equal(t, float64(demoLargeValue(1, uint64(p[0]*4096+p[1]))), got.LargeShard[k], "shard%v", p)
	}
}

func TestDemoLayout(t *testing.T) {
	// Absent chunks really are absent, and "/" separates chunk keys.
	_, err := os.Stat(filepath.Join(demoDir, "demo_sparse", "field", "0", "1"))
	assert.ErrorIs(t, err, os.ErrNotExist)
	_, err = os.Stat(filepath.Join(demoDir, "demo_sparse", "field", "0", "0"))
	assert.NoError(t, err)
	_, err = os.Stat(filepath.Join(demoDir, "demo_sparse", ".zmetadata"))
	assert.ErrorIs(t, err, os.ErrNotExist)

	var zarray map[string]any
	b, err := os.ReadFile(filepath.Join(demoDir, "demo_grid", "u10", ".zarray"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &zarray))
	assert.Equal(t, map[string]any{"id": "zlib", "level": 1.0}, zarray["compressor"])
	assert.Equal(t, "NaN", zarray["fill_value"])

	// A few hundred chunks that compress only partly.
	var chunks int
	var size int64
	for _, v := range demoGridVars {
		entries, err := os.ReadDir(filepath.Join(demoDir, "demo_grid", v.name))
		require.NoError(t, err)
		for _, e := range entries {
			if e.Name()[0] == '.' {
				continue
			}
			fi, err := e.Info()
			require.NoError(t, err)
			chunks++
			size += fi.Size()
		}
	}
	assert.Equal(t, 3*4*3*4, chunks)
	raw := int64(3 * demoDefault * demoLat * demoLon * 4)
	assert.Greater(t, size, raw/5)
	assert.Less(t, size, raw*4/5)
	assert.False(t, math.IsNaN(float64(newDemoGrid(1).value(2, 0, 0, 0))))
}

func TestWriteDemoIdempotent(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	require.NoError(t, WriteDemo(ctx, dir, DemoOptions{}))
	chunk := filepath.Join(dir, "demo_grid", "u10", "0.0.0")
	old := time.Unix(1_000_000, 0)
	require.NoError(t, os.Chtimes(chunk, old, old))

	require.NoError(t, WriteDemo(ctx, dir, DemoOptions{}))
	fi, err := os.Stat(chunk)
	require.NoError(t, err)
	assert.Equal(t, old, fi.ModTime(), "same options: nothing rewritten")

	require.NoError(t, WriteDemo(ctx, dir, DemoOptions{GridBytes: 12 << 20}))
	fi, err = os.Stat(chunk)
	require.NoError(t, err)
	assert.NotEqual(t, old, fi.ModTime(), "new options: rewritten")
	s := newServer(t, Config{Dir: dir})
	assert.Equal(t, []string{"demo_archive", "demo_grid", "demo_large", "demo_sparse", "demo_stations", "demo_table"}, s.datasourceIDs())
	f := getFeature(t, s, "demo_grid")
	steps := int(12 << 20 / (demoLat * demoLon * 4 * demoVars))
	assert.Equal(t, float64(steps), f.Properties["schema"].(map[string]any)["dims"].(map[string]any)["time"])

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	assert.ErrorIs(t, WriteDemo(cancelled, t.TempDir(), DemoOptions{}), context.Canceled)
	assert.Error(t, WriteDemo(ctx, "", DemoOptions{}))
	assert.Error(t, WriteDemo(ctx, t.TempDir(), DemoOptions{GridBytes: -1}))
	// No temporary folders are left behind.
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		assert.NotContains(t, e.Name(), ".tmp")
	}
}

// TestDemoArchiveAndTable checks the datasources made for queries: a
// long daily archive chunked in time (latitude descending, longitude in
// -180..180) and a table with several row groups.
func TestDemoArchiveAndTable(t *testing.T) {
	s := newServer(t, Config{Token: testToken})
	f := getFeature(t, s, demoArchiveID)
	assert.Equal(t, "zarr", f.Properties["driver"])
	assert.Equal(t, "2015-01-01T00:00:00Z", f.Properties["tstart"])
	assert.Equal(t, "2017-12-31T00:00:00Z", f.Properties["tend"])
	assert.JSONEq(t, `{"type":"Polygon","coordinates":[[[-180,-90],[160,-90],[160,90],[-180,90],[-180,-90]]]}`, string(f.Geometry))
	for _, v := range demoArchiveVars {
		entries, err := os.ReadDir(filepath.Join(demoDir, demoArchiveID, v.name))
		require.NoError(t, err)
		assert.Len(t, entries, 2+(demoArchiveDays+demoArchiveChunk-1)/demoArchiveChunk, "metadata and one chunk per 60 days")
	}
	shape, _, lat := zarrRead(t, filepath.Join(demoDir, demoArchiveID), "sst")
	assert.Equal(t, []int{demoArchiveDays, demoArchiveLat, demoArchiveLon}, shape)
	assert.Equal(t, demoArchiveValue(0, 1095, 18, 17), lat[len(lat)-1])
	assert.Equal(t, 90.0, demoArchiveLatAt(0))
	assert.Equal(t, -90.0, demoArchiveLatAt(demoArchiveLat-1))

	tf := getFeature(t, s, demoTableID)
	assert.Equal(t, "onsql", tf.Properties["driver"])
	assert.Equal(t, "Demo station observations", tf.Properties["name"], "from its datasource.json")
	assert.Equal(t, []any{"demo", "table"}, tf.Properties["tags"])
	assert.Equal(t, "2020-01-01T00:00:00Z", tf.Properties["tstart"])
	assert.Equal(t, "2020-01-30T23:00:00Z", tf.Properties["tend"])
	assert.JSONEq(t, `{"type":"Polygon","coordinates":[[[170.5,-45.87],[176.17,-45.87],[176.17,-36.85],[170.5,-36.85],[170.5,-45.87]]]}`, string(tf.Geometry))
	schema := tf.Properties["schema"].(map[string]any)
	assert.ElementsMatch(t, []string{"time", "latitude", "longitude", "station", "value"}, keys(schema["data_vars"]))
	assert.Equal(t, map[string]any{"index": float64(demoStationSteps * len(demoStationsPos))}, schema["dims"])

	path := filepath.Join(demoDir, demoTableID, tableFile)
	rows, err := parquet.ReadFile[tableRow](path)
	require.NoError(t, err)
	want := demoTableRows()
	require.Len(t, rows, len(want))
	for i := range want {
		require.True(t, want[i].Time.Equal(rows[i].Time))
		require.Equal(t, want[i].Station, rows[i].Station)
		require.Equal(t, want[i].Value, rows[i].Value)
	}
	fh, err := os.Open(path)
	require.NoError(t, err)
	defer fh.Close()
	fi, err := fh.Stat()
	require.NoError(t, err)
	pf, err := parquet.OpenFile(fh, fi.Size())
	require.NoError(t, err)
	assert.Len(t, pf.RowGroups(), (len(want)+demoTableRowGroup-1)/demoTableRowGroup)
}

func TestDemoLargeSteps(t *testing.T) {
	for _, c := range []struct {
		bytes int64
		want  int
	}{
		{0, demoLargeMinSteps},
		{16 << 20, demoLargeMinSteps},
		{64 << 20, 6},
		{256 << 20, 25},
		{1 << 30, 100},
		{2 << 30, 200},
		{1 << 50, demoLargeMaxSteps},
	} {
		assert.Equal(t, c.want, demoLargeSteps(DemoOptions{GridBytes: c.bytes}), "%d bytes", c.bytes)
	}
}

// TestDemoLarge checks demo_large's layout: uncompressed float32, field in
// chunks of exactly 4 MiB, shard in one 64 MiB chunk, bytes as the value
// functions say (the fast chunk writer agrees with them element by
// element), and the 100-per-GiB rule for bigger demos.
func TestDemoLarge(t *testing.T) {
	dir := filepath.Join(demoDir, demoLargeID)
	for name, chunks := range map[string][]any{"field": {1.0, 1024.0, 1024.0}, "shard": {4096.0, 4096.0}} {
		var zarray map[string]any
		b, err := os.ReadFile(filepath.Join(dir, name, ".zarray"))
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal(b, &zarray))
		assert.Nil(t, zarray["compressor"], name)
		assert.Equal(t, "<f4", zarray["dtype"], name)
		assert.Equal(t, chunks, zarray["chunks"], name)
	}
	_, err := os.Stat(filepath.Join(dir, ".zmetadata"))
	require.NoError(t, err)

	entries, err := os.ReadDir(filepath.Join(dir, "field"))
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		if e.Name()[0] == '.' {
			continue
		}
		names = append(names, e.Name())
		fi, err := e.Info()
		require.NoError(t, err)
		assert.Equal(t, int64(4<<20), fi.Size(), e.Name())
	}
	assert.Equal(t, []string{"0.0.0", "1.0.0", "2.0.0"}, names, "demoLargeMinSteps chunks by default")

	shard, err := os.ReadFile(filepath.Join(dir, "shard", "0.0"))
	require.NoError(t, err)
	require.Len(t, shard, 64<<20)
	field2, err := os.ReadFile(filepath.Join(dir, "field", "2.0.0"))
	require.NoError(t, err)
	at := func(b []byte, k int) float32 { return math.Float32frombits(binary.LittleEndian.Uint32(b[4*k:])) }
	large := demoLarge(DemoOptions{})
	fieldArr, shardArr := large.arrays[1], large.arrays[2]
	for _, k := range []int{0, 1, 1023, 1024, 500_000, 1<<20 - 1} {
		y, x := k/1024, k%1024
		assert.Equal(t, float32(fieldArr.value([]int{2, y, x})), at(field2, k), "field[2,%d,%d]", y, x)
	}
	for _, k := range []int{0, 4095, 4096, 8_000_000, 16<<20 - 1} {
		y, x := k/4096, k%4096
		assert.Equal(t, float32(shardArr.value([]int{y, x})), at(shard, k), "shard[%d,%d]", y, x)
	}
	// Noise: neighbours and chunks differ, so that a misplaced range shows.
	assert.NotEqual(t, at(field2, 0), at(field2, 1))
	field0, err := os.ReadFile(filepath.Join(dir, "field", "0.0.0"))
	require.NoError(t, err)
	assert.NotEqual(t, field0, field2)
	assert.NotEqual(t, shard[:4<<20], field0)

	assert.Equal(t, []int{100, 1024, 1024}, demoLarge(DemoOptions{GridBytes: 1 << 30}).arrays[1].shape, "400 MiB at 1 GiB")
}
