package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/session"
)

func TestCheckQueries(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(text), 0o600))
		return p
	}
	good := write("good.json", "{\n  \"datasource\": \"era5\",\n  \"variables\": [\"u10\"]\n}\n")
	noDS := write("nods.json", `{"variables": ["u10"]}`)
	notJSON := write("bad.json", `datasource=era5`)
	cases := []struct {
		name  string
		specs []string
		err   string
	}{
		{"ok", []string{"winds=" + good}, ""},
		{"no =", []string{"winds"}, "give NAME=FILE"},
		{"empty file part", []string{"winds="}, "give NAME=FILE"},
		{"a slash", []string{"a/b=" + good}, "not a safe name"},
		{"an @", []string{"a@b=" + good}, "not a safe name"},
		{"hidden", []string{".x=" + good}, "not a safe name"},
		{"twice", []string{"w=" + good, "w=" + good}, "given twice"},
		{"no datasource", []string{"w=" + noDS}, `no "datasource"`},
		{"not JSON", []string{"w=" + notJSON}, "not a JSON object"},
		{"missing file", []string{"w=" + filepath.Join(dir, "nope.json")}, "no such file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := &mountOptions{Queries: append([]string(nil), c.specs...)}
			docs, err := o.checkQueries()
			if c.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), c.err)
				return
			}
			require.NoError(t, err)
			assert.JSONEq(t, `{"datasource":"era5","variables":["u10"]}`, string(docs["winds"]))
			assert.Equal(t, `{"datasource":"era5","variables":["u10"]}`, string(docs["winds"]), "compacted")
		})
	}
	// A relative FILE is made absolute: the background mount runs in "/".
	t.Chdir(dir)
	o := &mountOptions{Queries: []string{"winds=good.json"}}
	_, err := o.checkQueries()
	require.NoError(t, err)
	assert.Equal(t, "winds="+good, o.Queries[0])

	assert.ErrorIs(t, checkQueryNames(map[string][]byte{"era5": nil}, []string{"a", "era5"}), errQueryClash)
	assert.NoError(t, checkQueryNames(map[string][]byte{"winds": nil}, []string{"a", "era5"}))
}

func TestLsCells(t *testing.T) {
	t0 := time.Date(2020, 1, 2, 3, 4, 0, 0, time.UTC)
	assert.Equal(t, "2020-01-02T03:04Z .. -", timeRange(&t0, nil))
	assert.Equal(t, "-", timeRange(nil, nil))
	assert.Equal(t, "dataset", container(session.Datasource{Driver: "onzarr"}))
	assert.Equal(t, "dataframe", container(session.Datasource{Driver: "onsql", Container: "dataframe"}))
	assert.Equal(t, "? (driver onsql)", container(session.Datasource{Driver: "onsql"}))
	assert.Equal(t, "a b", cell("a\tb", 10))
	assert.Equal(t, "abcd…", cell("abcdefgh", 5))
	assert.Equal(t, "-", cell("", 5))
}
