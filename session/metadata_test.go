package session

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestGeometryBBox(t *testing.T) {
	tests := []struct {
		name, geom string
		want       []float64
	}{
		{"point", `{"type":"Point","coordinates":[174.5,-41.2]}`, []float64{174.5, -41.2, 174.5, -41.2}},
		{"point 3-D", `{"type":"Point","coordinates":[1,2,30]}`, []float64{1, 2, 1, 2}},
		{"multipoint", `{"type":"MultiPoint","coordinates":[[1,5],[-3,2],[4,-1]]}`, []float64{-3, -1, 4, 5}},
		{"linestring", `{"type":"LineString","coordinates":[[0,0],[10,-5]]}`, []float64{0, -5, 10, 0}},
		{"polygon", `{"type":"Polygon","coordinates":[[[-180,-90],[180,-90],[180,90],[-180,90],[-180,-90]]]}`,
			[]float64{-180, -90, 180, 90}},
		{"polygon with a hole", `{"type":"Polygon","coordinates":[[[0,0],[10,0],[10,10],[0,10],[0,0]],[[2,2],[3,2],[3,3],[2,2]]]}`,
			[]float64{0, 0, 10, 10}},
		{"multipolygon", `{"type":"MultiPolygon","coordinates":[[[[160,-50],[180,-50],[180,-30],[160,-50]]],[[[-180,-50],[-170,-50],[-170,-40],[-180,-50]]]]}`,
			[]float64{-180, -50, 180, -30}},
		{"geometry collection", `{"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[5,5]},{"type":"LineString","coordinates":[[-1,0],[2,8]]}]}`,
			[]float64{-1, 0, 5, 8}},
		{"feature", `{"type":"Feature","geometry":{"type":"Point","coordinates":[1,2]},"properties":{}}`, []float64{1, 2, 1, 2}},
		{"GeoJSON in a string", `"{\"type\":\"Point\",\"coordinates\":[7,8]}"`, []float64{7, 8, 7, 8}},
		{"bbox member only", `{"type":"Polygon","coordinates":[],"bbox":[-10,-20,10,20]}`, []float64{-10, -20, 10, 20}},
		{"3-D bbox member", `{"bbox":[-10,-20,0,10,20,100]}`, []float64{-10, -20, 10, 20}},
		{"positions win over bbox", `{"type":"Point","coordinates":[1,1],"bbox":[0,0,9,9]}`, []float64{1, 1, 1, 1}},
		{"odd positions skipped", `{"type":"MultiPoint","coordinates":[[1],["a",2],[3,"b"],[4,5],null,{}]}`, []float64{4, 5, 4, 5}},
		{"empty coordinates", `{"type":"Polygon","coordinates":[[]]}`, nil},
		{"no coordinates", `{"type":"Point"}`, nil},
		{"bad bbox member", `{"bbox":[1,2,"x",4]}`, nil},
		{"WKT", `"POINT (1 2)"`, nil},
		{"a number", `42`, nil},
		{"not JSON", `{`, nil},
		{"deeply nested", `{"type":"Polygon","coordinates":` + strings.Repeat("[", 100) + `1,2` + strings.Repeat("]", 100) + `}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, geometryBBox(json.RawMessage(tt.geom)))
		})
	}
}

func TestSchemaVariables(t *testing.T) {
	tests := []struct {
		name, schema string
		want         []string
	}{
		{"data_vars object, sorted", `{"dims":{"time":3},"coords":{"time":{}},"data_vars":{"v10":{"dims":["time"]},"u10":{},"hs":{}}}`,
			[]string{"hs", "u10", "v10"}},
		{"data_vars list", `{"data_vars":["b","a","b",""]}`, []string{"a", "b"}},
		{"schema in a string", `"{\"data_vars\":{\"x\":{}}}"`, []string{"x"}},
		{"data_vars in a string", `{"data_vars":"{\"y\":{}}"}`, []string{"y"}},
		{"no data_vars", `{"dims":{}}`, nil},
		{"empty data_vars", `{"data_vars":{}}`, nil},
		{"null data_vars", `{"data_vars":null}`, nil},
		{"odd data_vars", `{"data_vars":12}`, nil},
		{"schema a list", `[1,2]`, nil},
		{"schema null", `null`, nil},
		{"absent", ``, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, schemaVariables(json.RawMessage(tt.schema)))
		})
	}
}

func TestJSONTags(t *testing.T) {
	tests := []struct {
		raw  string
		want []string
	}{
		{`["wind","ERA5"]`, []string{"wind", "ERA5"}},
		{`["a",null,"",3,true,{"x":1},["y"]]`, []string{"a", "3", "true"}},
		{`"single"`, []string{"single"}},
		{`[]`, nil},
		{`null`, nil},
		{`{"a":1}`, nil},
		{``, nil},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, jsonTags(json.RawMessage(tt.raw)), tt.raw)
	}
}

// What a .datasource.json shows comes from the catalog Feature; a field that
// cannot be read is left empty and never fails the catalog or the entry.
func TestCatalogDescriptiveFields(t *testing.T) {
	const catalog = `{"type":"FeatureCollection","features":[
	 {"id":"grid","geometry":{"type":"Polygon","coordinates":[[[165,-48],[179,-48],[179,-34],[165,-34],[165,-48]]]},
	  "properties":{"name":"Grid","driver":"onzarr","tags":["wind","nz"],"container":"dataset",
	   "schema":{"dims":{"time":10},"data_vars":{"v10":{},"u10":{}}}}},
	 {"id":"table","geometry":{"type":"MultiPoint","coordinates":[[1,2],[3,4]]},
	  "properties":{"driver":"onsql","container":"geodataframe","tags":"obs","schema":"not json"}},
	 {"id":"odd","geometry":"POINT (1 2)",
	  "properties":{"tags":{"a":1},"container":"Spreadsheet","schema":{"data_vars":[1,"x"]}}},
	 {"id":"bare","properties":{}}
	]}`
	srv := newHandlerServer(t, func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(catalog)) })
	c := newTestClient(t, testConfig(srv, nil))
	list, err := c.Catalog(t.Context(), Query{})
	require.NoError(t, err)
	require.Len(t, list, 4)

	type view struct {
		Tags, Variables []string
		BBox            []float64
		Container       string
	}
	got := func(ds Datasource) view { return view{ds.Tags, ds.Variables, ds.BBox, ds.Container} }
	assert.Equal(t, view{[]string{"wind", "nz"}, []string{"u10", "v10"}, []float64{165, -48, 179, -34}, ContainerDataset}, got(list[0]))
	assert.Equal(t, view{[]string{"obs"}, nil, []float64{1, 2, 3, 4}, ContainerGeoDataFrame}, got(list[1]))
	assert.Equal(t, view{nil, []string{"1", "x"}, nil, ""}, got(list[2]), "odd fields left empty, unknown container dropped")
	assert.Equal(t, view{}, got(list[3]))

	// One datasource, the same way.
	srv = newHandlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"id":"grid","geometry":{"type":"Point","coordinates":[1,2]},
		 "properties":{"tags":["t"],"container":"dataframe","schema":{"data_vars":{"z":{}}}}}`))
	})
	c = newTestClient(t, testConfig(srv, nil))
	ds, err := c.Datasource(t.Context(), "grid")
	require.NoError(t, err)
	assert.Equal(t, view{[]string{"t"}, []string{"z"}, []float64{1, 2, 1, 2}, ContainerDataFrame}, got(ds))
}

func TestDetailCleanedAndRedacted(t *testing.T) {
	c := newTestClient(t, testConfig("http://127.0.0.1:1", nil))
	assert.Equal(t, "bad token REDACTED here", c.detail([]byte(`{"detail":"bad token `+testToken+` here"}`)))
	assert.Equal(t, "a \uFFFD[31m b c", c.detail([]byte(`{"detail":"a \u001b[31m b\n\tc"}`)))
	assert.Equal(t, "bad \uFFFD utf8", parseDetail([]byte("{\"detail\":\"bad \xff utf8\"}")))
	// Cut on a rune boundary.
	long := strings.Repeat("a", maxDetail-1) + "é" + "tail"
	got := parseDetail([]byte(`{"detail":"` + long + `"}`))
	assert.Equal(t, strings.Repeat("a", maxDetail-1)+"...", got)
	// A token cut by the bound is redacted before the cut.
	at := strings.Repeat("x", maxDetail-5) + testToken
	assert.NotContains(t, c.detail([]byte(`{"detail":"`+at+`"}`)), testToken[:5])

	cfg := testConfig("http://127.0.0.1:1", nil)
	cfg.Token = "Bearer jwt.part.sig"
	c = newTestClient(t, cfg)
	assert.Equal(t, "REDACTED and REDACTED", c.detail([]byte(`{"detail":"Bearer jwt.part.sig and jwt.part.sig"}`)))
}
