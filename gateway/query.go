package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// An OceanQL query as the gateway understands it: what the public clients
// send (the Python client's Query, the JS client's IQuery), parsed and
// normalised. What the gateway cannot do (aggregates, functions, feature
// geofilters, time series or trajectories, resampling) is refused with a
// queryError rather than ignored, so that a client never gets an answer to
// another question than the one it asked.

// queryError is a bad query: its status (400, 404, 410, 422) and detail.
type queryError struct {
	status int
	detail string
}

func (e *queryError) Error() string { return e.detail }

func badQuery(format string, args ...any) *queryError {
	return &queryError{status: 422, detail: fmt.Sprintf(format, args...)}
}

// oceanQuery is a parsed, normalised query.
type oceanQuery struct {
	Datasource string
	// Variables, sorted and without duplicates; nil: all.
	Variables []string
	// Time range, resolved against the clock; nil: no time filter. A nil
	// bound is open.
	TimeStart, TimeEnd *time.Time
	timeFilter         bool
	// BBox is W, S, E, N; nil: no geofilter.
	BBox *[4]float64
	// Level range; levelFilter false: none. A nil bound is open.
	LevelLo, LevelHi *float64
	levelFilter      bool
	// CoordFilter selects values of other 1-D coordinates.
	CoordFilter []coordSelector
	// Limit bounds the rows of a table (nil: none).
	Limit *int
}

type coordSelector struct {
	Coord  string    `json:"coord"`
	Values []float64 `json:"values"`
}

// filtered tells whether the query selects less than the whole datasource.
func (q *oceanQuery) filtered() bool {
	return q.Variables != nil || q.timeFilter || q.BBox != nil || q.levelFilter || len(q.CoordFilter) > 0 || q.Limit != nil
}

// maxQueryBytes bounds a query's JSON body.
const maxQueryBytes = 1 << 20

// knownQueryKeys are the Query fields of the Python client (pydantic dumps
// them all, most as null) and the JS client.
var knownQueryKeys = []string{"datasource", "parameters", "description", "variables", "timefilter", "geofilter",
	"levelfilter", "coordfilter", "crs", "aggregate", "functions", "limit", "id"}

// parseQuery parses a Query JSON document; now resolves relative times
// (to the second, so that the same relative query staged twice within a
// second is the same query).
func parseQuery(body []byte, now time.Time) (*oceanQuery, *queryError) {
	now = now.Truncate(time.Second)
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&raw); err != nil {
		return nil, &queryError{status: 400, detail: fmt.Sprintf("query is not a JSON object: %v", err)}
	}
	if dec.More() {
		return nil, &queryError{status: 400, detail: "query: trailing data after the JSON object"}
	}
	if raw == nil {
		return nil, &queryError{status: 400, detail: "query is not a JSON object"}
	}
	for k := range raw {
		if !slices.Contains(knownQueryKeys, k) {
			return nil, badQuery("query: unknown field %q (known: %s)", k, strings.Join(knownQueryKeys, ", "))
		}
	}
	q := &oceanQuery{}
	if err := unmarshalField(raw, "datasource", &q.Datasource); err != nil {
		return nil, err
	}
	if q.Datasource == "" {
		return nil, badQuery("query: datasource is required")
	}
	// Accepted when empty or null; anything else changes the answer in a
	// way this gateway cannot reproduce.
	var params map[string]any
	if err := unmarshalField(raw, "parameters", &params); err != nil {
		return nil, err
	}
	if len(params) > 0 {
		return nil, badQuery("query: datasource parameters are not supported by dmfs serve")
	}
	for _, k := range []string{"description", "id"} {
		var s *string
		if err := unmarshalField(raw, k, &s); err != nil {
			return nil, err
		}
	}
	var aggregate any
	if err := unmarshalField(raw, "aggregate", &aggregate); err != nil {
		return nil, err
	}
	if aggregate != nil {
		return nil, badQuery("query: aggregate is not supported by dmfs serve")
	}
	var functions []any
	if err := unmarshalField(raw, "functions", &functions); err != nil {
		return nil, err
	}
	if len(functions) > 0 {
		return nil, badQuery("query: functions are not supported by dmfs serve")
	}
	var crs any
	if err := unmarshalField(raw, "crs", &crs); err != nil {
		return nil, err
	}
	switch c := crs.(type) {
	case nil:
	case float64:
		if c != 4326 {
			return nil, badQuery("query: crs %v is not supported by dmfs serve (only EPSG:4326)", c)
		}
	case string:
		if u := strings.ToUpper(strings.TrimSpace(c)); u != "EPSG:4326" && u != "4326" && u != "WGS84" {
			return nil, badQuery("query: crs %q is not supported by dmfs serve (only EPSG:4326)", c)
		}
	default:
		return nil, badQuery("query: crs must be a string or an integer")
	}
	var vars []string
	if err := unmarshalField(raw, "variables", &vars); err != nil {
		return nil, err
	}
	if len(vars) > 0 {
		seen := map[string]bool{}
		for _, v := range vars {
			if v == "" {
				return nil, badQuery("query: variables: empty variable name")
			}
			if !seen[v] {
				seen[v] = true
				q.Variables = append(q.Variables, v)
			}
		}
		slices.Sort(q.Variables)
	}
	if err := q.parseTimeFilter(raw["timefilter"], now); err != nil {
		return nil, err
	}
	if err := q.parseGeoFilter(raw["geofilter"]); err != nil {
		return nil, err
	}
	if err := q.parseLevelFilter(raw["levelfilter"]); err != nil {
		return nil, err
	}
	if err := q.parseCoordFilter(raw["coordfilter"]); err != nil {
		return nil, err
	}
	var limit *int
	if err := unmarshalField(raw, "limit", &limit); err != nil {
		return nil, err
	}
	if limit != nil {
		if *limit < 0 {
			return nil, badQuery("query: limit must not be negative")
		}
		q.Limit = limit
	}
	return q, nil
}

// unmarshalField decodes raw[key] into v when present and not null.
func unmarshalField(raw map[string]json.RawMessage, key string, v any) *queryError {
	msg, ok := raw[key]
	if !ok || isNull(msg) {
		return nil
	}
	if err := json.Unmarshal(msg, v); err != nil {
		return badQuery("query: %s: %v", key, jsonErrText(err))
	}
	return nil
}

func isNull(msg json.RawMessage) bool {
	return len(msg) == 0 || string(bytes.TrimSpace(msg)) == "null"
}

// jsonErrText says what was wrong without Go type names.
func jsonErrText(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("a JSON %s is not valid here", te.Value)
	}
	return err.Error()
}

// checkKeys refuses keys of a filter object other than known.
func checkKeys(what string, obj map[string]json.RawMessage, known ...string) *queryError {
	for k := range obj {
		if !slices.Contains(known, k) {
			return badQuery("query: %s: unknown field %q (known: %s)", what, k, strings.Join(known, ", "))
		}
	}
	return nil
}

// filterObject decodes a filter (null: absent) and checks its "type".
func filterObject(what string, msg json.RawMessage, defType string, known ...string) (map[string]json.RawMessage, *queryError) {
	if isNull(msg) {
		return nil, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(msg, &obj); err != nil {
		return nil, badQuery("query: %s must be an object", what)
	}
	if err := checkKeys(what, obj, known...); err != nil {
		return nil, err
	}
	typ := defType
	if err := unmarshalField(obj, "type", &typ); err != nil {
		return nil, err
	}
	if typ != defType {
		return nil, badQuery("query: %s type %q is not supported by dmfs serve (only %q)", what, typ, defType)
	}
	return obj, nil
}

func (q *oceanQuery) parseTimeFilter(msg json.RawMessage, now time.Time) *queryError {
	obj, qerr := filterObject("timefilter", msg, "range", "type", "times", "resolution", "resample")
	if obj == nil || qerr != nil {
		return qerr
	}
	var resolution *string
	if err := unmarshalField(obj, "resolution", &resolution); err != nil {
		return err
	}
	if resolution != nil && *resolution != "native" {
		return badQuery("query: timefilter resolution %q is not supported by dmfs serve (only \"native\")", *resolution)
	}
	var resample *string // only matters with a resolution
	if err := unmarshalField(obj, "resample", &resample); err != nil {
		return err
	}
	var times []*string
	if err := unmarshalField(obj, "times", &times); err != nil {
		return err
	}
	if len(times) != 2 {
		return badQuery("query: timefilter of type range needs exactly 2 times [start, end], got %d", len(times))
	}
	var bounds [2]*time.Time
	for i, s := range times {
		if s == nil {
			continue
		}
		t, err := parseQueryTime(*s, now)
		if err != nil {
			return badQuery("query: timefilter: %v", err)
		}
		bounds[i] = &t
	}
	if bounds[0] != nil && bounds[1] != nil && bounds[0].After(*bounds[1]) {
		return badQuery("query: timefilter: start %s is after end %s",
			bounds[0].Format(time.RFC3339Nano), bounds[1].Format(time.RFC3339Nano))
	}
	if bounds[0] == nil && bounds[1] == nil {
		return nil // open at both ends: no filter
	}
	q.TimeStart, q.TimeEnd, q.timeFilter = bounds[0], bounds[1], true
	return nil
}

func (q *oceanQuery) parseGeoFilter(msg json.RawMessage) *queryError {
	obj, qerr := filterObject("geofilter", msg, "bbox", "type", "geom", "interp", "resolution", "alltouched")
	if obj == nil || qerr != nil {
		return qerr
	}
	var resolution *float64
	if err := unmarshalField(obj, "resolution", &resolution); err != nil {
		return err
	}
	if resolution != nil && *resolution != 0 {
		return badQuery("query: geofilter resolution is not supported by dmfs serve")
	}
	var geom []float64
	if err := unmarshalField(obj, "geom", &geom); err != nil {
		return badQuery("query: geofilter: geom must be a list of 4 numbers [W, S, E, N]")
	}
	if len(geom) != 4 {
		return badQuery("query: geofilter: geom must be a list of 4 numbers [W, S, E, N], got %d", len(geom))
	}
	for _, v := range geom {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return badQuery("query: geofilter: geom must hold finite numbers")
		}
	}
	if geom[1] > geom[3] {
		return badQuery("query: geofilter: south %g is above north %g", geom[1], geom[3])
	}
	q.BBox = &[4]float64{geom[0], geom[1], geom[2], geom[3]}
	return nil
}

func (q *oceanQuery) parseLevelFilter(msg json.RawMessage) *queryError {
	obj, qerr := filterObject("levelfilter", msg, "range", "type", "levels", "interp")
	if obj == nil || qerr != nil {
		return qerr
	}
	var levels []*float64
	if err := unmarshalField(obj, "levels", &levels); err != nil {
		return err
	}
	if len(levels) != 2 {
		return badQuery("query: levelfilter of type range needs exactly 2 levels [low, high], got %d", len(levels))
	}
	if levels[0] != nil && levels[1] != nil && *levels[0] > *levels[1] {
		return badQuery("query: levelfilter: low %g is above high %g", *levels[0], *levels[1])
	}
	if levels[0] == nil && levels[1] == nil {
		return nil
	}
	q.LevelLo, q.LevelHi, q.levelFilter = levels[0], levels[1], true
	return nil
}

func (q *oceanQuery) parseCoordFilter(msg json.RawMessage) *queryError {
	if isNull(msg) {
		return nil
	}
	var sels []map[string]json.RawMessage
	if err := json.Unmarshal(msg, &sels); err != nil {
		return badQuery("query: coordfilter must be a list of {\"coord\", \"values\"}")
	}
	for _, obj := range sels {
		if err := checkKeys("coordfilter", obj, "coord", "values"); err != nil {
			return err
		}
		var cs coordSelector
		if err := unmarshalField(obj, "coord", &cs.Coord); err != nil {
			return err
		}
		if cs.Coord == "" {
			return badQuery("query: coordfilter: coord is required")
		}
		if err := unmarshalField(obj, "values", &cs.Values); err != nil {
			return badQuery("query: coordfilter on %q: dmfs serve selects numeric values only", cs.Coord)
		}
		if len(cs.Values) == 0 {
			return badQuery("query: coordfilter on %q: no values", cs.Coord)
		}
		q.CoordFilter = append(q.CoordFilter, cs)
	}
	slices.SortStableFunc(q.CoordFilter, func(a, b coordSelector) int { return strings.Compare(a.Coord, b.Coord) })
	return nil
}

// Times.

// durationRE is an ISO 8601 duration with an optional sign (ISO 8601-2):
// P[nY][nM][nW][nD][T[nH][nM][nS]], decimals allowed in the last
// component.
var durationRE = regexp.MustCompile(`^([+-])?P(?:([0-9]+(?:[.,][0-9]+)?)Y)?(?:([0-9]+(?:[.,][0-9]+)?)M)?(?:([0-9]+(?:[.,][0-9]+)?)W)?(?:([0-9]+(?:[.,][0-9]+)?)D)?(?:T(?:([0-9]+(?:[.,][0-9]+)?)H)?(?:([0-9]+(?:[.,][0-9]+)?)M)?(?:([0-9]+(?:[.,][0-9]+)?)S)?)?$`)

// parseQueryTime parses an ISO 8601 time (a date, or a date and time, with
// or without a zone: without one it is UTC, as the Python client assumes)
// or an ISO 8601 duration relative to now ("-P7D": 7 days before now).
func parseQueryTime(s string, now time.Time) (time.Time, error) {
	v := strings.TrimSpace(s)
	if v == "" {
		return time.Time{}, errors.New("empty time")
	}
	if strings.HasPrefix(v, "P") || strings.HasPrefix(v, "-P") || strings.HasPrefix(v, "+P") {
		return parsePeriod(v, now)
	}
	if t, ok := parseISOTime(v); ok {
		return t.UTC(), nil
	}
	return time.Time{}, fmt.Errorf("%q is neither an ISO 8601 time nor an ISO 8601 period such as -P7D", s)
}

func parsePeriod(v string, now time.Time) (time.Time, error) {
	m := durationRE.FindStringSubmatch(strings.ToUpper(v))
	if m == nil || strings.HasSuffix(v, "T") || v == "P" || v == "-P" || v == "+P" {
		return time.Time{}, fmt.Errorf("%q is not an ISO 8601 period such as -P7D or PT6H", v)
	}
	found := false
	for _, g := range m[2:] {
		found = found || g != ""
	}
	if !found {
		return time.Time{}, fmt.Errorf("%q is not an ISO 8601 period such as -P7D or PT6H", v)
	}
	sign := 1
	if m[1] == "-" {
		sign = -1
	}
	num := func(g string) float64 {
		if g == "" {
			return 0
		}
		f, _ := strconv.ParseFloat(strings.ReplaceAll(g, ",", "."), 64)
		return f
	}
	years, months := num(m[2]), num(m[3])
	if years != math.Trunc(years) || months != math.Trunc(months) {
		return time.Time{}, fmt.Errorf("%q: years and months must be whole in a period", v)
	}
	secs := num(m[4])*7*86400 + num(m[5])*86400 + num(m[6])*3600 + num(m[7])*60 + num(m[8])
	if secs > 1e11 || years > 1e5 || months > 1e6 {
		return time.Time{}, fmt.Errorf("%q: period too long", v)
	}
	t := now.UTC().AddDate(sign*int(years), sign*int(months), 0)
	return t.Add(time.Duration(float64(sign) * secs * float64(time.Second))), nil
}

// isoLayouts are the date and time forms accepted, zone handled apart.
var isoLayouts = []string{
	"2006-01-02T15:04:05.999999999", "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02T15",
	"2006-01-02", "2006-01", "2006",
}

func parseISOTime(v string) (time.Time, bool) {
	if len(v) > 10 && v[10] == ' ' {
		v = v[:10] + "T" + v[11:]
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, true
	}
	for _, layout := range isoLayouts {
		for _, zone := range []string{"", "Z07:00", "Z0700", "Z07"} {
			if zone != "" && !strings.Contains(layout, "T") {
				continue
			}
			if t, err := time.Parse(layout+zone, v); err == nil {
				return t, true
			}
		}
	}
	return time.Time{}, false
}

// Normalised form.

// queryJSON is the normalised query in the shape of the Python client's
// Query, so that the stage answer parses there.
type queryJSON struct {
	Datasource  string            `json:"datasource"`
	Parameters  map[string]any    `json:"parameters"`
	Description *string           `json:"description"`
	Variables   []string          `json:"variables"`
	TimeFilter  *timeFilterJSON   `json:"timefilter"`
	GeoFilter   *geoFilterJSON    `json:"geofilter"`
	LevelFilter *levelFilterJSON  `json:"levelfilter"`
	CoordFilter []coordSelector   `json:"coordfilter"`
	CRS         *string           `json:"crs"`
	Aggregate   map[string]any    `json:"aggregate"`
	Functions   []json.RawMessage `json:"functions"`
	Limit       *int              `json:"limit"`
	ID          *string           `json:"id"`
}

type timeFilterJSON struct {
	Type  string    `json:"type"`
	Times []*string `json:"times"`
}

type geoFilterJSON struct {
	Type string     `json:"type"`
	Geom [4]float64 `json:"geom"`
}

type levelFilterJSON struct {
	Type   string     `json:"type"`
	Levels []*float64 `json:"levels"`
}

func formatQueryTime(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := t.UTC().Format(time.RFC3339Nano)
	return &s
}

// normalised returns the query's normalised form.
func (q *oceanQuery) normalised() queryJSON {
	out := queryJSON{Datasource: q.Datasource, Parameters: map[string]any{}, Variables: q.Variables,
		CoordFilter: q.CoordFilter, Limit: q.Limit, Functions: []json.RawMessage{}}
	if q.timeFilter {
		out.TimeFilter = &timeFilterJSON{Type: "range", Times: []*string{formatQueryTime(q.TimeStart), formatQueryTime(q.TimeEnd)}}
	}
	if q.BBox != nil {
		out.GeoFilter = &geoFilterJSON{Type: "bbox", Geom: *q.BBox}
	}
	if q.levelFilter {
		out.LevelFilter = &levelFilterJSON{Type: "range", Levels: []*float64{q.LevelLo, q.LevelHi}}
	}
	return out
}

// pathName is the query in the mount's path form,
// ID@time=A,B@bbox=W,S,E,N@level=LO,HI@vars=a,b (absolute times), which
// the counters use to count stages per normalised query.
func (q *oceanQuery) pathName() string {
	var b strings.Builder
	b.WriteString(q.Datasource)
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	if q.timeFilter {
		b.WriteString("@time=")
		if s := formatQueryTime(q.TimeStart); s != nil {
			b.WriteString(*s)
		}
		b.WriteByte(',')
		if s := formatQueryTime(q.TimeEnd); s != nil {
			b.WriteString(*s)
		}
	}
	if q.BBox != nil {
		fmt.Fprintf(&b, "@bbox=%s,%s,%s,%s", f(q.BBox[0]), f(q.BBox[1]), f(q.BBox[2]), f(q.BBox[3]))
	}
	if q.levelFilter {
		b.WriteString("@level=")
		if q.LevelLo != nil {
			b.WriteString(f(*q.LevelLo))
		}
		b.WriteByte(',')
		if q.LevelHi != nil {
			b.WriteString(f(*q.LevelHi))
		}
	}
	if q.Variables != nil {
		b.WriteString("@vars=" + strings.Join(q.Variables, ","))
	}
	for _, c := range q.CoordFilter {
		vals := make([]string, len(c.Values))
		for i, v := range c.Values {
			vals[i] = f(v)
		}
		fmt.Fprintf(&b, "@%s=%s", c.Coord, strings.Join(vals, ","))
	}
	if q.Limit != nil {
		fmt.Fprintf(&b, "@limit=%d", *q.Limit)
	}
	return b.String()
}
