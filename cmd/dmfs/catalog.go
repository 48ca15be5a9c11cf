package main

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"slices"
	"sync"

	"github.com/oceanum-dmfs/dmfs/fs"
	"github.com/oceanum-dmfs/dmfs/session"
	"github.com/oceanum-dmfs/dmfs/zarr"
)

// datameshCatalog adapts the Datamesh client to what the filesystem needs,
// restricted to --datasource ids when given.
type datameshCatalog struct {
	client *session.Client
	only   []string

	mu          sync.Mutex
	checked     []fs.Entry // the listing check read, served once to the first ls
	onlyEntries []fs.Entry // the --datasource ids as the check found them
}

// check runs before the mount becomes visible: the catalog answers, and
// every --datasource exists.
func (c *datameshCatalog) check(ctx context.Context) error {
	if len(c.only) == 0 {
		ids, err := c.list(ctx)
		if err != nil {
			return fmt.Errorf("reading the Datamesh catalog: %w", err)
		}
		c.mu.Lock()
		c.checked = ids
		c.mu.Unlock()
		return nil
	}
	entries := make([]fs.Entry, len(c.only))
	for i, id := range c.only {
		ds, err := c.client.Datasource(ctx, id)
		if err != nil {
			return fmt.Errorf("--datasource %s: %w", id, err)
		}
		entries[i] = entryOf(ds)
	}
	c.mu.Lock()
	c.onlyEntries = entries
	c.mu.Unlock()
	return nil
}

func (c *datameshCatalog) Datasources(ctx context.Context) ([]fs.Entry, error) {
	if len(c.only) > 0 {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.onlyEntries != nil {
			return slices.Clone(c.onlyEntries), nil
		}
		out := make([]fs.Entry, len(c.only))
		for i, id := range c.only {
			out[i] = fs.Entry{ID: id}
		}
		return out, nil
	}
	c.mu.Lock()
	ids := c.checked
	c.checked = nil
	c.mu.Unlock()
	if ids != nil {
		return ids, nil // just read at startup: the first ls costs no request
	}
	return c.list(ctx)
}

func (c *datameshCatalog) list(ctx context.Context) ([]fs.Entry, error) {
	list, err := c.client.Catalog(ctx, session.Query{})
	if err != nil {
		return nil, err
	}
	out := make([]fs.Entry, len(list))
	for i, ds := range list {
		out[i] = entryOf(ds)
	}
	return out, nil
}

func (c *datameshCatalog) Datasource(ctx context.Context, id string) (fs.Entry, error) {
	if len(c.only) > 0 && !slices.Contains(c.only, id) {
		return fs.Entry{}, fmt.Errorf("datasource %s is not mounted: %w", id, iofs.ErrNotExist)
	}
	ds, err := c.client.Datasource(ctx, id)
	if err != nil {
		return fs.Entry{ID: id}, err
	}
	e := entryOf(ds)
	e.ID = id
	return e, nil
}

func (c *datameshCatalog) Store(id string) zarr.Store { return c.client.Store(id) }

// ids are the datasource ids the startup check found.
func (c *datameshCatalog) ids() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, e := range append(slices.Clone(c.checked), c.onlyEntries...) {
		out = append(out, e.ID)
	}
	return out
}

// entryOf is a catalog Feature as the filesystem shows it.
func entryOf(ds session.Datasource) fs.Entry {
	return fs.Entry{ID: ds.ID, Modified: ds.Modified, Info: &fs.Info{
		ID:          ds.ID,
		Name:        ds.Name,
		Description: ds.Description,
		Driver:      ds.Driver,
		Container:   ds.Container,
		TimeStart:   ds.TStart,
		TimeEnd:     ds.TEnd,
		BBox:        ds.BBox,
		Variables:   ds.Variables,
		Tags:        ds.Tags,
	}}
}

// Stage stages a query; the session's errors are given the causes the
// filesystem maps (no data: ENOENT, refused: EINVAL).
func (c *datameshCatalog) Stage(ctx context.Context, query []byte) (fs.Staged, error) {
	st, err := c.client.Stage(ctx, query)
	switch {
	case errors.Is(err, session.ErrNoData):
		return fs.Staged{}, fmt.Errorf("%w: %w", fs.ErrNoData, err)
	case errors.Is(err, session.ErrBadQuery):
		return fs.Staged{}, fmt.Errorf("%w: %w", fs.ErrBadQuery, err)
	case err != nil:
		return fs.Staged{}, err
	}
	return fs.Staged{QHash: st.QHash, Container: st.Container}, nil
}

func (c *datameshCatalog) QueryStore(qhash string) zarr.Store { return c.client.QueryStore(qhash) }

// OpenTable streams a datasource's table, or a staged query's, unless it is
// still the version ifChanged names.
func (c *datameshCatalog) OpenTable(ctx context.Context, id, qhash, ifChanged string) (fs.Table, error) {
	var d *session.Download
	var err error
	if qhash == "" {
		d, err = c.client.OpenTable(ctx, id, session.IfChanged(ifChanged))
	} else {
		d, err = c.client.OpenQueryTable(ctx, qhash, session.IfChanged(ifChanged))
	}
	switch {
	case errors.Is(err, session.ErrNotModified):
		return fs.Table{}, fmt.Errorf("%w: %w", fs.ErrNotModified, err)
	case err != nil:
		return fs.Table{}, err
	}
	return fs.Table{Body: d, Size: d.Size, Validator: d.Validator}, nil
}
