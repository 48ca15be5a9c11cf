package session

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Datasource is one catalog entry.
type Datasource struct {
	ID, Name, Description, Driver string
	TStart, TEnd                  *time.Time // nil when unknown
	Geometry                      json.RawMessage
	// Modified is the catalog's "modified" time, zero when absent or
	// unreadable: a stable mtime for the datasource's files.
	Modified time.Time
	// Tags are properties.tags; nil when absent.
	Tags []string
	// Variables are the names of the data variables (the keys of
	// properties.schema.data_vars), sorted; nil when the schema has none or
	// cannot be read.
	Variables []string
	// BBox is the bounding box of Geometry, whatever its type: west, south,
	// east, north. nil when there is no geometry or it cannot be read.
	BBox []float64
	// Container is properties.container when the catalog gives one of
	// ContainerDataset, ContainerDataFrame or ContainerGeoDataFrame; ""
	// otherwise (often: Stage tells).
	Container string
}

// Query narrows the catalog; zero fields are not sent.
type Query struct {
	Search string
	Limit  int
}

// newID is the rule Datamesh enforces on the ids of new datasources; the
// ids it already serves may be anything (dots, upper case, spaces).
var newID = regexp.MustCompile(`^[a-z0-9_-]{3,80}$`)

// maxIDLen is the longest id usable as a file name (NAME_MAX).
const maxIDLen = 255

// ValidID reports whether id is usable: a safe single path component (not
// "." or "..", no "/", no NUL, 1 to 255 bytes). It is percent-encoded in
// URLs. Creating a datasource asks more: see ValidNewID.
func ValidID(id string) bool { return checkID(id) == nil }

// ValidNewID reports whether id may name a new datasource, as Datamesh
// requires: 3 to 80 of a-z, 0-9, '_' and '-'.
func ValidNewID(id string) bool { return newID.MatchString(id) }

// checkID says why id is not usable. Quoted with %q: an id may hold any
// byte but NUL and '/', and it goes into logs.
func checkID(id string) error {
	switch {
	case id == "":
		return errors.New("datasource id is empty")
	case id == "." || id == "..":
		return fmt.Errorf("datasource id %q is not a name", id)
	case len(id) > maxIDLen:
		return fmt.Errorf("datasource id of %d bytes: at most %d allowed", len(id), maxIDLen)
	case strings.ContainsAny(id, "/\x00"):
		return fmt.Errorf("datasource id %q: '/' and NUL not allowed", id)
	}
	return nil
}

// feature is a GeoJSON Feature as the catalog sends it.
type feature struct {
	ID         json.RawMessage `json:"id"`
	Geometry   json.RawMessage `json:"geometry"`
	Properties struct {
		ID          json.RawMessage `json:"id"`
		Name        json.RawMessage `json:"name"`
		Description json.RawMessage `json:"description"`
		Driver      json.RawMessage `json:"driver"`
		TStart      json.RawMessage `json:"tstart"`
		TEnd        json.RawMessage `json:"tend"`
		Modified    json.RawMessage `json:"modified"`
		Tags        json.RawMessage `json:"tags"`
		Schema      json.RawMessage `json:"schema"`
		Container   json.RawMessage `json:"container"`
	} `json:"properties"`
}

func (f *feature) datasource() Datasource {
	ds := Datasource{
		ID:          jsonText(f.ID),
		Name:        jsonText(f.Properties.Name),
		Description: jsonText(f.Properties.Description),
		Driver:      jsonText(f.Properties.Driver),
		TStart:      jsonTime(f.Properties.TStart),
		TEnd:        jsonTime(f.Properties.TEnd),
	}
	if m := jsonTime(f.Properties.Modified); m != nil {
		ds.Modified = *m
	}
	if ds.ID == "" {
		ds.ID = jsonText(f.Properties.ID)
	}
	if g := bytes.TrimSpace(f.Geometry); len(g) > 0 && string(g) != "null" {
		ds.Geometry = g
		ds.BBox = geometryBBox(g)
	}
	ds.Tags = jsonTags(f.Properties.Tags)
	ds.Variables = schemaVariables(f.Properties.Schema)
	switch c := jsonText(f.Properties.Container); c {
	case ContainerDataset, ContainerDataFrame, ContainerGeoDataFrame:
		ds.Container = c
	}
	return ds
}

// jsonTime is a JSON string time, or nil when absent or unreadable.
func jsonTime(raw json.RawMessage) *time.Time {
	s := jsonText(raw)
	if s == "" {
		return nil
	}
	t, err := parseTime(s)
	if err != nil {
		return nil
	}
	return &t
}

// Catalog lists the datasources the token can see. Entries whose id is not
// usable (ValidID) are skipped with a log line.
func (c *Client) Catalog(ctx context.Context, q Query) ([]Datasource, error) {
	params := url.Values{}
	if q.Search != "" {
		params.Set("search", q.Search)
	}
	if q.Limit > 0 {
		params.Set("limit", strconv.Itoa(q.Limit))
	}
	u := c.service + "/datasource/"
	if len(params) > 0 {
		u += "?" + params.Encode()
	}
	r := request{op: "catalog", method: http.MethodGet, url: u, timeout: c.cfg.ReadTimeout, readBody: true,
		maxBody: maxCatalogBody}
	resp, err := c.do(ctx, r)
	if err != nil {
		return nil, err
	}
	if resp.status != http.StatusOK {
		return nil, c.statusError(r, resp)
	}
	features, err := parseFeatures(resp.body)
	if err != nil {
		return nil, c.errorFor(r, resp.status, "", err)
	}
	out := make([]Datasource, 0, len(features))
	for i := range features {
		ds := features[i].datasource()
		if !ValidID(ds.ID) {
			c.log.Warn("datamesh catalog entry skipped: id is not a usable file name", "id", ds.ID)
			continue
		}
		out = append(out, ds)
	}
	return out, nil
}

// parseFeatures reads a FeatureCollection, or a bare list of features.
func parseFeatures(body []byte) ([]feature, error) {
	body = bytes.TrimSpace(body)
	if len(body) > 0 && body[0] == '[' {
		var list []feature
		if err := json.Unmarshal(body, &list); err != nil {
			return nil, fmt.Errorf("catalog is not a list of GeoJSON features: %w", err)
		}
		return list, nil
	}
	var fc struct {
		Features []feature `json:"features"`
	}
	if err := json.Unmarshal(body, &fc); err != nil {
		return nil, fmt.Errorf("catalog is not a GeoJSON FeatureCollection: %w", err)
	}
	return fc.Features, nil
}

// Datasource describes one datasource, which need not be in the catalog.
func (c *Client) Datasource(ctx context.Context, id string) (Datasource, error) {
	u := c.service + "/datasource/" + pathEscape(id)
	r := request{op: "datasource", method: http.MethodGet, url: u, timeout: c.cfg.ReadTimeout, readBody: true,
		maxBody: maxDatasourceBody}
	if err := checkID(id); err != nil {
		return Datasource{}, &Error{Op: r.op, Err: err}
	}
	resp, err := c.do(ctx, r)
	if err != nil {
		return Datasource{}, err
	}
	if resp.status != http.StatusOK {
		return Datasource{}, c.statusError(r, resp)
	}
	var f feature
	if err := json.Unmarshal(resp.body, &f); err != nil {
		return Datasource{}, c.errorFor(r, resp.status, "", fmt.Errorf("datasource is not a GeoJSON Feature: %w", err))
	}
	ds := f.datasource()
	if ds.ID == "" {
		ds.ID = id
	}
	if ds.ID != id {
		c.log.Warn("datamesh datasource answered with another id", "asked", id, "got", ds.ID)
		ds.ID = id
	}
	return ds, nil
}
