// Package zarr understands Zarr stores: their hierarchy from metadata, their
// chunk grids and key naming. It reads stores through the small Store
// interface and imports no HTTP: session.Store satisfies it over the network,
// a map satisfies it in tests.
package zarr

import (
	"context"
	"errors"
	"io"
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

// A Sink is where a value whose size is known before its bytes arrive is
// written: given the size, it returns the writer that keeps it. A reader
// that keeps values outside the Go heap (the cache's memory file) gives one,
// so that a body is never held in a fresh heap buffer on its way there.
// It may be called again, with the size of a retried answer; the bytes are
// then written again from offset 0.
type Sink func(size int64) (io.WriterAt, error)

// SinkGetter is implemented by stores that can write a value straight into
// a Sink.
type SinkGetter interface {
	// GetTo fetches key's value as Get does. When the size of the value is
	// known before its bytes (a Content-Length), it writes the value whole
	// to the writer sink returns and returns nil bytes; otherwise it
	// returns the bytes, as Get, and sink is not called. A nil sink is Get.
	GetTo(ctx context.Context, key string, sink Sink) ([]byte, error)
}

// Lister is implemented by stores that can list a folder. It is only needed
// for stores without consolidated metadata.
type Lister interface {
	// List returns the immediate children of the folder prefix ("" for the
	// root, else a key prefix without trailing slash). Folder names carry a
	// trailing "/"; other entries are keys relative to prefix.
	List(ctx context.Context, prefix string) ([]string, error)
}

// Writer is write access to the keys of one Zarr store (a --write mount).
// Writes become visible to the writer at once and final when its session
// is (see session.Client.CloseFinal).
type Writer interface {
	// Put sets key to the size bytes of body from offset 0; body is read
	// again from its start if the write is retried.
	Put(ctx context.Context, key string, body io.ReaderAt, size int64) error
	// Delete removes key (an error matching fs.ErrNotExist if absent).
	Delete(ctx context.Context, key string) error
	// Clear removes every key of the store.
	Clear(ctx context.Context) error
}

// ErrLocked is the cause of a Writer error when another writer holds the
// store.
var ErrLocked = errors.New("datamesh datasource locked by another writing session")

// ErrReadOnly is the cause of a Writer error when writing is not enabled.
var ErrReadOnly = errors.New("datamesh client not configured for writing")

// MaxMetadataSize is the largest metadata document (.zmetadata, .zgroup,
// .zarray, .zattrs, zarr.json) Open reads: a bigger one is refused with an
// error wrapping ErrMetadataTooLarge. Real stores' consolidated metadata is
// well below it; a server sending more is taken to be wrong or hostile, not
// to be trusted with the process's memory.
const MaxMetadataSize = 16 << 20

// MaxTotalMetadataSize bounds all the metadata one Hierarchy holds: the
// documents read by walking a store without consolidated metadata, or the
// consolidated document plus the per-node files rebuilt from it.
const MaxTotalMetadataSize = 64 << 20

// ErrMetadataTooLarge is the cause of Open's error when a metadata document,
// or a hierarchy's metadata as a whole, is over its limit.
var ErrMetadataTooLarge = errors.New("metadata too large")

// ErrSizeUnknown is the cause of a Head error when the store answered but
// cannot tell the size without the value (a HEAD without Content-Length):
// the caller must Get it.
var ErrSizeUnknown = errors.New("size unknown without reading the value")

type sizeLimitKey struct{}

// WithSizeLimit returns a context that asks the Store not to return a value
// longer than n bytes: Open passes it to Get for every metadata key, with n =
// MaxMetadataSize. A Store should stop reading past n and fail (an error
// wrapping ErrMetadataTooLarge is the clearest); Open also checks what it
// gets, so a Store that ignores the limit costs memory, not correctness.
func WithSizeLimit(ctx context.Context, n int64) context.Context {
	return context.WithValue(ctx, sizeLimitKey{}, n)
}

// SizeLimit returns the limit set by WithSizeLimit, if any.
func SizeLimit(ctx context.Context) (int64, bool) {
	n, ok := ctx.Value(sizeLimitKey{}).(int64)
	return n, ok
}
