// Package zarr understands Zarr stores: their hierarchy from metadata, their
// chunk grids and key naming. It reads stores through the small Store
// interface and imports no HTTP: session.Store satisfies it over the network,
// a map satisfies it in tests.
package zarr

import (
	"context"
)

// Store is read access to the keys of one Zarr store.
//
// Errors follow the standard library's sentinels so that callers can map them
// without knowing the implementation: a missing key matches
// errors.Is(err, fs.ErrNotExist) (io/fs), a refused one
// errors.Is(err, fs.ErrPermission). Anything else is a failure to reach the
// data and must never be taken to mean "absent".
type Store interface {
	// Get returns the whole value of key.
	Get(ctx context.Context, key string) ([]byte, error)
	// Head returns the size in bytes of key's value without its body.
	Head(ctx context.Context, key string) (int64, error)
}

// Lister is implemented by stores that can list a folder. It is only needed
// for stores without consolidated metadata.
type Lister interface {
	// List returns the immediate children of the folder prefix ("" for the
	// root, else a key prefix without trailing slash). Folder names carry a
	// trailing "/"; other entries are keys relative to prefix.
	List(ctx context.Context, prefix string) ([]string, error)
}
