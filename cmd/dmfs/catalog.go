package main

import (
	"context"
	"fmt"
	iofs "io/fs"
	"slices"
	"sync"

	"github.com/oceanum-dmfs/dmfs/session"
	"github.com/oceanum-dmfs/dmfs/zarr"
)

// datameshCatalog adapts the Datamesh client to what the filesystem needs,
// restricted to --datasource ids when given.
type datameshCatalog struct {
	client *session.Client
	only   []string

	mu      sync.Mutex
	checked []string // the listing check read, served once to the first ls
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
	for _, id := range c.only {
		if _, err := c.client.Datasource(ctx, id); err != nil {
			return fmt.Errorf("--datasource %s: %w", id, err)
		}
	}
	return nil
}

func (c *datameshCatalog) Datasources(ctx context.Context) ([]string, error) {
	if len(c.only) > 0 {
		return slices.Clone(c.only), nil
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

func (c *datameshCatalog) list(ctx context.Context) ([]string, error) {
	list, err := c.client.Catalog(ctx, session.Query{})
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(list))
	for i, ds := range list {
		ids[i] = ds.ID
	}
	return ids, nil
}

func (c *datameshCatalog) Datasource(ctx context.Context, id string) error {
	if len(c.only) > 0 && !slices.Contains(c.only, id) {
		return fmt.Errorf("datasource %s is not mounted: %w", id, iofs.ErrNotExist)
	}
	_, err := c.client.Datasource(ctx, id)
	return err
}

func (c *datameshCatalog) Store(id string) zarr.Store { return c.client.Store(id) }
