package zarr

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"
)

// Metadata file names.
const (
	zmetadataKey = ".zmetadata"
	zgroupName   = ".zgroup"
	zarrayName   = ".zarray"
	zattrsName   = ".zattrs"
	zarrJSONName = "zarr.json"
)

// Hierarchy is the tree of groups and arrays of one store, with the bytes of
// every metadata file. It is immutable once Open returns and safe for
// concurrent use.
type Hierarchy struct {
	folders map[string]*Folder
}

// Folder is one folder of the hierarchy: a group, an array, or an implicit
// intermediate folder.
type Folder struct {
	Path     string   // "" for the store root, else "a/b"
	Files    []File   // metadata files in this folder, sorted by name
	Children []string // immediate child group, array and implicit folder names, sorted
	Array    *Array   // non-nil when this folder is an array
}

// File is one metadata file and its exact bytes.
type File struct {
	Name string
	Data []byte
}

// Folder returns the folder at path ("" is the store root), including
// implicit intermediate folders. Folders inside arrays are chunk folders:
// see Array.ChunkFolder.
func (h *Hierarchy) Folder(path string) (*Folder, bool) {
	f, ok := h.folders[path]
	return f, ok
}

// Open reads the hierarchy of the store named name (the datasource id, used
// in errors). It tries, in order: v2 consolidated metadata (.zmetadata), v3
// (zarr.json, with inline consolidated metadata or by listing), and v2 without
// consolidated metadata (.zgroup or .zarray, then listing).
func Open(ctx context.Context, name string, s Store) (*Hierarchy, error) {
	b := newBuilder(name)
	raw, err := s.Get(ctx, zmetadataKey)
	switch {
	case err == nil:
		if err := b.loadV2Consolidated(raw); err != nil {
			return nil, err
		}
		return b.finish()
	case !errors.Is(err, fs.ErrNotExist):
		return nil, b.storeError(zmetadataKey, err)
	}
	raw, err = s.Get(ctx, zarrJSONName)
	switch {
	case err == nil:
		if err := b.loadV3(ctx, s, raw); err != nil {
			return nil, err
		}
		return b.finish()
	case !errors.Is(err, fs.ErrNotExist):
		return nil, b.storeError(zarrJSONName, err)
	}
	if err := b.loadV2(ctx, s); err != nil {
		return nil, err
	}
	return b.finish()
}

// ErrNotZarr is the cause of Open's error when a store has none of the
// metadata keys of a Zarr hierarchy at its root.
var ErrNotZarr = errors.New("no zarr metadata (.zmetadata, zarr.json, .zgroup or .zarray) at the store root")

// maxNodes bounds the number of folders of one hierarchy.
const maxNodes = 1 << 20

type nodeKind uint8

const (
	implicitNode nodeKind = iota
	groupNode
	arrayNode
)

// builder collects folders while a hierarchy is read. Its methods are safe
// for concurrent use.
type builder struct {
	name    string
	mu      sync.Mutex
	folders map[string]*Folder
	kinds   map[string]nodeKind
}

func newBuilder(name string) *builder {
	return &builder{name: name, folders: map[string]*Folder{}, kinds: map[string]nodeKind{}}
}

// errorf makes an error that names the datasource and the key at fault.
func (b *builder) errorf(key, format string, args ...any) error {
	if key == "" {
		key = "store root"
	}
	return fmt.Errorf("zarr store %q: %s: %s", b.name, key, fmt.Sprintf(format, args...))
}

// storeError wraps an error from the Store, keeping its cause for errors.Is.
func (b *builder) storeError(key string, err error) error {
	return fmt.Errorf("zarr store %q: %s: %w", b.name, key, err)
}

// folderLocked returns the folder at path, creating it and its ancestors.
func (b *builder) folderLocked(path string) (*Folder, error) {
	if f, ok := b.folders[path]; ok {
		return f, nil
	}
	if len(b.folders) >= maxNodes {
		return nil, b.errorf(path, "more than %d folders in the hierarchy", maxNodes)
	}
	f := &Folder{Path: path}
	b.folders[path] = f
	if path != "" {
		dir, name := splitKey(path)
		parent, err := b.folderLocked(dir)
		if err != nil {
			return nil, err
		}
		parent.Children = append(parent.Children, name)
	}
	return f, nil
}

// addNode records the folder at path as a node of kind with the metadata
// file name holding data; array is set for arrays.
func (b *builder) addNode(path string, kind nodeKind, file string, data []byte, array *Array) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	f, err := b.folderLocked(path)
	if err != nil {
		return err
	}
	key := joinKey(path, file)
	if slices.ContainsFunc(f.Files, func(x File) bool { return x.Name == file }) {
		return b.errorf(key, "duplicate metadata file")
	}
	if kind != implicitNode {
		if old := b.kinds[path]; old != implicitNode && old != kind {
			return b.errorf(key, "folder is both a group and an array")
		}
		b.kinds[path] = kind
	}
	if array != nil {
		f.Array = array
	}
	f.Files = append(f.Files, File{Name: file, Data: data})
	return nil
}

// finish checks the tree as a whole and sorts it.
func (b *builder) finish() (*Hierarchy, error) {
	if _, ok := b.folders[""]; !ok {
		return nil, fmt.Errorf("zarr store %q: %w", b.name, ErrNotZarr)
	}
	for path, f := range b.folders {
		slices.SortFunc(f.Files, func(x, y File) int { return strings.Compare(x.Name, y.Name) })
		slices.Sort(f.Children)
		if f.Array != nil && len(f.Children) > 0 {
			// Anything below an array would shadow its chunk keys.
			return nil, b.errorf(joinKey(path, f.Children[0]), "node inside array %q", path)
		}
		for _, child := range f.Children {
			if _, found := slices.BinarySearchFunc(f.Files, child, func(x File, name string) int { return strings.Compare(x.Name, name) }); found {
				return nil, b.errorf(joinKey(path, child), "name is both a folder and a metadata file")
			}
		}
	}
	return &Hierarchy{folders: b.folders}, nil
}

// validNodeKey checks a key that names metadata, as sent by the server in
// the document or listing named source.
func (b *builder) validNodeKey(source, key string) error {
	if err := ValidKey(key); err != nil {
		return b.errorf(fmt.Sprintf("%s %q", source, key), "rejected: %v", err)
	}
	return nil
}

// limiter bounds the number of store requests in flight.
type limiter chan struct{}

func (l limiter) acquire(ctx context.Context) error {
	select {
	case l <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l limiter) release() { <-l }

// maxParallelRequests bounds the requests of a metadata walk.
const maxParallelRequests = 16

// maxWalkDepth bounds the folder depth of a metadata walk.
const maxWalkDepth = 64

// get fetches key under the limiter; missing reports a missing key, which is
// not an error.
func (b *builder) get(ctx context.Context, s Store, lim limiter, key string) (data []byte, missing bool, err error) {
	if err := lim.acquire(ctx); err != nil {
		return nil, false, b.storeError(key, err)
	}
	defer lim.release()
	data, err = s.Get(ctx, key)
	switch {
	case err == nil:
		return data, false, nil
	case errors.Is(err, fs.ErrNotExist):
		return nil, true, nil
	default:
		return nil, false, b.storeError(key, err)
	}
}

// walk visits the store's nodes from the root: node loads the node at path
// and says whether it is a group, whose sub-folders are then listed and
// visited in turn, with a bounded number of requests in flight and a bounded
// depth. v2 and v3 walks differ only in how a node is loaded.
func (b *builder) walk(ctx context.Context, s Store, node func(ctx context.Context, lim limiter, path string) (isGroup bool, err error)) error {
	lim := make(limiter, maxParallelRequests)
	g, ctx := errgroup.WithContext(ctx)
	var visit func(path string, depth int) error
	visit = func(path string, depth int) error {
		isGroup, err := node(ctx, lim, path)
		if err != nil || !isGroup {
			return err
		}
		if depth >= maxWalkDepth {
			return b.errorf(path, "hierarchy deeper than %d levels", maxWalkDepth)
		}
		dirs, err := b.listDirs(ctx, s, lim, path)
		if err != nil {
			return err
		}
		for _, dir := range dirs {
			g.Go(func() error { return visit(dir, depth+1) })
		}
		return nil
	}
	g.Go(func() error { return visit("", 0) })
	return g.Wait()
}

// listDirs lists the sub-folders of prefix, validating their names.
func (b *builder) listDirs(ctx context.Context, s Store, lim limiter, prefix string) ([]string, error) {
	where := "listing of " + prefix + "/"
	if prefix == "" {
		where = "listing of the store root"
	}
	lister, ok := s.(Lister)
	if !ok {
		return nil, b.errorf(where, "store has no consolidated metadata and cannot be listed")
	}
	if err := lim.acquire(ctx); err != nil {
		return nil, b.storeError(where, err)
	}
	entries, err := lister.List(ctx, prefix)
	lim.release()
	if err != nil {
		return nil, b.storeError(where, err)
	}
	var dirs []string
	for _, e := range entries {
		name, isDir := strings.CutSuffix(e, "/")
		if !isDir {
			continue
		}
		if strings.Contains(name, "/") {
			return nil, b.errorf(fmt.Sprintf("%q", joinKey(prefix, e)), "listing entry is not an immediate child")
		}
		key := joinKey(prefix, name)
		if err := b.validNodeKey("listing entry", key); err != nil {
			return nil, err
		}
		dirs = append(dirs, key)
	}
	return dirs, nil
}
