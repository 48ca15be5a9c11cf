package zarr

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
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
//
// It holds each metadata document once: a consolidated document as fetched
// (it is served as is) and the per-node files rebuilt from it, or the
// documents read one by one from a store without one. Nothing parsed is kept
// beyond each array's grid.
type Hierarchy struct {
	folders map[string]*Folder
	digest  [32]byte
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

// Digest is a SHA-256 digest of the whole hierarchy: every folder's path and
// every metadata file's name and bytes, in a fixed order. Two hierarchies
// have the same digest when, and only when (barring collisions), they serve
// the same tree with the same metadata: a changed document anywhere in a
// store changes it. It is computed once by Open.
func (h *Hierarchy) Digest() [32]byte { return h.digest }

// Open reads the hierarchy of the store named name (the datasource id, used
// in errors). It tries, in order: consolidated metadata in .zmetadata (v2
// entries, or v3 zarr.json entries as Datamesh writes them), v3 (zarr.json,
// with inline consolidated metadata or by listing), and v2 without
// consolidated metadata (.zgroup or .zarray, then listing).
//
// Every metadata key is read with a context carrying WithSizeLimit(ctx,
// MaxMetadataSize); a longer document, or a hierarchy whose metadata is more
// than MaxTotalMetadataSize in all, is an error wrapping ErrMetadataTooLarge.
func Open(ctx context.Context, name string, s Store) (*Hierarchy, error) {
	return open(ctx, name, s, defaultLimits)
}

// limits bounds the metadata Open reads; tests change them.
type limits struct {
	doc   int // one metadata document
	total int // every metadata file of the hierarchy
}

var defaultLimits = limits{doc: MaxMetadataSize, total: MaxTotalMetadataSize}

func open(ctx context.Context, name string, s Store, lim limits) (*Hierarchy, error) {
	b := newBuilder(name, lim)
	raw, missing, err := b.fetch(ctx, s, zmetadataKey)
	switch {
	case err != nil:
		return nil, err
	case !missing:
		if err := b.loadZmetadata(raw); err != nil {
			return nil, err
		}
		return b.finish()
	}
	raw, missing, err = b.fetch(ctx, s, zarrJSONName)
	switch {
	case err != nil:
		return nil, err
	case !missing:
		if err := b.loadV3(ctx, s, raw); err != nil {
			return nil, err
		}
		return b.finish()
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
	lim     limits
	mu      sync.Mutex
	folders map[string]*Folder
	kinds   map[string]nodeKind
	held    int // bytes of metadata reserved so far (see reserve)
}

func newBuilder(name string, lim limits) *builder {
	return &builder{name: name, lim: lim, folders: map[string]*Folder{}, kinds: map[string]nodeKind{}}
}

// fetch reads the metadata document key, asking the store to stop at the
// size limit and checking that it did; missing reports a missing key, which
// is not an error. The document is reserved (see reserve): the caller keeps
// it, or releases it.
func (b *builder) fetch(ctx context.Context, s Store, key string) (data []byte, missing bool, err error) {
	data, err = s.Get(WithSizeLimit(ctx, int64(b.lim.doc)), key)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, true, nil
	case err != nil:
		return nil, false, b.storeError(key, err)
	case len(data) > b.lim.doc:
		return nil, false, fmt.Errorf("zarr store %q: %s is %d bytes, more than the %s allowed for a metadata document: %w",
			b.name, key, len(data), formatSize(b.lim.doc), ErrMetadataTooLarge)
	}
	if err := b.reserve(key, len(data)); err != nil {
		return nil, false, err
	}
	if cap(data)-len(data) > len(data)/8 {
		// A body read without a known length may sit in a buffer up to
		// twice its size; the hierarchy keeps the document for its life.
		data = append(make([]byte, 0, len(data)), data...)
	}
	return data, false, nil
}

// reserve counts n more bytes of metadata toward the hierarchy's total, or
// fails once the total is over its limit; key names the document at fault.
func (b *builder) reserve(key string, n int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > b.lim.total-b.held {
		return b.overTotal(key)
	}
	b.held += n
	return nil
}

// overTotal is the error for a document that takes the hierarchy's metadata
// over its total limit.
func (b *builder) overTotal(key string) error {
	return fmt.Errorf("zarr store %q: %s: the metadata of the hierarchy is more than the %s allowed in all: %w",
		b.name, key, formatSize(b.lim.total), ErrMetadataTooLarge)
}

// release gives back bytes reserved for a document that is not kept.
func (b *builder) release(n int) {
	b.mu.Lock()
	b.held -= n
	b.mu.Unlock()
}

// formatSize writes a size limit for error messages.
func formatSize(n int) string {
	if n >= 1<<20 && n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
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
	return &Hierarchy{folders: b.folders, digest: digest(b.folders)}, nil
}

// digest hashes every folder path and every metadata file's name and bytes,
// folders in path order, files in name order (finish sorted them). Each
// field is preceded by its length, so that no two trees hash the same input.
func digest(folders map[string]*Folder) [32]byte {
	paths := make([]string, 0, len(folders))
	for p := range folders {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	field := func(b []byte) {
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(b)))])
		h.Write(b)
	}
	for _, p := range paths {
		f := folders[p]
		field([]byte(p))
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(f.Files)))])
		for _, file := range f.Files {
			field([]byte(file.Name))
			field(file.Data)
		}
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
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

// get fetches key (see fetch) under the limiter.
func (b *builder) get(ctx context.Context, s Store, lim limiter, key string) (data []byte, missing bool, err error) {
	if err := lim.acquire(ctx); err != nil {
		return nil, false, b.storeError(key, err)
	}
	defer lim.release()
	return b.fetch(ctx, s, key)
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
