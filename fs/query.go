package fs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	iofs "io/fs"
	"slices"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// tableSuffix names a table's file: ID.parquet.
const tableSuffix = ".parquet"

// zarrDrivers are catalog drivers that serve Zarr stores: their container
// is known without a stage request.
var zarrDrivers = []string{"zarr", "onzarr"}

// knownContainers are the containers a stage may answer.
var knownContainers = []string{ContainerDataset, "dataframe", "geodataframe"}

// stageEntry is a staged query path, trusted for the metadata TTL; err is
// set for answers that are kept too (no data, a refused query).
type stageEntry struct {
	st  Staged
	err error
	at  time.Time
}

// learnContainer finds what datasource id holds: what the catalog says
// (its container, or a Zarr driver), else what staging {"datasource": id}
// answers, as the Python client learns it.
func (r *Root) learnContainer(ctx context.Context, id string) (string, error) {
	r.mu.Lock()
	info := r.infos[id]
	r.mu.Unlock()
	switch {
	case info == nil:
		return ContainerDataset, nil // the catalog said nothing: a Zarr store
	case info.Container != "":
		return info.Container, nil
	case slices.Contains(zarrDrivers, strings.ToLower(info.Driver)):
		return ContainerDataset, nil
	}
	q, err := json.Marshal(map[string]string{"datasource": id})
	if err != nil {
		return "", err
	}
	st, err := r.opt.Catalog.Stage(ctx, q)
	if err != nil {
		return "", fmt.Errorf("learning what datasource %s holds: %w", id, err)
	}
	r.opt.Logger.Debug("container learnt", "datasource", id, "container", st.Container)
	return st.Container, nil
}

// describe is the description file's document of datasource id (a query
// on it when query is set) with container c.
func (r *Root) describe(id, c string, query []byte) *Info {
	r.mu.Lock()
	known := r.infos[id]
	r.mu.Unlock()
	info := Info{ID: id}
	if known != nil {
		info = *known
	}
	info.Container = c
	if query != nil {
		info.Query = json.RawMessage(query)
	}
	return &info
}

// stage stages the query of path name, once per metadata TTL; no data and
// refused queries are remembered as long.
func (r *Root) stage(ctx context.Context, name string, query []byte) (Staged, error) {
	now := r.opt.now()
	r.mu.Lock()
	e, ok := r.stages[name]
	r.mu.Unlock()
	if ok && now.Sub(e.at) < r.opt.MetadataTTL {
		return e.st, e.err
	}
	e, err := shared(ctx, &r.stageRun, name, func(lctx context.Context) (stageEntry, error) {
		st, err := r.opt.Catalog.Stage(lctx, query)
		if err == nil && !slices.Contains(knownContainers, st.Container) {
			err = fmt.Errorf("the gateway staged a %q, which dmfs cannot show", st.Container)
		}
		e := stageEntry{st: st, err: err, at: r.opt.now()}
		if err != nil && !errors.Is(err, ErrNoData) && !errors.Is(err, ErrBadQuery) && !errors.Is(err, iofs.ErrNotExist) {
			return e, err // not kept: the next lookup asks again
		}
		r.mu.Lock()
		r.stages[name] = e
		r.mu.Unlock()
		return e, nil
	})
	if err != nil {
		return Staged{}, err
	}
	return e.st, e.err
}

// lookupQuery stages the query of path name and answers its directory: a
// read-only Zarr store served from the query's keys, or its table.
func (r *Root) lookupQuery(ctx context.Context, name string, query []byte, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	id, err := QueryDatasource(query)
	if err != nil {
		r.opt.Logger.Warn("query: EINVAL", "name", name, "err", err)
		return nil, syscall.EINVAL
	}
	st, err := r.stage(ctx, name, query)
	switch {
	case errors.Is(err, ErrNoData):
		r.opt.Logger.Info("query: no data", "name", name)
		return nil, syscall.ENOENT
	case errors.Is(err, ErrBadQuery):
		r.opt.Logger.Warn("query refused by the gateway: EINVAL", "name", name, "err", err)
		return nil, syscall.EINVAL
	case err != nil:
		return nil, errnoOf(ctx, r.opt.Logger, "stage", name, err)
	}
	ds := r.querySource(name, id, query, st)
	// Read-only: a query's result is not a place to write.
	node := &dirNode{writeOps: writeOps{rw: r.opt.writer != nil}, ds: ds}
	r.opt.dirAttr(&out.Attr, ds.modTime())
	out.Attr.Mode &^= 0o222 // read-only, whatever the mount's dir mode
	ino := r.inoOf(name)
	out.Attr.Ino = ino
	return r.NewInode(ctx, node, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: ino}), 0
}

// querySource is the datasource serving query path name as staged: the
// same while the stage answers the same qhash, a new one otherwise.
func (r *Root) querySource(name, id string, query []byte, st Staged) *datasource {
	ns := "\x00q\x00" + st.QHash
	r.mu.Lock()
	defer r.mu.Unlock()
	if ds := r.sources[name]; ds != nil && ds.ns == ns {
		return ds
	}
	ds := newDatasource(name, r.opt.Catalog.QueryStore(st.QHash), &r.opt, time.Time{})
	ds.ns = ns
	ds.forget = func() { r.forgetEntries(name) }
	ds.dropPages = func(key string) { r.dropPages(name, key) }
	container := st.Container
	ds.kind = &kindState{
		learn:     fixedKind(container),
		info:      func(c string) *Info { return r.describe(id, c, query) },
		tableName: id + tableSuffix,
		openTable: func(ctx context.Context, ifChanged string) (Table, error) {
			return r.opt.Catalog.OpenTable(ctx, id, st.QHash, ifChanged)
		},
	}
	r.sources[name] = ds
	return ds
}
