package fs

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/zarr"
)

func (c *memCatalog) Stage(ctx context.Context, query []byte) (Staged, error) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	q := string(query)
	c.stages = append(c.stages, q)
	if err := c.stageErr[q]; err != nil {
		return Staged{}, err
	}
	st, ok := c.staged[q]
	if !ok {
		return Staged{}, fmt.Errorf("stage %s: %w", q, iofs.ErrNotExist)
	}
	return st, nil
}

func (c *memCatalog) QueryStore(qhash string) zarr.Store {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	return c.queries[qhash]
}

func (c *memCatalog) OpenTable(ctx context.Context, id, qhash, ifChanged string) (Table, error) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	c.opens++
	key := id
	if qhash != "" {
		key += "?" + qhash
	}
	b, ok := c.tables[key]
	if !ok {
		return Table{}, fmt.Errorf("table %s: %w", key, iofs.ErrNotExist)
	}
	tag := c.tableTags[key]
	if ifChanged != "" && ifChanged == tag {
		return Table{}, fmt.Errorf("table %s: %w", key, ErrNotModified)
	}
	c.bodies++
	return Table{Body: io.NopCloser(bytes.NewReader(b)), Size: int64(len(b)), Validator: tag}, nil
}

func (c *memCatalog) stageCount() int {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	return len(c.stages)
}

func TestParseQueryName(t *testing.T) {
	cases := []struct {
		name, want, err string
	}{
		{"demo@time=2020-01-01,2020-02-01", `{"datasource":"demo","timefilter":{"times":["2020-01-01","2020-02-01"],"type":"range"}}`, ""},
		{"demo@vars=u10,v10@bbox=-10,-5.5,20,30", `{"datasource":"demo","geofilter":{"geom":[-10,-5.5,20,30],"type":"bbox"},"variables":["u10","v10"]}`, ""},
		{"demo@time=-P7D,", `{"datasource":"demo","timefilter":{"times":["-P7D",null],"type":"range"}}`, ""},
		{"demo@time=2020-01-01T06:00:00Z,PT6H@level=,500", `{"datasource":"demo","levelfilter":{"levels":[null,500],"type":"range"},"timefilter":{"times":["2020-01-01T06:00:00Z","PT6H"],"type":"range"}}`, ""},
		{"demo", "", "no filter"},
		{"@time=2020-01-01,", "", "no datasource id"},
		{"demo@time=yesterday,", "", "neither an ISO 8601 time nor a period"},
		{"demo@time=P,", "", "neither"},
		{"demo@time=,", "", "both ends empty"},
		{"demo@time=2020-01-01", "", "not START,END"},
		{"demo@bbox=1,2,3", "", "bbox"},
		{"demo@bbox=10,0,5,1", "", "west first"},
		{"demo@bbox=0,95,1,96", "", "within -90..90"},
		{"demo@bbox=0,NaN,1,2", "", "not a number"},
		{"demo@vars=a,,b", "", "not a variable name"},
		{"demo@level=5,1", "", "above"},
		{"demo@colour=red", "", `unknown key "colour"`},
		{"demo@time", "", "not key=value"},
		{"demo@vars=a@vars=b", "", "given twice"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			q, err := parseQueryName(c.name)
			if c.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), c.err)
				return
			}
			require.NoError(t, err)
			assert.JSONEq(t, c.want, string(q.query))
			assert.Equal(t, "demo", q.id)
		})
	}
}

// queryFixture: "alpha" is a Zarr datasource (driver zarr), "table_1" a
// table (driver onsql, learnt by staging), "empty_1" stages to no data.
func queryFixture(t *testing.T) *fixture {
	f := newFixture(t)
	f.cat.listed = []string{"alpha", "table_1", "empty_1"}
	f.cat.infos = map[string]*Info{
		"alpha":   {ID: "alpha", Name: "Alpha", Driver: "zarr", Tags: []string{"wind"}},
		"table_1": {ID: "table_1", Name: "Stations", Driver: "onsql"},
		"empty_1": {ID: "empty_1", Driver: "onsql"},
	}
	f.cat.staged = map[string]Staged{
		`{"datasource":"table_1"}`:                                                           {QHash: "t1", Container: "dataframe"},
		`{"datasource":"alpha","variables":["grid"]}`:                                        {QHash: "q1", Container: ContainerDataset},
		`{"datasource":"table_1","timefilter":{"times":["2020-01-01",null],"type":"range"}}`: {QHash: "q2", Container: "dataframe"},
	}
	f.cat.stageErr = map[string]error{
		`{"datasource":"empty_1"}`:                    fmt.Errorf("stage: %w", ErrNoData),
		`{"datasource":"alpha","variables":["nope"]}`: fmt.Errorf("stage: 422 \"unknown variable nope\": %w", ErrBadQuery),
		`{"datasource":"alpha","timefilter":{"times":["1900-01-01","1900-01-02"],"type":"range"}}`: fmt.Errorf("stage: %w", ErrNoData),
	}
	f.cat.queries = map[string]zarr.Store{"q1": testStore()}
	f.cat.tables = map[string][]byte{"table_1": []byte("PAR1 whole table PAR1"), "table_1?q2": []byte("PAR1 rows since 2020 PAR1")}
	return f
}

func TestContainerDecidesTheDirectory(t *testing.T) {
	f := queryFixture(t)
	// A Zarr driver needs no stage; the store plus its description.
	assert.Contains(t, f.list(t, "alpha"), ".zgroup")
	assert.Contains(t, f.list(t, "alpha"), infoName)
	assert.Zero(t, f.cat.stageCount(), "a zarr driver is not staged")

	// A table: one file, downloaded whole at its lookup, exact size.
	assert.Equal(t, []string{infoName, "table_1.parquet"}, f.list(t, "table_1"))
	assert.Equal(t, 1, f.cat.stageCount())
	assert.Zero(t, f.cat.opens, "listing a table directory downloads nothing")
	node, out, errno := f.lookup(t, f.root, "table_1/table_1.parquet")
	require.Zero(t, errno)
	assert.EqualValues(t, len("PAR1 whole table PAR1"), out.Attr.Size)
	assert.Equal(t, "PAR1 whole table PAR1", readAll(t, node))
	_, _, errno = f.lookup(t, f.root, "table_1/table_1.parquet")
	require.Zero(t, errno)
	assert.Equal(t, 1, f.cat.opens, "downloaded once")
	assert.Equal(t, 1, f.cat.stageCount(), "staged once per TTL")
	_, _, errno = f.lookup(t, f.root, "table_1/.zgroup")
	assert.Equal(t, syscall.ENOENT, errno)

	// After the TTL the container is asked again, once.
	f.advance(2 * time.Minute)
	f.list(t, "table_1")
	assert.Equal(t, 2, f.cat.stageCount())

	// No data: an empty directory (but its description).
	assert.Equal(t, []string{infoName}, f.list(t, "empty_1"))
}

func TestDescriptionFile(t *testing.T) {
	f := queryFixture(t)
	for path, want := range map[string]Info{
		"alpha/" + infoName:   {ID: "alpha", Name: "Alpha", Driver: "zarr", Container: ContainerDataset, Tags: []string{"wind"}},
		"table_1/" + infoName: {ID: "table_1", Name: "Stations", Driver: "onsql", Container: "dataframe"},
	} {
		node, out, errno := f.lookup(t, f.root, path)
		require.Zero(t, errno, path)
		text := readAll(t, node)
		assert.EqualValues(t, len(text), out.Attr.Size)
		var got Info
		require.NoError(t, json.Unmarshal([]byte(text), &got), path)
		assert.Equal(t, want, got, path)
		assert.Equal(t, uint32(0o444), out.Attr.Mode&0o777)
	}
}

func TestQueryPaths(t *testing.T) {
	f := queryFixture(t)
	// A dataset query: a Zarr store served from the query's keys.
	node, _, errno := f.lookup(t, f.root, "alpha@vars=grid/grid/0.0")
	require.Zero(t, errno)
	assert.Equal(t, "aaaaaa", readAll(t, node))
	q1 := f.cat.queries["q1"].(*memStore)
	assert.Equal(t, 1, q1.getCount("grid/0.0"))
	assert.Zero(t, f.store.getCount("grid/0.0"), "the datasource's own keys are not read")
	_, _, errno = f.lookup(t, f.root, "alpha@vars=grid/grid/0.0")
	require.Zero(t, errno)
	assert.Equal(t, 1, f.cat.stageCount(), "staged once per name per TTL")

	var desc Info
	node, _, errno = f.lookup(t, f.root, "alpha@vars=grid/"+infoName)
	require.Zero(t, errno)
	require.NoError(t, json.Unmarshal([]byte(readAll(t, node)), &desc))
	assert.JSONEq(t, `{"datasource":"alpha","variables":["grid"]}`, string(desc.Query))

	// A table query: ID.parquet holding the query's rows.
	node, _, errno = f.lookup(t, f.root, "table_1@time=2020-01-01,/table_1.parquet")
	require.Zero(t, errno)
	assert.Equal(t, "PAR1 rows since 2020 PAR1", readAll(t, node))

	// Queries are never listed.
	s, errno := f.root.Readdir(context.Background())
	require.Zero(t, errno)
	for _, n := range names(t, s) {
		assert.NotContains(t, n, "@")
	}

	// Errors: malformed EINVAL (no request), refused EINVAL, no data ENOENT,
	// each remembered for the TTL.
	before := f.cat.stageCount()
	_, _, errno = f.lookup(t, f.root, "alpha@colour=red")
	assert.Equal(t, syscall.EINVAL, errno)
	assert.Equal(t, before, f.cat.stageCount())
	for i := 0; i < 2; i++ {
		_, _, errno = f.lookup(t, f.root, "alpha@vars=nope")
		assert.Equal(t, syscall.EINVAL, errno)
		_, _, errno = f.lookup(t, f.root, "alpha@time=1900-01-01,1900-01-02")
		assert.Equal(t, syscall.ENOENT, errno)
	}
	assert.Equal(t, before+2, f.cat.stageCount())
}

func TestFixedQueriesAreListed(t *testing.T) {
	f := queryFixture(t)
	f.root.opt.Queries = map[string][]byte{"my_grid": []byte(`{"datasource":"alpha","variables":["grid"]}`)}
	s, errno := f.root.Readdir(context.Background())
	require.Zero(t, errno)
	assert.Contains(t, names(t, s), "my_grid")
	node, _, errno := f.lookup(t, f.root, "my_grid/grid/0.1")
	require.Zero(t, errno)
	assert.Equal(t, "bbbbbb", readAll(t, node))
	assert.True(t, strings.HasPrefix(f.cat.stages[0], `{"datasource":"alpha"`))
}

func TestLargeTableGoesToTableDir(t *testing.T) {
	f := queryFixture(t)
	dir := t.TempDir()
	f.root.opt.TableDir = dir
	big := bytes.Repeat([]byte("0123456789abcdef"), (tableMemory/16)+1000)
	f.cat.tables["table_1"] = big
	node, out, errno := f.lookup(t, f.root, "table_1/table_1.parquet")
	require.Zero(t, errno)
	assert.EqualValues(t, len(big), out.Attr.Size)
	tf := node.Operations().(*tableFile)
	require.NotNil(t, tf.t.file, "held in a file, not in memory")
	buf := make([]byte, 4096)
	res, errno := tf.Read(context.Background(), nil, buf, int64(len(big)-100))
	require.Zero(t, errno)
	b, _ := res.Bytes(nil)
	assert.Equal(t, big[len(big)-100:], b)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, entries, "the file is unlinked at once")
}
