package session

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
)

// The catalog's descriptive fields are read leniently: a field that is
// absent, of an odd type or unreadable is left empty, and never fails the
// catalog.

// jsonTags reads properties.tags: a list whose strings (and other scalars,
// as text) are the tags, or a single string. nil when there are none.
func jsonTags(raw json.RawMessage) []string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return nil
	}
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) != nil {
		if s := jsonScalar(raw); s != "" {
			return []string{s}
		}
		return nil
	}
	var tags []string
	for _, item := range list {
		if s := jsonScalar(item); s != "" {
			tags = append(tags, s)
		}
	}
	return tags
}

// jsonScalar is a JSON string's value or a number's or boolean's text; ""
// for null, objects and lists.
func jsonScalar(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] == '{' || raw[0] == '[' {
		return ""
	}
	return jsonText(raw)
}

// schemaVariables returns the names of properties.schema.data_vars, sorted
// and unique: the keys of an object (or the strings of a list). The schema
// may also come as a string holding its JSON.
func schemaVariables(raw json.RawMessage) []string {
	raw = unquoteJSON(raw)
	var schema struct {
		DataVars json.RawMessage `json:"data_vars"`
	}
	if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &schema) != nil {
		return nil
	}
	dv := unquoteJSON(schema.DataVars)
	var names []string
	var obj map[string]json.RawMessage
	var list []json.RawMessage
	switch {
	case json.Unmarshal(dv, &obj) == nil:
		for k := range obj {
			names = append(names, k)
		}
	case json.Unmarshal(dv, &list) == nil:
		for _, item := range list {
			names = append(names, jsonScalar(item))
		}
	}
	names = slices.DeleteFunc(names, func(s string) bool { return s == "" })
	if len(names) == 0 {
		return nil
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// unquoteJSON returns the JSON text held by a JSON string, or raw itself
// when it is not a string.
func unquoteJSON(raw json.RawMessage) json.RawMessage {
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return bytes.TrimSpace([]byte(s))
		}
	}
	return raw
}

// maxGeometryDepth bounds the nesting followed in a geometry: a
// MultiPolygon's positions are 4 lists deep, a GeometryCollection adds a
// few.
const maxGeometryDepth = 32

// geometryBBox is the bounding box of a GeoJSON geometry of any type (Point,
// LineString, Polygon, Multi*, GeometryCollection; a Feature or
// FeatureCollection too), or of GeoJSON held in a JSON string: [west, south,
// east, north] over every position's longitude and latitude. Without
// positions it is the geometry's own "bbox" member, if that has 4 or 6
// numbers. nil when neither is readable.
func geometryBBox(raw json.RawMessage) []float64 {
	var doc any
	if json.Unmarshal(unquoteJSON(raw), &doc) != nil {
		return nil
	}
	b := bbox{w: math.Inf(1), s: math.Inf(1), e: math.Inf(-1), n: math.Inf(-1)}
	b.object(doc, 0)
	if b.found {
		return []float64{b.w, b.s, b.e, b.n}
	}
	if m, ok := doc.(map[string]any); ok {
		if list, ok := m["bbox"].([]any); ok && (len(list) == 4 || len(list) == 6) {
			out := make([]float64, len(list))
			for i, v := range list {
				f, ok := v.(float64)
				if !ok {
					return nil
				}
				out[i] = f
			}
			half := len(out) / 2
			return []float64{out[0], out[1], out[half], out[half+1]}
		}
	}
	return nil
}

type bbox struct {
	w, s, e, n float64
	found      bool
}

// object follows a GeoJSON object to its positions.
func (b *bbox) object(v any, depth int) {
	m, ok := v.(map[string]any)
	if !ok || depth > maxGeometryDepth {
		return
	}
	if c, ok := m["coordinates"]; ok {
		b.positions(c, depth+1)
	}
	if list, ok := m["geometries"].([]any); ok {
		for _, g := range list {
			b.object(g, depth+1)
		}
	}
	if g, ok := m["geometry"]; ok {
		b.object(g, depth+1)
	}
	if list, ok := m["features"].([]any); ok {
		for _, f := range list {
			b.object(f, depth+1)
		}
	}
}

// positions takes in a position ([x, y, ...]) or lists of them, nested to
// any depth; anything else is skipped.
func (b *bbox) positions(v any, depth int) {
	list, ok := v.([]any)
	if !ok || len(list) == 0 || depth > maxGeometryDepth {
		return
	}
	if x, ok := list[0].(float64); ok {
		if len(list) < 2 {
			return
		}
		y, ok := list[1].(float64)
		if !ok {
			return
		}
		b.w, b.e = min(b.w, x), max(b.e, x)
		b.s, b.n = min(b.s, y), max(b.n, y)
		b.found = true
		return
	}
	for _, item := range list {
		b.positions(item, depth+1)
	}
}
