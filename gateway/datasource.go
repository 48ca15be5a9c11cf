package gateway

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// idPattern is what a Datamesh datasource id looks like.
var idPattern = regexp.MustCompile(`^[a-z0-9_-]{3,80}$`)

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
	// folders maps a folder key ("" for the root, else without trailing
	// slash) to its children, sorted by name.
	folders map[string][]listEntry

	name, description string
	feature           []byte // the catalog Feature, JSON
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
		case !isZarrStore(path):
			log.Info("skipping folder that is not a Zarr store", "folder", path)
			continue
		case !idPattern.MatchString(e.Name()):
			log.Warn("skipping Zarr store whose name is not a datasource id (want ^[a-z0-9_-]{3,80}$)", "folder", path)
			continue
		}
		ds, err := loadDatasource(e.Name(), path)
		if err != nil {
			log.Warn("skipping unreadable Zarr store", "folder", path, "err", err)
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
		folders:  map[string][]listEntry{"": nil},
	}
	if err := ds.index(); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	ds.root = root
	for k := range ds.folders {
		sort.Slice(ds.folders[k], func(i, j int) bool { return ds.folders[k][i].name < ds.folders[k][j].name })
	}
	meta, err := readStoreMeta(ds)
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	ds.name, ds.description = meta.title(id), meta.description()
	ds.feature, err = meta.feature(ds)
	if err != nil {
		return nil, fmt.Errorf("catalog entry: %w", err)
	}
	return ds, nil
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
		parent, name := "", key
		if i := strings.LastIndexByte(key, '/'); i >= 0 {
			parent, name = key[:i], key[i+1:]
		}
		switch {
		case d.IsDir():
			if _, ok := ds.folders[key]; !ok {
				ds.folders[key] = nil
			}
			ds.folders[parent] = append(ds.folders[parent], listEntry{name: name, isDir: true})
		case d.Type().IsRegular():
			fi, err := d.Info()
			if err != nil {
				return err
			}
			ds.files[key] = fi.Size()
			ds.folders[parent] = append(ds.folders[parent], listEntry{name: name})
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
			ds.folders[parent] = append(ds.folders[parent], listEntry{name: name})
		}
		return nil
	})
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
