package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/oceanum-dmfs/dmfs/fs"
	"github.com/oceanum-dmfs/dmfs/session"
)

// maxQueryFile is the largest --query file read: an OceanQL query is a few
// hundred bytes.
const maxQueryFile = 1 << 20

// checkQueries reads the --query NAME=FILE flags: each NAME a safe file name
// without '@' (a name with '@' is a query path), given once; each FILE an
// OceanQL query in JSON naming its datasource. FILE is made absolute in
// place: the background mount runs in "/". The documents are returned
// compacted, by NAME.
func (o *mountOptions) checkQueries() (map[string][]byte, error) {
	if len(o.Queries) == 0 {
		return nil, nil
	}
	out := map[string][]byte{}
	for i, spec := range o.Queries {
		name, file, ok := strings.Cut(spec, "=")
		if !ok || name == "" || file == "" {
			return nil, fmt.Errorf("--query %q: give NAME=FILE", spec)
		}
		if !session.ValidID(name) || strings.ContainsAny(name, "@") || strings.HasPrefix(name, ".") {
			return nil, fmt.Errorf("--query %q: %q is not a safe name for a directory (no '/', '@', NUL or leading '.')", spec, name)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("--query %s given twice", name)
		}
		abs, err := filepath.Abs(file)
		if err != nil {
			return nil, fmt.Errorf("--query %s: %w", name, err)
		}
		o.Queries[i] = name + "=" + abs
		doc, err := readQueryFile(abs)
		if err != nil {
			return nil, fmt.Errorf("--query %s: %w", name, err)
		}
		out[name] = doc
	}
	return out, nil
}

// readQueryFile reads an OceanQL query: a JSON object with a datasource.
func readQueryFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxQueryFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxQueryFile {
		return nil, fmt.Errorf("%s: larger than %d bytes: not an OceanQL query", path, maxQueryFile)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(b, &obj); err != nil {
		return nil, fmt.Errorf("%s: not a JSON object: %w", path, err)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return nil, err
	}
	if _, err := fs.QueryDatasource(buf.Bytes()); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return buf.Bytes(), nil
}

// errQueryClash is the cause when a --query NAME is also a catalog id.
var errQueryClash = errors.New("the name of a --query is a datasource id")

// checkQueryNames refuses --query names that the catalog also lists.
func checkQueryNames(queries map[string][]byte, ids []string) error {
	for _, id := range ids {
		if _, ok := queries[id]; ok {
			return fmt.Errorf("--query %s: %w; choose another NAME", id, errQueryClash)
		}
	}
	return nil
}
