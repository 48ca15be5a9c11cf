package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// maxIDBytes is the longest id served: a path component's limit.
const maxIDBytes = 255

// checkID tells why a folder name cannot be a datasource id. Every safe
// single path component is one (DESIGN §3): Datamesh's ^[a-z0-9_-]{3,80}$
// governs new ids only, and existing ones outside it (dots, capitals) are
// served. Ids must be UTF-8 because the catalog is JSON.
func checkID(id string) error {
	switch {
	case id == "" || id == "." || id == "..":
		return errors.New("not a path component")
	case strings.ContainsAny(id, "/\x00"):
		return errors.New("contains / or NUL")
	case len(id) > maxIDBytes:
		return fmt.Errorf("longer than %d bytes", maxIDBytes)
	case !utf8.ValidString(id):
		return errors.New("not UTF-8")
	}
	return nil
}

// rootMetadata are the store-level metadata files whose newest mtime is the
// datasource's "modified".
var rootMetadata = []string{".zmetadata", ".zgroup", ".zattrs", ".zarray", "zarr.json"}

// listEntry is one immediate child of a store folder.
type listEntry struct {
	name  string
	isDir bool
}

// datasource is one Zarr store, indexed once at startup.
type datasource struct {
	id   string
	dir  string // absolute, symlinks resolved
	root *os.Root
	// files maps each key to its size.
	files map[string]int64
	// escaping holds keys that are symlinks resolving outside the store.
	escaping map[string]bool
	// links maps keys that are symlinks inside the store to the path they
	// resolve to, relative to the store (os.Root refuses absolute links).
	links map[string]string

	name, description string
	// container is "dataset" for a Zarr store, "dataframe" or
	// "geodataframe" for a table (a folder holding data.parquet).
	container string
	// table is set for a tabular datasource.
	table *tableInfo
	// metaFiles are the files whose newest mtime is "modified".
	metaFiles []string
	// The catalog Feature, JSON, is featureHead + modified + featureTail.
	featureHead, featureTail []byte
	// loadModified is modified() at startup, for when no metadata file can
	// be read any more.
	loadModified time.Time
	// commitMu is held to write while a session's writes are renamed into
	// the store, and to read while a request opens a key or lists a
	// folder, so that no request sees half a commit.
	commitMu sync.RWMutex
}

// isZarrStore tells whether dir's top level holds Zarr metadata.
func isZarrStore(dir string) bool {
	for _, name := range []string{".zmetadata", ".zgroup", ".zarray", "zarr.json"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err == nil && fi.Mode().IsRegular() {
			return true
		}
	}
	return false
}

// loadDatasources indexes every Zarr store directly under dir.
func loadDatasources(dir string, log *slog.Logger) ([]*datasource, error) {
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("gateway: datasource folder %q: %w", dir, err)
	}
	realDir, err := filepath.EvalSymlinks(absDir)
	if err != nil {
		return nil, fmt.Errorf("gateway: datasource folder %q: %w", dir, err)
	}
	entries, err := os.ReadDir(realDir)
	if err != nil {
		return nil, fmt.Errorf("gateway: datasource folder %q: %w", dir, err)
	}
	var out []*datasource
	for _, e := range entries {
		path := filepath.Join(realDir, e.Name())
		switch {
		case e.Type()&fs.ModeSymlink != 0:
			// A symlinked store could lead anywhere: refuse rather than
			// reason about where it goes.
			log.Warn("skipping symlinked folder", "folder", path)
			continue
		case !e.IsDir():
			continue
		case !isZarrStore(path) && !isTable(path):
			log.Info("skipping folder that is neither a Zarr store nor a table (data.parquet)", "folder", path)
			continue
		}
		if err := checkID(e.Name()); err != nil {
			log.Warn("skipping datasource whose name cannot be a datasource id", "folder", path, "reason", err)
			continue
		}
		ds, err := loadDatasource(e.Name(), path)
		if err != nil {
			log.Warn("skipping unreadable datasource", "folder", path, "err", err)
			continue
		}
		out = append(out, ds)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	log.Info("datasources loaded", "folder", realDir, "count", len(out))
	return out, nil
}

func loadDatasource(id, dir string) (*datasource, error) {
	ds := &datasource{
		id:       id,
		dir:      dir,
		files:    map[string]int64{},
		escaping: map[string]bool{},
		links:    map[string]string{},
	}
	if err := ds.index(); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	ds.root = root
	ov, err := readOverrides(root)
	if err != nil {
		root.Close()
		return nil, err
	}
	if !isZarrStore(dir) && isTable(dir) {
		if err := loadTable(ds, ov); err != nil {
			root.Close()
			return nil, err
		}
		ds.loadModified = ds.modified()
		return ds, nil
	}
	if ov.Container != nil && *ov.Container != containerDataset {
		root.Close()
		return nil, fmt.Errorf("%s: a Zarr store's container is %q, not %q", overridesFile, containerDataset, *ov.Container)
	}
	ds.container, ds.metaFiles = containerDataset, rootMetadata
	meta, err := readStoreMeta(ds)
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("metadata: %w", err)
	}
	ds.name, ds.description = meta.title(id), meta.description()
	ov.applyNames(&ds.name, &ds.description)
	ds.featureHead, ds.featureTail, err = meta.feature(ds, ov)
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("catalog entry: %w", err)
	}
	ds.loadModified = ds.modified()
	return ds, nil
}

// Containers, as the stage answer names them.
const (
	containerDataset      = "dataset"
	containerDataFrame    = "dataframe"
	containerGeoDataFrame = "geodataframe"
)

// overridesFile is the optional file in a datasource folder that sets
// catalog properties: {"name", "description", "driver", "tags"} and, for a
// table, "container" ("dataframe" or "geodataframe").
const overridesFile = "datasource.json"

// dsOverrides is a datasource.json.
type dsOverrides struct {
	Name        *string  `json:"name"`
	Description *string  `json:"description"`
	Driver      *string  `json:"driver"`
	Tags        []string `json:"tags"`
	Container   *string  `json:"container"`
}

// readOverrides reads datasource.json (none: no overrides). Unknown
// fields are an error, so that a typo does not pass unseen.
func readOverrides(root *os.Root) (*dsOverrides, error) {
	ov := &dsOverrides{}
	raw, err := root.ReadFile(overridesFile)
	if errors.Is(err, fs.ErrNotExist) {
		return ov, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", overridesFile, err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(ov); err != nil {
		return nil, fmt.Errorf("%s: %w", overridesFile, err)
	}
	if ov.Driver != nil && *ov.Driver == "" {
		return nil, fmt.Errorf("%s: empty driver", overridesFile)
	}
	return ov, nil
}

// apply sets the overridden Feature properties.
func (ov *dsOverrides) apply(props map[string]any) {
	if ov.Name != nil {
		props["name"] = *ov.Name
	}
	if ov.Description != nil {
		props["description"] = *ov.Description
	}
	if ov.Driver != nil {
		props["driver"] = *ov.Driver
	}
	if ov.Tags != nil {
		props["tags"] = ov.Tags
	}
}

// applyNames sets the overridden name and description (used by search).
func (ov *dsOverrides) applyNames(name, description *string) {
	if ov.Name != nil {
		*name = *ov.Name
	}
	if ov.Description != nil {
		*description = *ov.Description
	}
}

// modified is the newest mtime of the store's root metadata files, read
// at each call: stable across restarts and remounts (clients use it as
// mtime, so that rsync -a copies nothing twice), and moving when the
// metadata is rewritten.
func (ds *datasource) modified() time.Time {
	var newest time.Time
	for _, name := range ds.metaFiles {
		if fi, err := ds.root.Stat(name); err == nil && fi.Mode().IsRegular() && fi.ModTime().After(newest) {
			newest = fi.ModTime()
		}
	}
	if newest.IsZero() {
		return ds.loadModified
	}
	return newest
}

// featureJSON is the catalog Feature with its current "modified".
func (ds *datasource) featureJSON() []byte {
	out := make([]byte, 0, len(ds.featureHead)+len(timeLayout)+len(ds.featureTail))
	out = append(out, ds.featureHead...)
	out = ds.modified().UTC().AppendFormat(out, timeLayout)
	return append(out, ds.featureTail...)
}

// index walks the store once; requests never walk it again.
func (ds *datasource) index() error {
	return filepath.WalkDir(ds.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path == ds.dir {
			return nil
		}
		rel, err := filepath.Rel(ds.dir, path)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		switch {
		case d.Type().IsRegular():
			fi, err := d.Info()
			if err != nil {
				return err
			}
			ds.files[key] = fi.Size()
		case d.Type()&fs.ModeSymlink != 0:
			target, err := filepath.EvalSymlinks(path)
			if err != nil {
				return nil // dangling: not a key
			}
			if !within(ds.dir, target) {
				ds.escaping[key] = true
				return nil
			}
			fi, err := os.Stat(target)
			if err != nil || !fi.Mode().IsRegular() {
				return nil
			}
			rel, err := filepath.Rel(ds.dir, target)
			if err != nil {
				return nil
			}
			ds.files[key] = fi.Size()
			ds.links[key] = rel
		}
		return nil
	})
}

// listFolder reads one folder of the store from disk, so that keys written
// after startup are listed too, sorted by name. A symlink is listed when it
// is a key (it resolves to a regular file inside the store), as at startup.
func (ds *datasource) listFolder(folder string) ([]listEntry, error) {
	name := folder
	if name == "" {
		name = "."
	}
	f, err := ds.root.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.IsDir() {
		return nil, fs.ErrNotExist
	}
	des, err := f.ReadDir(-1)
	if err != nil {
		return nil, err
	}
	out := make([]listEntry, 0, len(des))
	for _, d := range des {
		key := path.Join(folder, d.Name())
		switch {
		case key == overridesFile:
			// datasource.json configures the gateway; it is not a key.
		case d.IsDir():
			out = append(out, listEntry{name: d.Name(), isDir: true})
		case d.Type().IsRegular():
			out = append(out, listEntry{name: d.Name()})
		case d.Type()&fs.ModeSymlink != 0:
			if _, ok := ds.links[key]; ok {
				out = append(out, listEntry{name: d.Name()})
			} else if fi, err := ds.root.Stat(key); err == nil && fi.Mode().IsRegular() {
				out = append(out, listEntry{name: d.Name()})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

// within tells whether path is dir or below it; both are cleaned absolute
// paths.
func within(dir, path string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel)
}

// gone tells whether the store's folder was removed since startup.
func (ds *datasource) gone() bool {
	_, err := os.Lstat(ds.dir)
	return errors.Is(err, fs.ErrNotExist)
}

func (s *Server) lookup(id string) *datasource {
	s.dsMu.RLock()
	defer s.dsMu.RUnlock()
	return s.datasources[id]
}
