package main

import (
	"context"
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
		entries[i] = fs.Entry{ID: id, Modified: ds.Modified}
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
		out[i] = fs.Entry{ID: ds.ID, Modified: ds.Modified}
	}
	return out, nil
}

func (c *datameshCatalog) Datasource(ctx context.Context, id string) (fs.Entry, error) {
	if len(c.only) > 0 && !slices.Contains(c.only, id) {
		return fs.Entry{}, fmt.Errorf("datasource %s is not mounted: %w", id, iofs.ErrNotExist)
	}
	ds, err := c.client.Datasource(ctx, id)
	return fs.Entry{ID: id, Modified: ds.Modified}, err
}

func (c *datameshCatalog) Store(id string) zarr.Store { return c.client.Store(id) }
