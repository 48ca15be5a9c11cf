package gateway

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
)

// Subsetting a Zarr v2 dataset: the query's filters become, per dimension,
// the list of source indices kept (in source order); each kept array is
// written into a new Zarr v2 store with the same chunk shape, compressor
// and attributes. An output chunk that is exactly a source chunk (aligned,
// same extent) is copied byte for byte; any other is assembled from the
// decoded source chunks and written back with the source's compressor, edge
// chunks padded with the fill value as zarr writes them. A chunk with no
// source data is left out (it reads as fill value, as in the source).

// zarrArray is one v2 array of a dataset, with what subsetting needs.
type zarrArray struct {
	*arrayMeta
	raw      json.RawMessage // its .zarray document
	rawAttrs json.RawMessage // its .zattrs document (nil: none)
	itemsize int
	cOrder   bool
	fill     []byte // one element of fill value
	compID   string // "" (none), "zlib", "gzip", or another codec
	level    int
	// undecodable says why the array's chunks cannot be decoded and written
	// back ("": they can).
	undecodable string
}

// datasetMeta is a dataset's metadata, read fresh from disk.
type datasetMeta struct {
	v3, single bool
	zgroup     json.RawMessage // nil: none
	zattrs     json.RawMessage // nil: none
	attrs      map[string]any
	arrays     map[string]*zarrArray
	names      []string // sorted
}

// readDatasetMeta reads a store's root metadata: its consolidated document
// when there is one, else each node's files.
func readDatasetMeta(root *os.Root) (*datasetMeta, error) {
	m := &datasetMeta{attrs: map[string]any{}, arrays: map[string]*zarrArray{}}
	if fi, err := root.Stat("zarr.json"); err == nil && fi.Mode().IsRegular() {
		m.v3 = true
		return m, nil
	}
	docs := map[string]json.RawMessage{}
	if raw, err := root.ReadFile(".zmetadata"); err == nil {
		var cons struct {
			Metadata map[string]json.RawMessage `json:"metadata"`
		}
		// Bare NaN (which Python's zarr may write in attributes) reads as
		// null: encoding/json refuses it.
		if err := json.Unmarshal(nonFiniteAsNull(raw), &cons); err != nil {
			return nil, fmt.Errorf(".zmetadata: %w", err)
		}
		docs = cons.Metadata
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	} else {
		for _, name := range []string{".zgroup", ".zattrs", ".zarray"} {
			if b, err := root.ReadFile(name); err == nil {
				docs[name] = b
			}
		}
		entries, err := fs.ReadDir(root.FS(), ".")
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			for _, name := range []string{".zarray", ".zattrs"} {
				if b, err := root.ReadFile(e.Name() + "/" + name); err == nil {
					docs[e.Name()+"/"+name] = b
				}
			}
		}
	}
	m.zgroup, m.zattrs = docs[".zgroup"], docs[".zattrs"]
	if m.zattrs != nil {
		if err := unmarshalZarrJSON(m.zattrs, &m.attrs); err != nil {
			return nil, fmt.Errorf(".zattrs: %w", err)
		}
	}
	if _, ok := docs[".zarray"]; ok {
		m.single = true
		return m, nil
	}
	for key, raw := range docs {
		name, ok := strings.CutSuffix(key, "/.zarray")
		if !ok || strings.Contains(name, "/") || name == "" {
			continue
		}
		a, err := parseZarrArray(name, raw, docs[name+"/.zattrs"])
		if err != nil {
			return nil, err
		}
		m.arrays[name] = a
		m.names = append(m.names, name)
	}
	sort.Strings(m.names)
	return m, nil
}

func parseZarrArray(name string, raw, rawAttrs json.RawMessage) (*zarrArray, error) {
	attrs := map[string]any{}
	if rawAttrs != nil {
		if err := unmarshalZarrJSON(rawAttrs, &attrs); err != nil {
			return nil, fmt.Errorf("%s/.zattrs: %w", name, err)
		}
	}
	am, err := parseV2Array(name, raw, attrs)
	if err != nil {
		return nil, err
	}
	var z struct {
		FillValue  json.RawMessage `json:"fill_value"`
		Order      string          `json:"order"`
		Compressor map[string]any  `json:"compressor"`
	}
	if err := unmarshalZarrJSON(raw, &z); err != nil {
		return nil, fmt.Errorf("%s/.zarray: %w", name, err)
	}
	a := &zarrArray{arrayMeta: am, raw: raw, rawAttrs: rawAttrs, cOrder: z.Order != "F"}
	why := func(format string, args ...any) {
		if a.undecodable == "" {
			a.undecodable = fmt.Sprintf(format, args...)
		}
	}
	if z.Order != "" && z.Order != "C" && z.Order != "F" {
		why("order %q is not C or F", z.Order)
	}
	kind, size, err := dtypeItemsize(am.dtype)
	if err != nil {
		why("%v", err)
	}
	a.itemsize = size
	if z.Compressor != nil {
		a.compID, _ = z.Compressor["id"].(string)
		a.level = 1 // numcodecs' Zlib and GZip default
		if l, ok := z.Compressor["level"].(float64); ok && l >= -1 && l <= 9 && l == math.Trunc(l) {
			a.level = int(l)
		}
		switch a.compID {
		case "zlib", "gzip":
		default:
			why("compressor %q cannot be decoded by dmfs serve (only none, zlib and gzip)", a.compID)
		}
	}
	if len(am.filters) > 0 {
		why("filters cannot be decoded by dmfs serve")
	}
	if err == nil {
		fill, ferr := fillBytes(am.dtype, kind, size, z.FillValue)
		if ferr != nil {
			why("fill value: %v", ferr)
		}
		a.fill = fill
	}
	for _, c := range am.chunks {
		if c <= 0 {
			why("chunk shape %v is not positive", am.chunks)
			break
		}
	}
	return a, nil
}

// dtypeItemsize reads a fixed-size v2 dtype ("<f4", "|u1", "<M8[ns]",
// "<U10").
func dtypeItemsize(dt string) (kind byte, size int, err error) {
	if len(dt) < 3 || !strings.ContainsRune("<>|=", rune(dt[0])) {
		return 0, 0, fmt.Errorf("dtype %q cannot be subset by dmfs serve", dt)
	}
	kind = dt[1]
	rest := dt[2:]
	if kind == 'M' || kind == 'm' {
		rest, _, _ = strings.Cut(rest, "[")
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n <= 0 || !strings.ContainsRune("biufcmMSUV", rune(kind)) {
		return 0, 0, fmt.Errorf("dtype %q cannot be subset by dmfs serve", dt)
	}
	if kind == 'U' {
		n *= 4
	}
	return kind, n, nil
}

// fillBytes encodes one element of an array's fill value.
func fillBytes(dt string, kind byte, size int, raw json.RawMessage) ([]byte, error) {
	out := make([]byte, size)
	if isNull(raw) {
		return out, nil // zarr leaves such chunks uninitialised; zeros do
	}
	var order binary.ByteOrder = binary.LittleEndian
	if dt[0] == '>' {
		order = binary.BigEndian
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, err
	}
	switch kind {
	case 'f':
		var f float64
		switch x := v.(type) {
		case float64:
			f = x
		case string:
			switch x {
			case "NaN":
				f = math.NaN()
			case "Infinity":
				f = math.Inf(1)
			case "-Infinity":
				f = math.Inf(-1)
			default:
				return nil, fmt.Errorf("%q is not a float", x)
			}
		default:
			return nil, fmt.Errorf("%s is not a float", raw)
		}
		switch size {
		case 4:
			order.PutUint32(out, math.Float32bits(float32(f)))
		case 8:
			order.PutUint64(out, math.Float64bits(f))
		default:
			if f != 0 {
				return nil, fmt.Errorf("float%d fill values other than 0 are not supported", size*8)
			}
		}
		return out, nil
	case 'i', 'u', 'm', 'M':
		var n int64
		switch x := v.(type) {
		case float64:
			if x != math.Trunc(x) {
				return nil, fmt.Errorf("%s is not an integer", raw)
			}
			var err error
			if n, err = strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64); err != nil {
				u, uerr := strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
				if uerr != nil {
					n = int64(x)
				} else {
					n = int64(u)
				}
			}
		case string:
			if x != "NaT" {
				return nil, fmt.Errorf("%q is not an integer", x)
			}
			n = math.MinInt64
		default:
			return nil, fmt.Errorf("%s is not an integer", raw)
		}
		switch size {
		case 1:
			out[0] = byte(n)
		case 2:
			order.PutUint16(out, uint16(n))
		case 4:
			order.PutUint32(out, uint32(n))
		case 8:
			order.PutUint64(out, uint64(n))
		default:
			return nil, fmt.Errorf("integer size %d", size)
		}
		return out, nil
	case 'b':
		if b, ok := v.(bool); ok && b {
			out[0] = 1
		} else if f, ok := v.(float64); ok && f != 0 {
			out[0] = 1
		}
		return out, nil
	}
	// Strings, bytes, complex: only a zero fill value is understood.
	switch x := v.(type) {
	case float64:
		if x == 0 {
			return out, nil
		}
	case string:
		if x == "" {
			return out, nil
		}
	}
	return nil, fmt.Errorf("fill value %s of dtype %q is not supported", raw, dt)
}

// coord1D returns the first of names that is a 1-D array.
func (m *datasetMeta) coord1D(names ...string) *zarrArray {
	for _, n := range names {
		if a := m.arrays[n]; a != nil && len(a.shape) == 1 {
			return a
		}
	}
	return nil
}

// timeCoord finds the time coordinate: "time", else a 1-D array whose
// standard_name is time or whose axis is T.
func (m *datasetMeta) timeCoord() *zarrArray {
	if a := m.coord1D("time"); a != nil {
		return a
	}
	for _, n := range m.names {
		a := m.arrays[n]
		if len(a.shape) == 1 && (a.attrs["standard_name"] == "time" || a.attrs["axis"] == "T") {
			return a
		}
	}
	return nil
}

func (m *datasetMeta) latCoord() *zarrArray   { return m.coord1D("lat", "latitude") }
func (m *datasetMeta) lonCoord() *zarrArray   { return m.coord1D("lon", "longitude") }
func (m *datasetMeta) levelCoord() *zarrArray { return m.coord1D("level", "lev", "depth") }

// coordmap maps Datamesh's coordinate keys (t, x, y, z) to the dataset's
// coordinate names.
func (m *datasetMeta) coordmap() map[string]string {
	out := map[string]string{}
	for key, a := range map[string]*zarrArray{"t": m.timeCoord(), "x": m.lonCoord(), "y": m.latCoord(), "z": m.levelCoord()} {
		if a != nil {
			out[key] = a.name
		}
	}
	return out
}

// subsetPlan is what a query keeps of a dataset.
type subsetPlan struct {
	ds     *datasource
	meta   *datasetMeta
	arrays []*zarrArray // kept, sorted by name
	// sel holds, per filtered dimension, the source indices kept, in
	// order; a dimension not in sel is kept whole.
	sel map[string][]int
}

// arraySel is a's selection per axis (nil: the whole axis).
func (p *subsetPlan) arraySel(a *zarrArray) [][]int {
	out := make([][]int, len(a.shape))
	for d, dim := range a.dims {
		if s, ok := p.sel[dim]; ok {
			out[d] = s
		}
	}
	return out
}

func outShape(a *zarrArray, sel [][]int) []int {
	out := slices.Clone(a.shape)
	for d, s := range sel {
		if s != nil {
			out[d] = len(s)
		}
	}
	return out
}

func product(v []int) int64 {
	n := int64(1)
	for _, x := range v {
		n *= int64(x)
	}
	return n
}

// planSubset works out what q keeps of the dataset ds. noData: the
// selection is empty (204).
func planSubset(ds *datasource, q *oceanQuery) (plan *subsetPlan, noData bool, qerr *queryError) {
	meta, err := readDatasetMeta(ds.root)
	if err != nil {
		return nil, false, &queryError{status: 500, detail: fmt.Sprintf("cannot read the metadata of %q: %v", ds.id, err)}
	}
	if meta.v3 {
		return nil, false, badQuery("dmfs serve subsets Zarr v2 stores only; %q is Zarr v3 (query it without filters or variables)", ds.id)
	}
	if meta.single {
		return nil, false, badQuery("%q is a single array, not a dataset: query it without filters or variables", ds.id)
	}
	p := &subsetPlan{ds: ds, meta: meta, sel: map[string][]int{}}

	// The arrays kept: the variables asked for, and the coordinates they
	// use.
	kept := map[string]bool{}
	if q.Variables == nil {
		for _, n := range meta.names {
			kept[n] = true
		}
	} else {
		dimsUsed := map[string]bool{}
		for _, v := range q.Variables {
			a := meta.arrays[v]
			if a == nil {
				return nil, false, badQuery("variable %q not found in %q; its variables: %s", v, ds.id, strings.Join(meta.names, ", "))
			}
			kept[v] = true
			for _, d := range a.dims {
				dimsUsed[d] = true
			}
			if c, ok := a.attrs["coordinates"].(string); ok {
				for _, n := range strings.Fields(c) {
					if meta.arrays[n] != nil {
						kept[n] = true
					}
				}
			}
		}
		var global []string
		if c, ok := meta.attrs["coordinates"].(string); ok {
			global = strings.Fields(c)
		}
		for _, n := range meta.names {
			a := meta.arrays[n]
			if len(a.dims) == 1 && a.dims[0] == n && dimsUsed[n] {
				kept[n] = true // a dimension coordinate
			}
			if slices.Contains(global, n) && len(a.dims) > 0 {
				inside := true
				for _, d := range a.dims {
					inside = inside && dimsUsed[d]
				}
				if inside {
					kept[n] = true
				}
			}
		}
	}
	for _, n := range meta.names {
		if kept[n] {
			p.arrays = append(p.arrays, meta.arrays[n])
		}
	}

	// The filters, as masks per dimension.
	masks := map[string][]bool{}
	and := func(a *zarrArray, m []bool) {
		dim := a.dimNames()[0]
		if old, ok := masks[dim]; ok && len(old) == len(m) {
			for i := range m {
				m[i] = m[i] && old[i]
			}
		}
		masks[dim] = m
	}
	values := func(what string, a *zarrArray) ([]float64, *queryError) {
		v, err := readArray1D(ds, a.arrayMeta)
		if err != nil {
			return nil, badQuery("%s: cannot decode coordinate %q of %q: %v", what, a.name, ds.id, err)
		}
		return v, nil
	}
	if q.timeFilter {
		tc := meta.timeCoord()
		if tc == nil {
			return nil, false, badQuery("timefilter: %q has no time coordinate", ds.id)
		}
		vals, qerr := values("timefilter", tc)
		if qerr != nil {
			return nil, false, qerr
		}
		dec, ok := cfTimeDecoder(tc.attrs)
		if !ok {
			return nil, false, badQuery("timefilter: the time coordinate %q of %q has units %q (calendar %v) that dmfs serve cannot decode",
				tc.name, ds.id, tc.attrs["units"], tc.attrs["calendar"])
		}
		m := make([]bool, len(vals))
		for i, v := range vals {
			t, ok := dec(v)
			m[i] = ok && (q.TimeStart == nil || !t.Before(*q.TimeStart)) && (q.TimeEnd == nil || !t.After(*q.TimeEnd))
		}
		and(tc, m)
	}
	if q.BBox != nil {
		lat, lon := meta.latCoord(), meta.lonCoord()
		if lat == nil || lon == nil {
			return nil, false, badQuery("geofilter: %q has no 1-D lat/lon or latitude/longitude coordinates", ds.id)
		}
		latV, qerr := values("geofilter", lat)
		if qerr != nil {
			return nil, false, qerr
		}
		lonV, qerr := values("geofilter", lon)
		if qerr != nil {
			return nil, false, qerr
		}
		w, s, e, n := q.BBox[0], q.BBox[1], q.BBox[2], q.BBox[3]
		latM := make([]bool, len(latV))
		for i, v := range latV {
			latM[i] = v >= s && v <= n
		}
		lonM := make([]bool, len(lonV))
		for i, v := range lonV {
			lonM[i] = lonInside(v, w, e)
		}
		if lat.dimNames()[0] == lon.dimNames()[0] {
			if len(latM) != len(lonM) {
				return nil, false, badQuery("geofilter: %q and %q differ in length", lat.name, lon.name)
			}
			for i := range latM { // points: both inside
				latM[i] = latM[i] && lonM[i]
			}
			and(lat, latM)
		} else {
			and(lat, latM)
			and(lon, lonM)
		}
	}
	if q.levelFilter {
		lc := meta.levelCoord()
		if lc == nil {
			return nil, false, badQuery("levelfilter: %q has no 1-D level, lev or depth coordinate", ds.id)
		}
		vals, qerr := values("levelfilter", lc)
		if qerr != nil {
			return nil, false, qerr
		}
		m := make([]bool, len(vals))
		for i, v := range vals {
			m[i] = (q.LevelLo == nil || v >= *q.LevelLo) && (q.LevelHi == nil || v <= *q.LevelHi)
		}
		and(lc, m)
	}
	for _, cf := range q.CoordFilter {
		c := meta.coord1D(cf.Coord)
		if c == nil {
			return nil, false, badQuery("coordfilter: %q has no 1-D coordinate %q", ds.id, cf.Coord)
		}
		vals, qerr := values("coordfilter", c)
		if qerr != nil {
			return nil, false, qerr
		}
		m := make([]bool, len(vals))
		for i, v := range vals {
			m[i] = slices.Contains(cf.Values, v)
		}
		and(c, m)
	}
	if q.Limit != nil {
		return nil, false, badQuery("limit applies to tables; %q is a dataset", ds.id)
	}
	for dim, m := range masks {
		var idx []int
		for i, ok := range m {
			if ok {
				idx = append(idx, i)
			}
		}
		if len(idx) == len(m) {
			continue // all kept: as unfiltered
		}
		if idx == nil {
			idx = []int{}
		}
		p.sel[dim] = idx
	}

	// The kept arrays must agree with the coordinates on sizes, and be
	// decodable where they are cut.
	for _, a := range p.arrays {
		cut := false
		for d, dim := range a.dims {
			s, ok := p.sel[dim]
			if !ok {
				continue
			}
			if m := masks[dim]; a.shape[d] != len(m) {
				return nil, false, badQuery("variable %q: dimension %q has %d elements, its coordinate %d", a.name, dim, a.shape[d], len(m))
			}
			if len(s) == 0 {
				noData = true
			}
			cut = true
		}
		if cut && a.undecodable != "" {
			return nil, false, badQuery("variable %q of %q cannot be subset: %s", a.name, ds.id, a.undecodable)
		}
	}
	if noData {
		return nil, true, nil
	}
	return p, false, nil
}

// lonInside tells whether longitude x is in [w, e] on the circle, so that a
// bbox in -180..180 selects from a 0..360 store and back, and w > e crosses
// the antimeridian.
func lonInside(x, w, e float64) bool {
	if math.IsNaN(x) {
		return false
	}
	width := e - w
	if width >= 360 {
		return true
	}
	if width < 0 {
		width = math.Mod(width, 360) + 360
	}
	d := math.Mod(x-w, 360)
	if d < 0 {
		d += 360
	}
	return d <= width+1e-9 || d >= 360-1e-9
}

// selectionJSON is the plan in a canonical form, for the qhash.
func (p *subsetPlan) selectionJSON() []byte {
	type arr struct {
		Name string  `json:"name"`
		Sel  [][]int `json:"sel"` // runs [start, end) per axis; null: whole
	}
	var arrs []arr
	for _, a := range p.arrays {
		sel := p.arraySel(a)
		runs := make([][]int, len(sel))
		for d, s := range sel {
			if s == nil {
				continue
			}
			r := []int{}
			for i := 0; i < len(s); {
				j := i + 1
				for j < len(s) && s[j] == s[j-1]+1 {
					j++
				}
				r = append(r, s[i], s[j-1]+1)
				i = j
			}
			runs[d] = r
		}
		arrs = append(arrs, arr{Name: a.name, Sel: runs})
	}
	b, _ := json.Marshal(arrs)
	return b
}

// version is a digest of the files the plan reads (path, size, mtime):
// the store's root metadata and the kept arrays' folders, so that a
// changed store never answers from a stale result.
func (p *subsetPlan) version() (string, error) {
	h := sha256.New()
	add := func(name string, fi fs.FileInfo) {
		fmt.Fprintf(h, "%s\x00%d\x00%d\n", name, fi.Size(), fi.ModTime().UnixNano())
	}
	for _, name := range rootMetadata {
		if fi, err := p.ds.root.Stat(name); err == nil {
			add(name, fi)
		}
	}
	fsys := p.ds.root.FS()
	for _, a := range p.arrays {
		err := fs.WalkDir(fsys, a.name, func(name string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				return nil
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			add(name, fi)
			return nil
		})
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sizes returns the result's uncompressed bytes and its elements (those of
// the data variables, or of every array when only coordinates are kept).
func (p *subsetPlan) sizes() (size, dlen int64) {
	var all int64
	for _, a := range p.arrays {
		n := product(outShape(a, p.arraySel(a)))
		size += n * int64(a.itemsize)
		all += n
		if !(len(a.dims) == 1 && a.dims[0] == a.name) {
			dlen += n
		}
	}
	if dlen == 0 {
		dlen = all
	}
	return size, dlen
}

// materialise writes the subset as a Zarr v2 store with consolidated
// metadata into dst, which must not exist.
func (p *subsetPlan) materialise(ctx context.Context, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	docs := map[string]json.RawMessage{}
	put := func(key string, doc json.RawMessage) error {
		docs[key] = doc
		return writeRaw(filepath.Join(dst, filepath.FromSlash(key)), doc)
	}
	zgroup := p.meta.zgroup
	if zgroup == nil {
		zgroup = json.RawMessage(`{"zarr_format": 2}`)
	}
	if err := put(".zgroup", zgroup); err != nil {
		return err
	}
	if p.meta.zattrs != nil {
		if err := put(".zattrs", p.meta.zattrs); err != nil {
			return err
		}
	}
	eg, gctx := errgroup.WithContext(ctx)
	eg.SetLimit(runtime.GOMAXPROCS(0))
	for _, a := range p.arrays {
		sel := p.arraySel(a)
		zarray, err := withShape(a.raw, outShape(a, sel))
		if err != nil {
			return fmt.Errorf("%s/.zarray: %w", a.name, err)
		}
		if err := put(a.name+"/.zarray", zarray); err != nil {
			return err
		}
		if a.rawAttrs != nil {
			if err := put(a.name+"/.zattrs", a.rawAttrs); err != nil {
				return err
			}
		}
		whole := true
		for _, s := range sel {
			whole = whole && s == nil
		}
		if whole {
			if err := copyArrayChunks(gctx, p.ds.root, a.name, dst); err != nil {
				return err
			}
			continue
		}
		if err := subsetArrayChunks(gctx, eg, p.ds.root, a, sel, dst); err != nil {
			return err
		}
	}
	if err := eg.Wait(); err != nil {
		return err
	}
	return writeRaw(filepath.Join(dst, ".zmetadata"), consolidate(docs))
}

// withShape returns a .zarray document with another shape, every other
// field as it was.
func withShape(raw json.RawMessage, shape []int) (json.RawMessage, error) {
	var doc map[string]any
	dec := json.NewDecoder(bytes.NewReader(nonFiniteAsNull(raw)))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return nil, err
	}
	doc["shape"] = shape
	return marshalNoEscape(doc, "    ")
}

func marshalNoEscape(v any, indent string) (json.RawMessage, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", indent)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

// consolidate builds .zmetadata from the documents as they are (bare NaN
// in attributes included, which Python's json reads).
func consolidate(docs map[string]json.RawMessage) []byte {
	keys := make([]string, 0, len(docs))
	for k := range docs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	b.WriteString("{\n    \"metadata\": {")
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		kj, _ := json.Marshal(k)
		fmt.Fprintf(&b, "\n        %s: ", kj)
		b.Write(bytes.TrimSpace(docs[k]))
	}
	b.WriteString("\n    },\n    \"zarr_consolidated_format\": 1\n}\n")
	return b.Bytes()
}

func writeRaw(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}

// copyArrayChunks copies an array kept whole: every key in its folder but
// its metadata, byte for byte.
func copyArrayChunks(ctx context.Context, root *os.Root, name, dst string) error {
	return fs.WalkDir(root.FS(), name, func(key string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && key == name {
				return nil // an array with no chunk written
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() || key == name+"/.zarray" || key == name+"/.zattrs" {
			return nil
		}
		if !d.Type().IsRegular() && d.Type()&fs.ModeSymlink == 0 {
			return nil
		}
		data, err := root.ReadFile(key)
		if err != nil {
			return nil // a symlink leading outside the store: not a key
		}
		return writeRaw(filepath.Join(dst, filepath.FromSlash(key)), data)
	})
}

// chunkKey is the v2 key of a chunk of a.
func (a *zarrArray) chunkKey(idx []int) string {
	if len(idx) == 0 {
		return a.name + "/0"
	}
	parts := make([]string, len(idx))
	for d, i := range idx {
		parts[d] = strconv.Itoa(i)
	}
	return a.name + "/" + strings.Join(parts, a.separator)
}

// axisGroup is the part of an output chunk's axis that comes from one
// source chunk: pairs of (output, source) positions within the chunks.
type axisGroup struct {
	chunk         int
	out, src      []int
	contiguousRun bool // out and src both consecutive
}

// subsetArrayChunks queues the writing of every output chunk of a cut
// array on eg.
func subsetArrayChunks(ctx context.Context, eg *errgroup.Group, root *os.Root, a *zarrArray, sel [][]int, dst string) error {
	shape := outShape(a, sel)
	nd := len(shape)
	grid := make([]int, nd)
	for d := range grid {
		grid[d] = (shape[d] + a.chunks[d] - 1) / a.chunks[d]
	}
	chunkElems := int(product(a.chunks))
	// Element strides within a chunk, for C or F order.
	stride := make([]int, nd)
	acc := 1
	for i := range nd {
		d := nd - 1 - i
		if !a.cOrder {
			d = i
		}
		stride[d] = acc
		acc *= a.chunks[d]
	}
	// Axes from the largest stride to the smallest.
	axes := make([]int, nd)
	for i := range axes {
		axes[i] = i
	}
	sort.SliceStable(axes, func(i, j int) bool { return stride[axes[i]] > stride[axes[j]] })

	srcIndex := func(d, k int) int {
		if sel[d] == nil {
			return k
		}
		return sel[d][k]
	}
	var werr error
	forEachIndex(grid, func(c []int) bool {
		if ctx.Err() != nil {
			werr = ctx.Err()
			return false
		}
		c = slices.Clone(c)
		eg.Go(func() error {
			if err := ctx.Err(); err != nil {
				return err
			}
			groups := make([][]axisGroup, nd)
			aligned := true
			srcChunk := make([]int, nd)
			for d := range nd {
				C := a.chunks[d]
				start := c[d] * C
				n := min(C, shape[d]-start)
				s0 := srcIndex(d, start)
				contiguous := true
				for k := range n {
					s := srcIndex(d, start+k)
					contiguous = contiguous && s == s0+k
					g := &groups[d]
					if len(*g) == 0 || (*g)[len(*g)-1].chunk != s/C {
						*g = append(*g, axisGroup{chunk: s / C, contiguousRun: true})
					}
					last := &(*g)[len(*g)-1]
					if m := len(last.out); m > 0 && (last.out[m-1] != k-1 || last.src[m-1] != s%C-1) {
						last.contiguousRun = false
					}
					last.out = append(last.out, k)
					last.src = append(last.src, s%C)
				}
				srcChunk[d] = s0 / C
				aligned = aligned && contiguous && s0%C == 0 && (n == C || s0+n == a.shape[d])
			}
			outKey := a.chunkKey(c)
			if aligned {
				data, err := root.ReadFile(filepath.FromSlash(a.chunkKey(srcChunk)))
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				if err != nil {
					return err
				}
				return writeRaw(filepath.Join(dst, filepath.FromSlash(outKey)), data)
			}
			size := a.itemsize
			buf := bytes.Repeat(a.fill, chunkElems)
			present := false
			sizes := make([]int, nd)
			for d := range nd {
				sizes[d] = len(groups[d])
			}
			var gerr error
			forEachIndex(sizes, func(gi []int) bool {
				for d := range nd {
					srcChunk[d] = groups[d][gi[d]].chunk
				}
				raw, err := root.ReadFile(filepath.FromSlash(a.chunkKey(srcChunk)))
				if errors.Is(err, fs.ErrNotExist) {
					return true // fill value
				}
				if err != nil {
					gerr = err
					return false
				}
				src, err := decodeChunk(a.compID, raw, chunkElems*size)
				if err != nil {
					gerr = fmt.Errorf("%s: %w", a.chunkKey(srcChunk), err)
					return false
				}
				present = true
				var rec func(level, oo, so int)
				rec = func(level, oo, so int) {
					d := axes[level]
					g := &groups[d][gi[d]]
					if level == nd-1 {
						if stride[d] == 1 && g.contiguousRun {
							o, s, n := (oo+g.out[0])*size, (so+g.src[0])*size, len(g.out)*size
							copy(buf[o:o+n], src[s:s+n])
							return
						}
						for i := range g.out {
							o, s := (oo+g.out[i]*stride[d])*size, (so+g.src[i]*stride[d])*size
							copy(buf[o:o+size], src[s:s+size])
						}
						return
					}
					for i := range g.out {
						rec(level+1, oo+g.out[i]*stride[d], so+g.src[i]*stride[d])
					}
				}
				if nd > 0 {
					rec(0, 0, 0)
				}
				return true
			})
			if gerr != nil {
				return gerr
			}
			if !present {
				return nil
			}
			enc, err := encodeChunk(a.compID, a.level, buf)
			if err != nil {
				return err
			}
			return writeRaw(filepath.Join(dst, filepath.FromSlash(outKey)), enc)
		})
		return true
	})
	return werr
}

// decodeChunk decompresses a chunk that must hold exactly n bytes.
func decodeChunk(compID string, raw []byte, n int) ([]byte, error) {
	if compID == "" {
		if len(raw) != n {
			return nil, fmt.Errorf("chunk has %d bytes, expected %d", len(raw), n)
		}
		return raw, nil
	}
	out, err := decompressAtMost(compID, raw, int64(n)+1)
	if err != nil {
		return nil, err
	}
	if len(out) != n {
		return nil, fmt.Errorf("chunk decodes to %d bytes, expected %d", len(out), n)
	}
	return out, nil
}

func encodeChunk(compID string, level int, raw []byte) ([]byte, error) {
	var b bytes.Buffer
	var w io.WriteCloser
	var err error
	switch compID {
	case "":
		return raw, nil
	case "zlib":
		w, err = zlib.NewWriterLevel(&b, level)
	case "gzip":
		w, err = gzip.NewWriterLevel(&b, level)
	default:
		return nil, fmt.Errorf("compressor %q is not supported", compID)
	}
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(raw); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// wholeSizes estimates a whole dataset's uncompressed bytes and elements.
func wholeSizes(ds *datasource) (size, dlen int64) {
	sm, err := readStoreMeta(ds)
	if err != nil {
		return 0, 0
	}
	var all int64
	for _, a := range sm.arrays {
		n := product(a.shape)
		item := 0
		if a.format == 2 {
			_, item, _ = dtypeItemsize(a.dtype)
		} else if _, _, s, err := parseNumericDtype(a); err == nil {
			item = s
		}
		size += n * int64(item)
		all += n
		if !(len(a.dims) == 1 && a.dims[0] == a.name) {
			dlen += n
		}
	}
	if dlen == 0 {
		dlen = all
	}
	return size, dlen
}

// cfTimeDecoder returns a function decoding CF time values ("UNITS since
// REF", standard calendars) exactly for whole numbers of units.
func cfTimeDecoder(attrs map[string]any) (func(v float64) (time.Time, bool), bool) {
	t0, step, ok := cfTimeUnits(attrs)
	if !ok {
		return nil, false
	}
	return func(v float64) (time.Time, bool) {
		if math.IsNaN(v) || math.IsInf(v, 0) || math.Abs(v)*float64(step) > math.MaxInt64/2 {
			return time.Time{}, false
		}
		if v == math.Trunc(v) {
			return t0.Add(time.Duration(int64(v)) * step), true
		}
		return t0.Add(time.Duration(v * float64(step))), true
	}, true
}
