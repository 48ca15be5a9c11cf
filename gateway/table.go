package gateway

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress"
	"github.com/parquet-go/parquet-go/deprecated"
	"github.com/parquet-go/parquet-go/encoding"
	"github.com/parquet-go/parquet-go/format"
)

// Tabular datasources: a folder of DIR holding data.parquet (and no Zarr
// metadata) is a table, container "dataframe", or "geodataframe" when the
// file has GeoParquet metadata ("geo") or a column named geometry (or when
// its datasource.json says so). Its catalog driver is "onsql", as
// Datamesh's tables; GET /data/{id} answers the file's bytes, and a query
// on it answers a Parquet file at /oceanql/{qhash}?f=parquet.

// tableFile is the file that makes a folder a table.
const tableFile = "data.parquet"

// Column names a table query filters on.
var (
	tableTimeCols  = []string{"time"}
	tableLatCols   = []string{"latitude", "lat"}
	tableLonCols   = []string{"longitude", "lon"}
	tableLevelCols = []string{"level", "lev", "depth"}
	tableGeomCols  = []string{"geometry"}
)

// tableInfo is what the catalog knows of a table.
type tableInfo struct {
	columns []string
}

// isTable tells whether dir holds a table.
func isTable(dir string) bool {
	fi, err := os.Stat(filepath.Join(dir, tableFile))
	return err == nil && fi.Mode().IsRegular()
}

// openTable opens a table's Parquet file; the caller closes f.
func openTable(root *os.Root) (f *os.File, pf *parquet.File, fi fs.FileInfo, err error) {
	f, err = root.Open(tableFile)
	if err != nil {
		return nil, nil, nil, err
	}
	fi, err = f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", tableFile)
	}
	if err == nil {
		pf, err = parquet.OpenFile(f, fi.Size(), parquet.SkipBloomFilters(true))
	}
	if err != nil {
		f.Close()
		return nil, nil, nil, fmt.Errorf("%s: %w", tableFile, err)
	}
	return f, pf, fi, nil
}

// topColumn returns the first of names that is a top-level field of pf.
func topColumn(pf *parquet.File, names []string) *parquet.Column {
	for _, n := range names {
		if c := pf.Root().Column(n); c != nil {
			return c
		}
	}
	return nil
}

// loadTable fills ds as a table and builds its catalog Feature.
func loadTable(ds *datasource, ov *dsOverrides) error {
	f, pf, _, err := openTable(ds.root)
	if err != nil {
		return err
	}
	defer f.Close()
	info := &tableInfo{}
	for _, c := range pf.Root().Columns() {
		info.columns = append(info.columns, c.Name())
	}
	ds.container = containerDataFrame
	if _, geo := pf.Lookup("geo"); geo || topColumn(pf, tableGeomCols) != nil {
		ds.container = containerGeoDataFrame
	}
	if ov.Container != nil {
		switch *ov.Container {
		case containerDataFrame, containerGeoDataFrame:
			ds.container = *ov.Container
		default:
			return fmt.Errorf("%s: a table's container is %q or %q, not %q", overridesFile, containerDataFrame, containerGeoDataFrame, *ov.Container)
		}
	}
	ds.table, ds.metaFiles = info, []string{tableFile}
	ds.name, ds.description = ds.id, ""
	ov.applyNames(&ds.name, &ds.description)

	var tstart, tend any
	if c := topColumn(pf, tableTimeCols); c != nil {
		if lo, hi, ok := columnBounds(pf, c); ok {
			if conv, ok := tableTimeConv(c); ok {
				a, okA := conv(lo)
				b, okB := conv(hi)
				if okA && okB {
					tstart, tend = a.UTC().Format(time.RFC3339), b.UTC().Format(time.RFC3339)
				}
			}
		}
	}
	var geometry any
	if lat, lon := topColumn(pf, tableLatCols), topColumn(pf, tableLonCols); lat != nil && lon != nil {
		latLo, latHi, ok1 := columnBounds(pf, lat)
		lonLo, lonHi, ok2 := columnBounds(pf, lon)
		if ok1 && ok2 {
			a, okA := valueFloat(latLo)
			b, okB := valueFloat(latHi)
			c, okC := valueFloat(lonLo)
			d, okD := valueFloat(lonHi)
			if okA && okB && okC && okD {
				geometry = bboxPolygon([]float64{a, b}, []float64{c, d})
			}
		}
	}
	vars := map[string]any{}
	for _, c := range pf.Root().Columns() {
		vars[c.Name()] = map[string]any{"dims": []string{"index"}, "dtype": tableDtype(c), "attrs": map[string]any{}}
	}
	props := map[string]any{
		"name":        ds.name,
		"description": ds.description,
		"driver":      "onsql",
		"tstart":      tstart,
		"tend":        tend,
		"schema": map[string]any{"dims": map[string]int64{"index": pf.NumRows()}, "coords": map[string]any{},
			"data_vars": vars, "attrs": map[string]any{}},
		"tags": []string{},
	}
	ov.apply(props)
	ds.featureHead, ds.featureTail, err = buildFeature(ds.id, geometry, props)
	return err
}

// columnBounds are a leaf column's min and max over all row groups, from
// the statistics (no data read).
func columnBounds(pf *parquet.File, c *parquet.Column) (lo, hi parquet.Value, ok bool) {
	if !c.Leaf() {
		return lo, hi, false
	}
	for _, rg := range pf.RowGroups() {
		cc, isFile := rg.ColumnChunks()[c.Index()].(*parquet.FileColumnChunk)
		if !isFile {
			return lo, hi, false
		}
		mn, mx, found := cc.Bounds()
		if !found {
			if cc.NumValues() > cc.NullCount() {
				return lo, hi, false // values without statistics
			}
			continue
		}
		typ := c.Type()
		if !ok || typ.Compare(mn, lo) < 0 {
			lo = mn.Clone()
		}
		if !ok || typ.Compare(mx, hi) > 0 {
			hi = mx.Clone()
		}
		ok = true
	}
	return lo, hi, ok
}

// tableDtype names a column's type as pandas would.
func tableDtype(c *parquet.Column) string {
	if !c.Leaf() {
		return "object"
	}
	if _, ok := tableTimeConv(c); ok {
		return "datetime64[ns]"
	}
	switch c.Type().Kind() {
	case parquet.Boolean:
		return "bool"
	case parquet.Int32:
		return "int32"
	case parquet.Int64:
		return "int64"
	case parquet.Float:
		return "float32"
	case parquet.Double:
		return "float64"
	}
	return "object"
}

// tableTimeConv returns how to read a time column's values: timestamps
// (any unit; without UTC adjustment they are taken as UTC), dates and the
// legacy INT96.
func tableTimeConv(c *parquet.Column) (func(parquet.Value) (time.Time, bool), bool) {
	if !c.Leaf() || c.Repeated() {
		return nil, false
	}
	typ := c.Type()
	var unit time.Duration
	date := false
	if lt := typ.LogicalType(); lt != nil {
		switch v := lt.Value.(type) {
		case *format.TimestampType:
			if v.Unit.Value != nil {
				unit = v.Unit.Value.Duration()
			}
		case *format.DateType:
			date = true
		}
	}
	if ct := typ.ConvertedType(); unit == 0 && !date && ct != nil {
		switch *ct {
		case deprecated.TimestampMillis:
			unit = time.Millisecond
		case deprecated.TimestampMicros:
			unit = time.Microsecond
		case deprecated.Date:
			date = true
		}
	}
	switch {
	case unit != 0 && typ.Kind() == parquet.Int64:
		return func(v parquet.Value) (time.Time, bool) {
			if v.IsNull() {
				return time.Time{}, false
			}
			n := v.Int64()
			if unit > 1 && (n > math.MaxInt64/int64(unit) || n < math.MinInt64/int64(unit)) {
				return time.Time{}, false
			}
			return time.Unix(0, 0).UTC().Add(time.Duration(n) * unit), true
		}, true
	case date && typ.Kind() == parquet.Int32:
		return func(v parquet.Value) (time.Time, bool) {
			if v.IsNull() {
				return time.Time{}, false
			}
			return time.Unix(0, 0).UTC().AddDate(0, 0, int(v.Int32())), true
		}, true
	case typ.Kind() == parquet.Int96:
		return func(v parquet.Value) (time.Time, bool) {
			if v.IsNull() {
				return time.Time{}, false
			}
			i := v.Int96()
			nanos := int64(uint64(i[1])<<32 | uint64(i[0]))
			days := int(i[2]) - 2440588 // Julian day of 1970-01-01
			return time.Unix(0, 0).UTC().AddDate(0, 0, days).Add(time.Duration(nanos)), true
		}, true
	}
	return nil, false
}

// valueFloat reads a numeric value.
func valueFloat(v parquet.Value) (float64, bool) {
	if v.IsNull() {
		return 0, false
	}
	switch v.Kind() {
	case parquet.Double:
		return v.Double(), true
	case parquet.Float:
		return float64(v.Float()), true
	case parquet.Int32:
		return float64(v.Int32()), true
	case parquet.Int64:
		return float64(v.Int64()), true
	}
	return 0, false
}

// tableVersion identifies the table file's content: its size and mtime.
func tableVersion(fi fs.FileInfo) string {
	return fmt.Sprintf("%d-%d", fi.Size(), fi.ModTime().UnixNano())
}

// tableResult is a staged table query.
type tableResult struct {
	rows, size int64
	// path is the filtered Parquet file in the query folder ("": the
	// datasource's own data.parquet, unfiltered).
	path string
}

// filterTable writes the rows and columns of the table that q selects as
// a new Parquet file at dst; it returns the number of rows written.
func filterTable(ds *datasource, q *oceanQuery, dst string) (rows int64, qerr *queryError) {
	f, pf, _, err := openTable(ds.root)
	if err != nil {
		return 0, &queryError{status: 500, detail: fmt.Sprintf("cannot read table %q: %v", ds.id, err)}
	}
	defer f.Close()
	top := pf.Root().Columns()
	names := make([]string, len(top))
	for i, c := range top {
		names[i] = c.Name()
	}
	// Columns kept: the variables asked for, and the time, position and
	// geometry columns; all when no variables are named.
	keep := map[string]bool{}
	if q.Variables == nil {
		for _, n := range names {
			keep[n] = true
		}
	} else {
		for _, v := range q.Variables {
			if !slices.Contains(names, v) {
				return 0, badQuery("variable %q not found in table %q; its columns: %s", v, ds.id, strings.Join(names, ", "))
			}
			keep[v] = true
		}
		for _, group := range [][]string{tableTimeCols, tableLatCols, tableLonCols, tableGeomCols} {
			if c := topColumn(pf, group); c != nil {
				keep[c.Name()] = true
			}
		}
		// Columns filtered on are kept too.
		if c := topColumn(pf, tableLevelCols); c != nil && q.levelFilter {
			keep[c.Name()] = true
		}
		for _, cf := range q.CoordFilter {
			if slices.Contains(names, cf.Coord) {
				keep[cf.Coord] = true
			}
		}
	}
	var fields []parquet.Field
	for _, c := range top {
		if keep[c.Name()] {
			fields = append(fields, namedField{Node: rebuildNode(c), name: c.Name()})
		}
	}
	schema := parquet.NewSchema(pf.Schema().Name(), orderedGroup(fields))

	// The row tests, on the kept columns.
	type test struct {
		col int
		ok  func(parquet.Value) bool
	}
	var tests []test
	leaf := func(what string, group []string) (*parquet.Column, int, *queryError) {
		c := topColumn(pf, group)
		if c == nil || !c.Leaf() || c.Repeated() {
			return nil, 0, badQuery("%s: table %q has no %s column", what, ds.id, strings.Join(group, " or "))
		}
		lc, ok := schema.Lookup(c.Name())
		if !ok {
			return nil, 0, &queryError{status: 500, detail: "filter column lost"}
		}
		return c, lc.ColumnIndex, nil
	}
	numeric := func(what string, group []string, in func(float64) bool) *queryError {
		c, idx, qerr := leaf(what, group)
		if qerr != nil {
			return qerr
		}
		switch c.Type().Kind() {
		case parquet.Double, parquet.Float, parquet.Int32, parquet.Int64:
		default:
			return badQuery("%s: column %q of table %q is not numeric", what, c.Name(), ds.id)
		}
		tests = append(tests, test{idx, func(v parquet.Value) bool {
			x, ok := valueFloat(v)
			return ok && in(x)
		}})
		return nil
	}
	if q.timeFilter {
		c, idx, qerr := leaf("timefilter", tableTimeCols)
		if qerr != nil {
			return 0, qerr
		}
		conv, ok := tableTimeConv(c)
		if !ok {
			return 0, badQuery("timefilter: column %q of table %q is not a timestamp or date", c.Name(), ds.id)
		}
		tests = append(tests, test{idx, func(v parquet.Value) bool {
			t, ok := conv(v)
			return ok && (q.TimeStart == nil || !t.Before(*q.TimeStart)) && (q.TimeEnd == nil || !t.After(*q.TimeEnd))
		}})
	}
	if q.BBox != nil {
		w, s, e, n := q.BBox[0], q.BBox[1], q.BBox[2], q.BBox[3]
		if err := numeric("geofilter", tableLatCols, func(x float64) bool { return x >= s && x <= n }); err != nil {
			return 0, err
		}
		if err := numeric("geofilter", tableLonCols, func(x float64) bool { return lonInside(x, w, e) }); err != nil {
			return 0, err
		}
	}
	if q.levelFilter {
		err := numeric("levelfilter", tableLevelCols, func(x float64) bool {
			return (q.LevelLo == nil || x >= *q.LevelLo) && (q.LevelHi == nil || x <= *q.LevelHi)
		})
		if err != nil {
			return 0, err
		}
	}
	for _, cf := range q.CoordFilter {
		if err := numeric("coordfilter", []string{cf.Coord}, func(x float64) bool { return slices.Contains(cf.Values, x) }); err != nil {
			return 0, err
		}
	}

	out, err := os.Create(dst)
	if err != nil {
		return 0, &queryError{status: 500, detail: "cannot write the query result"}
	}
	defer out.Close()
	opts := []parquet.WriterOption{schema, parquet.CreatedBy("dmfs serve", "", "")}
	for _, kv := range pf.Metadata().KeyValueMetadata {
		// pandas' and Arrow's own schemas describe the original rows and
		// columns (a RangeIndex's length among them): left out, readers
		// fall back on the Parquet schema.
		if kv.Key == "pandas" || kv.Key == "ARROW:schema" {
			continue
		}
		opts = append(opts, parquet.KeyValueMetadata(kv.Key, kv.Value))
	}
	w := parquet.NewWriter(out, opts...)
	r := parquet.NewReader(pf, schema)
	defer r.Close()
	buf := make([]parquet.Row, 256)
	kept := make([]parquet.Row, 0, len(buf))
	for {
		n, rerr := r.ReadRows(buf)
		kept = kept[:0]
		for _, row := range buf[:n] {
			if q.Limit != nil && rows >= int64(*q.Limit) {
				break
			}
			ok := true
			for _, t := range tests {
				v, found := rowValue(row, t.col)
				if !found || !t.ok(v) {
					ok = false
					break
				}
			}
			if ok {
				kept = append(kept, row)
				rows++
			}
		}
		if len(kept) > 0 {
			if _, err := w.WriteRows(kept); err != nil {
				return 0, &queryError{status: 500, detail: fmt.Sprintf("cannot write the query result: %v", err)}
			}
		}
		if errors.Is(rerr, io.EOF) || (q.Limit != nil && rows >= int64(*q.Limit)) {
			break
		}
		if rerr != nil {
			return 0, &queryError{status: 500, detail: fmt.Sprintf("cannot read table %q: %v", ds.id, rerr)}
		}
		if n == 0 {
			break
		}
	}
	if err := w.Close(); err != nil {
		return 0, &queryError{status: 500, detail: fmt.Sprintf("cannot write the query result: %v", err)}
	}
	if err := out.Close(); err != nil {
		return 0, &queryError{status: 500, detail: "cannot write the query result"}
	}
	return rows, nil
}

// rowValue is the first value of column col in row.
func rowValue(row parquet.Row, col int) (parquet.Value, bool) {
	if col < len(row) && row[col].Column() == col {
		return row[col], true
	}
	for _, v := range row {
		if v.Column() == col {
			return v, true
		}
	}
	return parquet.Value{}, false
}

// rebuildNode makes a fresh schema node for a file column: its type and
// repetition, its compression, and the writer's default encoding (the
// file's, such as the legacy PLAIN_DICTIONARY, may not be writable).
// Groups are kept as they are.
func rebuildNode(c *parquet.Column) parquet.Node {
	if !c.Leaf() {
		return c
	}
	n := parquet.Leaf(c.Type())
	switch {
	case c.Optional():
		n = parquet.Optional(n)
	case c.Repeated():
		n = parquet.Repeated(n)
	default:
		n = parquet.Required(n)
	}
	if codec := c.Compression(); codec != nil {
		n = parquet.Compressed(n, codec)
	}
	return n
}

// orderedGroup is a group node whose fields keep the order given
// (parquet.Group sorts them by name), so that a filtered table keeps its
// column order.
type orderedGroup []parquet.Field

func (g orderedGroup) ID() int                     { return 0 }
func (g orderedGroup) String() string              { return "group" }
func (g orderedGroup) Type() parquet.Type          { return parquet.Group{}.Type() }
func (g orderedGroup) Optional() bool              { return false }
func (g orderedGroup) Repeated() bool              { return false }
func (g orderedGroup) Required() bool              { return true }
func (g orderedGroup) Leaf() bool                  { return false }
func (g orderedGroup) Fields() []parquet.Field     { return g }
func (g orderedGroup) Encoding() encoding.Encoding { return nil }
func (g orderedGroup) Compression() compress.Codec { return nil }
func (g orderedGroup) GoType() reflect.Type {
	grp := parquet.Group{}
	for _, f := range g {
		grp[f.Name()] = f
	}
	return grp.GoType()
}

// namedField is a node under a name.
type namedField struct {
	parquet.Node
	name string
}

func (f namedField) Name() string { return f.name }

// Value is for Go structs, which this gateway never reads rows into.
func (f namedField) Value(reflect.Value) reflect.Value { return reflect.Value{} }

// serveData answers GET/HEAD /data/{id}: a table's Parquet file, exactly.
func (s *Server) serveData(w http.ResponseWriter, r *http.Request, q *request) {
	if q.keyErr != nil {
		writeDetail(w, http.StatusBadRequest, q.keyErr.Error())
		return
	}
	ds := s.liveDatasource(w, q.arg)
	if ds == nil {
		return
	}
	if ds.table == nil {
		writeDetail(w, http.StatusUnsupportedMediaType,
			fmt.Sprintf("Datasource %q is a Zarr dataset: dmfs serve answers it at /zarr/%s/, not as a file", ds.id, ds.id))
		return
	}
	if !acceptsParquet(r.Header.Get("Accept")) {
		writeDetail(w, http.StatusNotAcceptable, fmt.Sprintf("dmfs serve answers table %q as application/parquet only", ds.id))
		return
	}
	f, err := ds.root.Open(tableFile)
	if err != nil {
		writeDetail(w, http.StatusNotFound, fmt.Sprintf("Table %q has no data", ds.id))
		return
	}
	serveParquet(w, r, f)
}

// serveParquet answers a Parquet file (GET or HEAD, ranges too) and
// closes f.
func serveParquet(w http.ResponseWriter, r *http.Request, f *os.File) {
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		writeDetail(w, http.StatusNotFound, "Not found.")
		return
	}
	w.Header().Set("Content-Type", "application/parquet")
	// An ETag as well as Last-Modified (whole seconds): a table replaced
	// within the second still changes it, so a client's copy kept under the
	// old one is never taken for the new (If-None-Match wins over
	// If-Modified-Since).
	w.Header().Set("ETag", fileETag(fi))
	http.ServeContent(w, r, "", fi.ModTime(), f)
}

// fileETag names a version of a file: its inode, size and mtime.
func fileETag(fi os.FileInfo) string {
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	return fmt.Sprintf(`"%x-%x-%x"`, ino, fi.Size(), fi.ModTime().UnixNano())
}

// acceptsParquet tells whether an Accept header allows Parquet.
func acceptsParquet(accept string) bool {
	if strings.TrimSpace(accept) == "" {
		return true
	}
	for _, part := range strings.Split(accept, ",") {
		mt, _, _ := strings.Cut(part, ";")
		switch strings.ToLower(strings.TrimSpace(mt)) {
		case "application/parquet", "application/x-parquet", "application/vnd.apache.parquet", "application/octet-stream", "application/*", "*/*":
			return true
		}
	}
	return false
}

// qhashOf digests the parts of a query's identity.
func qhashOf(parts ...[]byte) string {
	h := sha256.New224()
	for _, p := range parts {
		h.Write(p)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}
