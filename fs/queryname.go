package fs

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
)

// A query path is a name at the root: a datasource id, then filters, each
// "@key=value" (DESIGN §3):
//
//	ID@time=START,END   ISO 8601 times or periods (-P7D: 7 days before now); either may be empty (open)
//	ID@bbox=W,S,E,N     degrees
//	ID@vars=a,b,...     variables to keep
//	ID@level=LO,HI      level range; either may be empty
//
// Any subset of the keys, in any order, each at most once. The name becomes
// an OceanQL query, as the Python client's Query writes it.

// queryName is a parsed query path.
type queryName struct {
	id    string
	query []byte // OceanQL JSON
}

// isQueryName reports whether name is meant as a query path.
func isQueryName(name string) bool { return strings.Contains(name, "@") }

// isoTime is an ISO 8601 date or date-time (seconds, fraction and zone
// optional).
var isoTime = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}([T ]\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$`)

// isoPeriod is an ISO 8601 duration, signed: relative to now.
var isoPeriod = regexp.MustCompile(`^[+-]?P(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$`)

// varName is a variable name as a query path may give it.
var varName = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,128}$`)

// parseQueryName parses a query path; the error says what is wrong.
func parseQueryName(name string) (queryName, error) {
	parts := strings.Split(name, "@")
	id := parts[0]
	if !safeName(id) {
		return queryName{}, errors.New("no datasource id before the first '@'")
	}
	q := map[string]any{"datasource": id}
	seen := map[string]bool{}
	for _, part := range parts[1:] {
		key, value, ok := strings.Cut(part, "=")
		if !ok || value == "" {
			return queryName{}, fmt.Errorf("%q is not key=value", part)
		}
		if seen[key] {
			return queryName{}, fmt.Errorf("%s given twice", key)
		}
		seen[key] = true
		switch key {
		case "time":
			times, err := queryTimes(value)
			if err != nil {
				return queryName{}, fmt.Errorf("time: %w", err)
			}
			q["timefilter"] = map[string]any{"type": "range", "times": times}
		case "bbox":
			box, err := queryNumbers(value, 4, false)
			if err != nil {
				return queryName{}, fmt.Errorf("bbox: %w (W,S,E,N)", err)
			}
			w, s, e, n := *box[0], *box[1], *box[2], *box[3]
			switch {
			case s < -90 || n > 90 || s > n:
				return queryName{}, fmt.Errorf("bbox: latitudes %g,%g must be within -90..90, south first", s, n)
			case w < -180 || e > 360 || w > e:
				return queryName{}, fmt.Errorf("bbox: longitudes %g,%g must be within -180..360, west first", w, e)
			}
			q["geofilter"] = map[string]any{"type": "bbox", "geom": []float64{w, s, e, n}}
		case "vars":
			names := strings.Split(value, ",")
			for _, v := range names {
				if !varName.MatchString(v) {
					return queryName{}, fmt.Errorf("vars: %q is not a variable name", v)
				}
			}
			q["variables"] = names
		case "level":
			levels, err := queryNumbers(value, 2, true)
			if err != nil {
				return queryName{}, fmt.Errorf("level: %w (LO,HI)", err)
			}
			if levels[0] != nil && levels[1] != nil && *levels[0] > *levels[1] {
				return queryName{}, fmt.Errorf("level: %g is above %g", *levels[0], *levels[1])
			}
			q["levelfilter"] = map[string]any{"type": "range", "levels": levels}
		default:
			return queryName{}, fmt.Errorf("unknown key %q (time, bbox, vars, level)", key)
		}
	}
	if len(parts) == 1 {
		return queryName{}, errors.New("no filter")
	}
	b, err := json.Marshal(q)
	if err != nil {
		return queryName{}, err
	}
	return queryName{id: id, query: b}, nil
}

// queryTimes parses START,END: ISO 8601 times or periods, either empty.
func queryTimes(value string) ([]*string, error) {
	parts := strings.Split(value, ",")
	if len(parts) != 2 {
		return nil, fmt.Errorf("%q is not START,END", value)
	}
	out := make([]*string, 2)
	for i, p := range parts {
		if p == "" {
			continue
		}
		if !isoTime.MatchString(p) && (!isoPeriod.MatchString(p) || strings.HasSuffix(p, "P") || strings.HasSuffix(p, "T")) {
			return nil, fmt.Errorf("%q is neither an ISO 8601 time nor a period such as -P7D", p)
		}
		out[i] = &p
	}
	if out[0] == nil && out[1] == nil {
		return nil, errors.New("both ends empty")
	}
	return out, nil
}

// queryNumbers parses n comma-separated finite numbers; empty ones are nil
// when open is set.
func queryNumbers(value string, n int, open bool) ([]*float64, error) {
	parts := strings.Split(value, ",")
	if len(parts) != n {
		return nil, fmt.Errorf("%q is not %d numbers", value, n)
	}
	out := make([]*float64, n)
	for i, p := range parts {
		if p == "" && open {
			continue
		}
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return nil, fmt.Errorf("%q is not a number", p)
		}
		out[i] = &f
	}
	return out, nil
}

// QueryDatasource is the datasource a full OceanQL query (--query) reads,
// checked to be a safe name.
func QueryDatasource(query []byte) (string, error) {
	var q struct {
		Datasource string `json:"datasource"`
	}
	if err := json.Unmarshal(query, &q); err != nil {
		return "", fmt.Errorf("not an OceanQL query: %w", err)
	}
	if !safeName(q.Datasource) {
		return "", errors.New(`not an OceanQL query: no "datasource"`)
	}
	return q.Datasource, nil
}
