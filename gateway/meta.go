package gateway

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// arrayMeta is what the catalog needs to know of one array.
type arrayMeta struct {
	name   string
	format int // 2 or 3
	shape  []int
	chunks []int
	dtype  string // v2 dtype ("<f4") or v3 data_type ("float32")
	dims   []string
	attrs  map[string]any

	// v2
	compressor *struct {
		ID string `json:"id"`
	}
	filters   []any
	separator string
	// v3
	codecs      []v3Codec
	keyEncoding string // "default" or "v2"
	keySep      string
}

type v3Codec struct {
	Name          string         `json:"name"`
	Configuration map[string]any `json:"configuration"`
}

// storeMeta is the root group's attributes and its top-level arrays.
type storeMeta struct {
	attrs  map[string]any
	arrays []*arrayMeta // sorted by name
}

// readStoreMeta reads a store's metadata from its consolidated document when
// there is one, else from each node's files.
func readStoreMeta(ds *datasource) (*storeMeta, error) {
	docs := map[string]json.RawMessage{} // metadata key -> document
	if _, ok := ds.files["zarr.json"]; ok {
		return readStoreMetaV3(ds)
	}
	if _, ok := ds.files[".zmetadata"]; ok {
		raw, err := ds.root.ReadFile(".zmetadata")
		if err != nil {
			return nil, err
		}
		var cons struct {
			Metadata map[string]json.RawMessage `json:"metadata"`
		}
		if err := unmarshalZarrJSON(raw, &cons); err != nil {
			return nil, fmt.Errorf(".zmetadata: %w", err)
		}
		docs = cons.Metadata
	} else {
		for key := range ds.files {
			base := key[strings.LastIndexByte(key, '/')+1:]
			if base == ".zarray" || base == ".zattrs" || base == ".zgroup" {
				raw, err := ds.root.ReadFile(key)
				if err != nil {
					return nil, err
				}
				docs[key] = raw
			}
		}
	}
	sm := &storeMeta{attrs: map[string]any{}}
	if raw, ok := docs[".zattrs"]; ok {
		if err := unmarshalZarrJSON(raw, &sm.attrs); err != nil {
			return nil, fmt.Errorf(".zattrs: %w", err)
		}
	}
	if raw, ok := docs[".zarray"]; ok {
		// The store is a single array; it has no name of its own.
		a, err := parseV2Array("", raw, sm.attrs)
		if err != nil {
			return nil, err
		}
		sm.arrays = append(sm.arrays, a)
		return sm, nil
	}
	for key, raw := range docs {
		name, ok := strings.CutSuffix(key, "/.zarray")
		if !ok || strings.Contains(name, "/") {
			continue // only the root group's arrays make the dataset
		}
		attrs := map[string]any{}
		if rawAttrs, ok := docs[name+"/.zattrs"]; ok {
			if err := unmarshalZarrJSON(rawAttrs, &attrs); err != nil {
				return nil, fmt.Errorf("%s/.zattrs: %w", name, err)
			}
		}
		a, err := parseV2Array(name, raw, attrs)
		if err != nil {
			return nil, err
		}
		sm.arrays = append(sm.arrays, a)
	}
	sort.Slice(sm.arrays, func(i, j int) bool { return sm.arrays[i].name < sm.arrays[j].name })
	return sm, nil
}

func parseV2Array(name string, raw json.RawMessage, attrs map[string]any) (*arrayMeta, error) {
	var z struct {
		Shape      []int `json:"shape"`
		Chunks     []int `json:"chunks"`
		Dtype      any   `json:"dtype"`
		Compressor *struct {
			ID string `json:"id"`
		} `json:"compressor"`
		Filters   []any  `json:"filters"`
		Separator string `json:"dimension_separator"`
	}
	if err := unmarshalZarrJSON(raw, &z); err != nil {
		return nil, fmt.Errorf("%s/.zarray: %w", name, err)
	}
	if len(z.Chunks) != len(z.Shape) {
		return nil, fmt.Errorf("%s/.zarray: shape and chunks differ in length", name)
	}
	a := &arrayMeta{name: name, format: 2, shape: z.Shape, chunks: z.Chunks, attrs: attrs,
		compressor: z.Compressor, filters: z.Filters, separator: z.Separator}
	if s, ok := z.Dtype.(string); ok {
		a.dtype = s
	} else {
		a.dtype = "object" // structured dtypes: described, never decoded
	}
	if a.separator == "" {
		a.separator = "."
	}
	if dims, ok := attrs["_ARRAY_DIMENSIONS"].([]any); ok && len(dims) == len(a.shape) {
		for _, d := range dims {
			a.dims = append(a.dims, fmt.Sprint(d))
		}
	}
	delete(attrs, "_ARRAY_DIMENSIONS")
	return a, nil
}

func readStoreMetaV3(ds *datasource) (*storeMeta, error) {
	raw, err := ds.root.ReadFile("zarr.json")
	if err != nil {
		return nil, err
	}
	var root struct {
		NodeType     string         `json:"node_type"`
		Attributes   map[string]any `json:"attributes"`
		Consolidated *struct {
			Metadata map[string]json.RawMessage `json:"metadata"`
		} `json:"consolidated_metadata"`
	}
	if err := unmarshalZarrJSON(raw, &root); err != nil {
		return nil, fmt.Errorf("zarr.json: %w", err)
	}
	sm := &storeMeta{attrs: root.Attributes}
	if sm.attrs == nil {
		sm.attrs = map[string]any{}
	}
	if root.NodeType == "array" {
		a, err := parseV3Array("", raw)
		if err != nil {
			return nil, err
		}
		sm.arrays = []*arrayMeta{a}
		sm.attrs = map[string]any{}
		return sm, nil
	}
	nodes := map[string]json.RawMessage{} // node path -> zarr.json
	if root.Consolidated != nil {
		nodes = root.Consolidated.Metadata
	} else {
		for key := range ds.files {
			if name, ok := strings.CutSuffix(key, "/zarr.json"); ok && !strings.Contains(name, "/") {
				b, err := ds.root.ReadFile(key)
				if err != nil {
					return nil, err
				}
				nodes[name] = b
			}
		}
	}
	for name, doc := range nodes {
		if strings.Contains(name, "/") {
			continue
		}
		var nt struct {
			NodeType string `json:"node_type"`
		}
		if err := unmarshalZarrJSON(doc, &nt); err != nil {
			return nil, fmt.Errorf("%s/zarr.json: %w", name, err)
		}
		if nt.NodeType != "array" {
			continue
		}
		a, err := parseV3Array(name, doc)
		if err != nil {
			return nil, err
		}
		sm.arrays = append(sm.arrays, a)
	}
	sort.Slice(sm.arrays, func(i, j int) bool { return sm.arrays[i].name < sm.arrays[j].name })
	return sm, nil
}

func parseV3Array(name string, raw json.RawMessage) (*arrayMeta, error) {
	var z struct {
		Shape     []int `json:"shape"`
		DataType  any   `json:"data_type"`
		ChunkGrid struct {
			Configuration struct {
				ChunkShape []int `json:"chunk_shape"`
			} `json:"configuration"`
		} `json:"chunk_grid"`
		ChunkKeyEncoding struct {
			Name          string `json:"name"`
			Configuration struct {
				Separator string `json:"separator"`
			} `json:"configuration"`
		} `json:"chunk_key_encoding"`
		Codecs         []v3Codec      `json:"codecs"`
		Attributes     map[string]any `json:"attributes"`
		DimensionNames []any          `json:"dimension_names"`
	}
	if err := unmarshalZarrJSON(raw, &z); err != nil {
		return nil, fmt.Errorf("%s/zarr.json: %w", name, err)
	}
	a := &arrayMeta{name: name, format: 3, shape: z.Shape, chunks: z.ChunkGrid.Configuration.ChunkShape,
		attrs: z.Attributes, codecs: z.Codecs, keyEncoding: z.ChunkKeyEncoding.Name,
		keySep: z.ChunkKeyEncoding.Configuration.Separator}
	if len(a.chunks) != len(a.shape) {
		return nil, fmt.Errorf("%s/zarr.json: shape and chunk_shape differ in length", name)
	}
	if a.attrs == nil {
		a.attrs = map[string]any{}
	}
	if s, ok := z.DataType.(string); ok {
		a.dtype = s
	} else {
		a.dtype = "object"
	}
	if len(z.DimensionNames) == len(a.shape) {
		for _, d := range z.DimensionNames {
			if d == nil {
				a.dims = nil
				break
			}
			a.dims = append(a.dims, fmt.Sprint(d))
		}
	}
	if a.keyEncoding == "" {
		a.keyEncoding = "default"
	}
	if a.keySep == "" {
		a.keySep = "/"
		if a.keyEncoding == "v2" {
			a.keySep = "."
		}
	}
	return a, nil
}

func (sm *storeMeta) title(id string) string {
	for _, k := range []string{"title", "name"} {
		if s, ok := sm.attrs[k].(string); ok && s != "" {
			return s
		}
	}
	return id
}

func (sm *storeMeta) description() string {
	for _, k := range []string{"description", "summary"} {
		if s, ok := sm.attrs[k].(string); ok && s != "" {
			return s
		}
	}
	return ""
}

func (a *arrayMeta) dimNames() []string {
	if a.dims != nil {
		return a.dims
	}
	out := make([]string, len(a.shape))
	for i := range out {
		out[i] = fmt.Sprintf("dim_%d", i)
	}
	return out
}

// xarrayDtype names a dtype the way xarray's Dataset.to_dict does.
func xarrayDtype(dt string) string {
	if len(dt) < 2 || !strings.ContainsRune("<>|=", rune(dt[0])) {
		return dt // v3 names are already numpy names
	}
	kind, size := dt[1], dt[2:]
	n, _ := strconv.Atoi(size)
	switch kind {
	case 'f':
		return fmt.Sprintf("float%d", n*8)
	case 'i':
		return fmt.Sprintf("int%d", n*8)
	case 'u':
		return fmt.Sprintf("uint%d", n*8)
	case 'b':
		return "bool"
	case 'c':
		return fmt.Sprintf("complex%d", n*8)
	}
	return dt
}

// schema describes the dataset like xarray's Dataset.to_dict(data=False).
func (sm *storeMeta) schema() map[string]any {
	dims := map[string]int{}
	coordNames := map[string]bool{}
	for _, a := range sm.arrays {
		for i, d := range a.dimNames() {
			dims[d] = a.shape[i]
		}
		if c, ok := a.attrs["coordinates"].(string); ok {
			for _, n := range strings.Fields(c) {
				coordNames[n] = true
			}
		}
	}
	coords, vars := map[string]any{}, map[string]any{}
	for _, a := range sm.arrays {
		name := a.name
		if name == "" {
			name = "data"
		}
		entry := map[string]any{"dims": a.dimNames(), "attrs": a.attrs, "dtype": xarrayDtype(a.dtype), "shape": a.shape}
		isDimCoord := len(a.dims) == 1 && a.dims[0] == name
		if isDimCoord || coordNames[name] {
			coords[name] = entry
		} else {
			vars[name] = entry
		}
	}
	return map[string]any{"dims": dims, "coords": coords, "data_vars": vars, "attrs": sm.attrs}
}

func (sm *storeMeta) array(names ...string) *arrayMeta {
	for _, n := range names {
		for _, a := range sm.arrays {
			if a.name == n && len(a.shape) == 1 {
				return a
			}
		}
	}
	return nil
}

// feature builds the store's catalog entry, in two parts that its
// "modified" time joins. The bounding box and the time range are read from
// small 1-D coordinates when they decode cheaply. ov (datasource.json) may
// set the name, description, driver and tags.
func (sm *storeMeta) feature(ds *datasource, ov *dsOverrides) (head, tail []byte, err error) {
	var geometry any
	lat, lon := sm.array("lat", "latitude"), sm.array("lon", "longitude")
	if lat != nil && lon != nil {
		latV, err1 := readArray1D(ds, lat)
		lonV, err2 := readArray1D(ds, lon)
		if err1 == nil && err2 == nil {
			geometry = bboxPolygon(latV, lonV)
		}
	}
	var tstart, tend any
	if t := sm.array("time"); t != nil {
		if vals, err := readArray1D(ds, t); err == nil {
			if a, b, ok := cfTimeRange(t.attrs, vals); ok {
				tstart, tend = a.UTC().Format(time.RFC3339), b.UTC().Format(time.RFC3339)
			}
		}
	}
	props := map[string]any{
		"name":        sm.title(ds.id),
		"description": sm.description(),
		"driver":      "zarr",
		"tstart":      tstart,
		"tend":        tend,
		"schema":      sm.schema(),
		"tags":        []string{},
	}
	ov.apply(props)
	return buildFeature(ds.id, geometry, props)
}

// buildFeature makes a catalog Feature in two parts that its "modified"
// time joins at each answer, so that it follows the data without
// rebuilding the rest.
func buildFeature(id string, geometry any, props map[string]any) (head, tail []byte, err error) {
	propsJSON, err := json.Marshal(props)
	if err != nil {
		return nil, nil, err
	}
	idJSON, err := json.Marshal(id)
	if err != nil {
		return nil, nil, err
	}
	geom, err := json.Marshal(geometry)
	if err != nil {
		return nil, nil, err
	}
	head = fmt.Appendf(nil, `{"type":"Feature","id":%s,"geometry":%s,"properties":{"modified":"`, idJSON, geom)
	tail = append([]byte(`",`), propsJSON[1:]...) // props is a non-empty object
	tail = append(tail, '}')
	return head, tail, nil
}

func bboxPolygon(lat, lon []float64) any {
	minLat, maxLat, ok1 := minMax(lat)
	minLon, maxLon, ok2 := minMax(lon)
	if !ok1 || !ok2 {
		return nil
	}
	if maxLon > 180 {
		if minLon >= 180 {
			minLon, maxLon = minLon-360, maxLon-360
		} else {
			minLon, maxLon = -180, 180
		}
	}
	ring := [][2]float64{{minLon, minLat}, {maxLon, minLat}, {maxLon, maxLat}, {minLon, maxLat}, {minLon, minLat}}
	return map[string]any{"type": "Polygon", "coordinates": [][][2]float64{ring}}
}

func minMax(v []float64) (lo, hi float64, ok bool) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, x := range v {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			continue
		}
		lo, hi, ok = math.Min(lo, x), math.Max(hi, x), true
	}
	return lo, hi, ok
}

// cfTimeRange decodes "UNITS since REF" for the standard calendars.
func cfTimeRange(attrs map[string]any, vals []float64) (start, end time.Time, ok bool) {
	t0, step, ok := cfTimeUnits(attrs)
	if !ok {
		return start, end, false
	}
	lo, hi, ok := minMax(vals)
	if !ok {
		return start, end, false
	}
	return t0.Add(time.Duration(lo * float64(step))), t0.Add(time.Duration(hi * float64(step))), true
}

// cfTimeUnits reads a CF time coordinate's "UNITS since REF" (standard
// calendars only): the reference time and the unit.
func cfTimeUnits(attrs map[string]any) (t0 time.Time, step time.Duration, ok bool) {
	units, _ := attrs["units"].(string)
	if cal, ok := attrs["calendar"].(string); ok {
		switch strings.ToLower(cal) {
		case "standard", "gregorian", "proleptic_gregorian":
		default:
			return t0, 0, false
		}
	}
	unit, ref, found := strings.Cut(units, " since ")
	if !found {
		return t0, 0, false
	}
	switch strings.ToLower(strings.TrimSpace(unit)) {
	case "nanoseconds", "nanosecond", "ns":
		step = time.Nanosecond
	case "microseconds", "microsecond", "us":
		step = time.Microsecond
	case "milliseconds", "millisecond", "ms":
		step = time.Millisecond
	case "seconds", "second", "s":
		step = time.Second
	case "minutes", "minute", "min":
		step = time.Minute
	case "hours", "hour", "h":
		step = time.Hour
	case "days", "day", "d":
		step = 24 * time.Hour
	default:
		return t0, 0, false
	}
	var err error
	ref = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(ref), "Z"))
	for _, layout := range []string{"2006-01-02 15:04:05", "2006-01-02T15:04:05", "2006-01-02 15:04", "2006-01-02", "2006-1-2 15:04:05", "2006-1-2"} {
		if t0, err = time.Parse(layout, ref); err == nil {
			break
		}
	}
	if err != nil {
		return t0, 0, false
	}
	return t0, step, true
}

// maxCoordBytes bounds what the catalog reads of a coordinate.
const maxCoordBytes = 16 << 20

// readArray1D decodes a 1-D numeric array; missing chunks read as NaN.
func readArray1D(ds *datasource, a *arrayMeta) ([]float64, error) {
	if len(a.shape) != 1 || a.chunks[0] <= 0 {
		return nil, fmt.Errorf("%s: not a chunked 1-D array", a.name)
	}
	order, kind, size, err := parseNumericDtype(a)
	if err != nil {
		return nil, err
	}
	n, c := a.shape[0], a.chunks[0]
	if int64(n)*int64(size) > maxCoordBytes {
		return nil, fmt.Errorf("%s: too large to read for the catalog", a.name)
	}
	out := make([]float64, n)
	for i := range out {
		out[i] = math.NaN()
	}
	for ci := 0; ci*c < n; ci++ {
		key := a.chunkKey(ci)
		// Read from disk, not the startup index: a coordinate appended to
		// since (a pipeline writing into the store) is read whole.
		raw, err := ds.root.ReadFile(key)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		data, err := a.decode(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		for j := 0; j < c && ci*c+j < n && (j+1)*size <= len(data); j++ {
			out[ci*c+j] = decodeNumber(data[j*size:(j+1)*size], order, kind)
		}
	}
	return out, nil
}

func (a *arrayMeta) chunkKey(i int) string {
	prefix := ""
	if a.name != "" {
		prefix = a.name + "/"
	}
	if a.format == 3 && a.keyEncoding != "v2" {
		return prefix + "c" + a.keySep + strconv.Itoa(i)
	}
	return prefix + strconv.Itoa(i)
}

func parseNumericDtype(a *arrayMeta) (order binary.ByteOrder, kind byte, size int, err error) {
	order = binary.LittleEndian
	if a.format == 2 {
		dt := a.dtype
		if len(dt) < 3 {
			return nil, 0, 0, fmt.Errorf("%s: unsupported dtype %q", a.name, dt)
		}
		if dt[0] == '>' {
			order = binary.BigEndian
		}
		size, err = strconv.Atoi(dt[2:])
		if err != nil || !strings.ContainsRune("fiu", rune(dt[1])) {
			return nil, 0, 0, fmt.Errorf("%s: unsupported dtype %q", a.name, dt)
		}
		return order, dt[1], size, nil
	}
	for _, c := range a.codecs {
		if c.Name == "bytes" && c.Configuration["endian"] == "big" {
			order = binary.BigEndian
		}
	}
	switch {
	case strings.HasPrefix(a.dtype, "float"):
		kind = 'f'
	case strings.HasPrefix(a.dtype, "uint"):
		kind = 'u'
	case strings.HasPrefix(a.dtype, "int"):
		kind = 'i'
	default:
		return nil, 0, 0, fmt.Errorf("%s: unsupported data type %q", a.name, a.dtype)
	}
	bits, err := strconv.Atoi(strings.TrimLeft(a.dtype, "floatuin"))
	if err != nil {
		return nil, 0, 0, fmt.Errorf("%s: unsupported data type %q", a.name, a.dtype)
	}
	return order, kind, bits / 8, nil
}

func (a *arrayMeta) decode(raw []byte) ([]byte, error) {
	if a.format == 2 {
		if len(a.filters) > 0 {
			return nil, fmt.Errorf("filters are not supported")
		}
		if a.compressor == nil {
			return raw, nil
		}
		return decompress(a.compressor.ID, raw)
	}
	data := raw
	for i := len(a.codecs) - 1; i >= 0; i-- {
		switch name := a.codecs[i].Name; name {
		case "bytes":
		case "gzip", "zlib":
			var err error
			if data, err = decompress(name, data); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("codec %q is not supported", name)
		}
	}
	return data, nil
}

func decompress(id string, raw []byte) ([]byte, error) {
	return decompressAtMost(id, raw, maxCoordBytes+1)
}

// decompressAtMost undoes a zlib or gzip compressor, reading at most limit
// bytes of what it gives.
func decompressAtMost(id string, raw []byte, limit int64) ([]byte, error) {
	var r io.ReadCloser
	var err error
	switch id {
	case "zlib":
		r, err = zlib.NewReader(bytes.NewReader(raw))
	case "gzip":
		r, err = gzip.NewReader(bytes.NewReader(raw))
	default:
		return nil, fmt.Errorf("compressor %q is not supported", id)
	}
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(io.LimitReader(r, limit))
}

func decodeNumber(b []byte, order binary.ByteOrder, kind byte) float64 {
	switch len(b) {
	case 1:
		if kind == 'i' {
			return float64(int8(b[0]))
		}
		return float64(b[0])
	case 2:
		v := order.Uint16(b)
		if kind == 'i' {
			return float64(int16(v))
		}
		return float64(v)
	case 4:
		v := order.Uint32(b)
		switch kind {
		case 'f':
			return float64(math.Float32frombits(v))
		case 'i':
			return float64(int32(v))
		}
		return float64(v)
	case 8:
		v := order.Uint64(b)
		switch kind {
		case 'f':
			return math.Float64frombits(v)
		case 'i':
			return float64(int64(v))
		}
		return float64(v)
	}
	return math.NaN()
}

// unmarshalZarrJSON decodes a Zarr metadata document. Python's zarr writes
// bare NaN, Infinity and -Infinity (in attributes, fill values), which
// encoding/json rejects; for the catalog's purposes they read as null.
func unmarshalZarrJSON(data []byte, v any) error {
	return json.Unmarshal(nonFiniteAsNull(data), v)
}

// nonFiniteAsNull replaces the bare tokens NaN, Infinity and -Infinity
// outside strings with null.
func nonFiniteAsNull(data []byte) []byte {
	if !bytes.Contains(data, []byte("NaN")) && !bytes.Contains(data, []byte("Infinity")) {
		return data
	}
	out := make([]byte, 0, len(data))
	inString, escaped := false, false
	for i := 0; i < len(data); i++ {
		c := data[i]
		if inString {
			out = append(out, c)
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		if c == '"' {
			inString = true
			out = append(out, c)
			continue
		}
		matched := false
		for _, tok := range []string{"-Infinity", "Infinity", "NaN"} {
			if bytes.HasPrefix(data[i:], []byte(tok)) {
				out = append(out, "null"...)
				i += len(tok) - 1
				matched = true
				break
			}
		}
		if !matched {
			out = append(out, c)
		}
	}
	return out
}
