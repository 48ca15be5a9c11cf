// Package fs maps Datamesh datasources to a read-only FUSE tree: the root
// lists datasources, each datasource directory is its Zarr store (groups,
// arrays, metadata files, chunk files fetched lazily through the cache).
// It is the only package that imports go-fuse or speaks errno.
package fs

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sync/singleflight"

	"github.com/oceanum-dmfs/dmfs/cache"
	"github.com/oceanum-dmfs/dmfs/zarr"
)

// Catalog is what the filesystem needs to know about datasources. The
// command wires it to the Datamesh client.
type Catalog interface {
	// Datasources lists the datasources the mount shows at its root.
	Datasources(ctx context.Context) ([]Entry, error)
	// Datasource checks that id exists (an error matching fs.ErrNotExist if
	// not), for ids looked up by path but not listed.
	Datasource(ctx context.Context, id string) (Entry, error)
	// Store gives read access to one datasource's Zarr keys.
	Store(id string) zarr.Store
	// Stage stages an OceanQL query (JSON) and says what it holds: errors
	// match ErrNoData (nothing matched), ErrBadQuery (refused, with the
	// gateway's reason) or fs.ErrNotExist (no such datasource).
	Stage(ctx context.Context, query []byte) (Staged, error)
	// QueryStore gives read access to the Zarr keys of a staged dataset.
	QueryStore(qhash string) zarr.Store
	// OpenTable streams a table: the whole of datasource id when qhash is
	// "", else the staged query qhash. With ifChanged set (a
	// Table.Validator it gave before), a table still in that version is
	// not sent: the error matches ErrNotModified.
	OpenTable(ctx context.Context, id, qhash, ifChanged string) (Table, error)
}

// Table is a table's body as the gateway sends it.
type Table struct {
	Body io.ReadCloser
	Size int64 // -1 when unknown
	// Validator names this version of the table for OpenTable's ifChanged;
	// "" when the gateway gave nothing to name it by.
	Validator string
}

// Staged is a staged query.
type Staged struct {
	QHash     string
	Container string // ContainerDataset, or a table: "dataframe", "geodataframe"
}

// ContainerDataset is the container of a Zarr store; the others are tables.
const ContainerDataset = "dataset"

var (
	// ErrNoData is the cause of a Stage error when the query matched
	// nothing.
	ErrNoData = errors.New("no data")
	// ErrBadQuery is the cause of a Stage error when the gateway refused
	// the query.
	ErrBadQuery = errors.New("query refused")
	// ErrNotModified is the cause of an OpenTable error when the table is
	// still the version ifChanged names.
	ErrNotModified = errors.New("not modified")
)

// Entry is one datasource of the catalog.
type Entry struct {
	ID string
	// Modified is when the datasource last changed (the catalog's
	// "modified"), the mtime of its files; zero when the catalog does not
	// say, and the mount's start is used.
	Modified time.Time
	// Info is what the catalog says of it, shown in .datasource.json; nil
	// when it said nothing (the datasource is then taken to be a dataset).
	Info *Info
}

// Info describes a datasource in its .datasource.json file.
type Info struct {
	ID          string     `json:"id"`
	Name        string     `json:"name,omitempty"`
	Description string     `json:"description,omitempty"`
	Driver      string     `json:"driver,omitempty"`
	Container   string     `json:"container,omitempty"`
	TimeStart   *time.Time `json:"tstart,omitempty"`
	TimeEnd     *time.Time `json:"tend,omitempty"`
	BBox        []float64  `json:"bbox,omitempty"` // W, S, E, N
	Variables   []string   `json:"variables,omitempty"`
	Tags        []string   `json:"tags,omitempty"`
	// Query is the OceanQL query of a query directory.
	Query json.RawMessage `json:"query,omitempty"`
}

// Options configure the tree.
type Options struct {
	Catalog Catalog
	Cache   *cache.Cache
	// Readahead is the least number of chunks that follow a sequentially
	// read chunk fetched in the background (0 disables); see package access.
	Readahead int
	// Window is the number of fetches the gateway sustains at once (the
	// adaptive limit), which deepens readahead; nil: Readahead alone.
	Window func() int
	// MetadataTTL is how long the catalog and each store's metadata are
	// trusted before they are fetched again; also the kernel's entry and
	// attribute timeout.
	MetadataTTL time.Duration
	Logger      *slog.Logger
	UID, GID    uint32
	// FileMode and DirMode are the permission bits files and directories
	// show; 0: 0444 and 0555, or 0644 and 0755 in a --write mount.
	FileMode, DirMode uint32
	// Write makes the mount writable (nil: read-only).
	Write *WriteOptions
	// TableDir is a private folder for tables too large to hold in memory
	// while they are served (files there are unlinked at once); "" keeps
	// every table in memory.
	TableDir string
	// Queries are OceanQL queries (JSON) mounted at fixed names
	// (--query NAME=FILE), beside the query paths any name ID@... stages.
	Queries map[string][]byte
	// writer is the write side, when Write is set.
	writer *writer
	// now is the clock, for tests.
	now     func() time.Time
	started time.Time
	inodes  *inodeNumbers
	// cacheBytes is the cache's budget, which bounds readahead.
	cacheBytes int64
	// opens is how the mount answers OPEN (see passthrough.go).
	opens *openMode
}

// MountOptions are the go-fuse mount settings dmfs exposes.
type MountOptions struct {
	AllowOther bool
	Debug      bool
	// DirectMount calls mount(2) directly (root); otherwise fusermount3.
	DirectMount bool
	// FsName is the mount's source in the mount table ("dmfs" if empty).
	FsName string
	// Options are more kernel mount options (noexec, nosuid, ...).
	Options []string
	// NoPassthrough keeps the no-open mode even where the kernel would
	// take backing files (see passthrough.go).
	NoPassthrough bool
}

func (o *Options) fill() {
	if o.MetadataTTL <= 0 {
		o.MetadataTTL = 5 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.now == nil {
		o.now = time.Now
	}
	o.started = o.now()
	o.inodes = &inodeNumbers{}
	o.cacheBytes = o.Cache.Stats().MaxBytes
	o.opens = noOpen
	if o.Write != nil {
		o.writer = newWriter(o, *o.Write)
	}
}

// Mount mounts root at mountpoint (read-only unless Options.Write) and
// starts serving. The returned
// server's Wait returns when the filesystem is unmounted, from inside or out.
func Mount(mountpoint string, root *Root, mo MountOptions) (*fuse.Server, error) {
	ttl := root.opt.MetadataTTL
	mopts := []string{"ro", "default_permissions"}
	if root.opt.writer != nil {
		mopts = mopts[1:]
	}
	mopts = append(mopts, mo.Options...)
	fsName := cmp.Or(mo.FsName, "dmfs")
	opts := &gofs.Options{
		EntryTimeout:    &ttl,
		AttrTimeout:     &ttl,
		NegativeTimeout: &ttl,
		UID:             root.opt.UID,
		GID:             root.opt.GID,
		MountOptions: fuse.MountOptions{
			FsName:      fsName,
			Name:        "dmfs",
			Options:     mopts,
			AllowOther:  mo.AllowOther,
			Debug:       mo.Debug,
			DirectMount: mo.DirectMount,
			// READDIRPLUS would look up every entry of a listing, and a
			// chunk lookup may cost a request: plain `ls` must cost none.
			DisableReadDirPlus: true,
			MaxReadAhead:       1 << 20,
			MaxBackground:      64,
			// Many readers of one chunk (dask threads) should not queue.
			MaxWrite: 1 << 20,
		},
	}
	opens := &openMode{ready: make(chan struct{})}
	root.opt.opens = opens
	server, err := gofs.Mount(mountpoint, root, opts)
	if err != nil {
		close(opens.ready)
	} else {
		root.mounted.Store(true)
		if ok, why := opens.decidePassthrough(server, &root.opt, mo.NoPassthrough); ok {
			root.opt.Logger.Info("large chunks are read by the kernel from dmfs's memory (FUSE passthrough)", "min_bytes", opens.ownMin)
		} else {
			root.opt.Logger.Debug("no FUSE passthrough", "why", why)
		}
		if err := raiseReadahead(mountpoint); err != nil {
			root.opt.Logger.Debug("kernel readahead left at its default", "error", err)
		} else {
			root.opt.Logger.Debug("kernel readahead raised", "kib", readaheadKB)
		}
	}
	return server, err
}

// inodeNumbers hands out inode numbers: each directory gets a contiguous
// range, one number per entry in listing order, kept for the mount's life.
// Numbers follow key order on purpose: cp, tar and find sort entries by
// inode number before reading them, and reading chunks in key order is what
// lets readahead work.
type inodeNumbers struct {
	mu     sync.Mutex
	next   uint64
	ranges map[string]inodeRange
}

type inodeRange struct{ base, n uint64 }

// base returns the first inode number of the directory key with n entries;
// a directory that grew gets a fresh range.
func (a *inodeNumbers) base(key string, n uint64) uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r, ok := a.ranges[key]; ok && r.n >= n {
		return r.base
	}
	if a.ranges == nil {
		a.ranges = map[string]inodeRange{}
		a.next = 2 // 1 is the root's
	}
	r := inodeRange{base: a.next, n: n}
	a.next += n + 1
	a.ranges[key] = r
	return r.base
}

// one hands out a number of its own (a file or folder written through the
// mount), never reused.
func (a *inodeNumbers) one() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ranges == nil {
		a.ranges = map[string]inodeRange{}
		a.next = 2
	}
	a.next++
	return a.next - 1
}

// forget drops the ranges of directories whose key starts with prefix (an
// old version of a datasource). Numbers are never handed out again, so an
// inode the kernel still holds can never be confused with a new one.
func (a *inodeNumbers) forget(prefix string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k := range a.ranges {
		if strings.HasPrefix(k, prefix) {
			delete(a.ranges, k)
		}
	}
}

// loadTimeout bounds one shared load (the catalog, a store's hierarchy).
const loadTimeout = 2 * time.Minute

// shared runs load once for all concurrent callers of g with the same key. It runs detached
// from any one caller, so an interrupted `ls` does not fail the others
// waiting on it; each caller waits only as long as its own ctx allows.
func shared[T any](ctx context.Context, g *singleflight.Group, key string, load func(context.Context) (T, error)) (T, error) {
	return sharedFor(ctx, g, key, loadTimeout, load)
}

// sharedFor is shared with its own bound on the load (0: none, for
// downloads that the store's timeout between bytes bounds instead).
func sharedFor[T any](ctx context.Context, g *singleflight.Group, key string, timeout time.Duration, load func(context.Context) (T, error)) (T, error) {
	ch := g.DoChan(key, func() (any, error) {
		lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		defer cancel()
		if timeout > 0 {
			var stop context.CancelFunc
			lctx, stop = context.WithTimeout(lctx, timeout)
			defer stop()
		}
		return load(lctx)
	})
	var zero T
	select {
	case <-ctx.Done():
		return zero, ctx.Err()
	case res := <-ch:
		if res.Err != nil {
			return zero, res.Err
		}
		return res.Val.(T), nil
	}
}

// joinKey joins a folder path and a relative name with "/", as Zarr keys are.
func joinKey(dir, name string) string {
	if dir == "" {
		return name
	}
	if name == "" {
		return dir
	}
	return dir + "/" + name
}
