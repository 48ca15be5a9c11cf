package zarr

import "context"

type readaheadKey struct{}

// WithReadahead returns a context that marks a Get or Head as readahead:
// nobody is waiting for it yet. A Store that bounds its requests in flight
// serves every other request first, so that readahead never delays a
// reader.
func WithReadahead(ctx context.Context) context.Context {
	return context.WithValue(ctx, readaheadKey{}, true)
}

// IsReadahead reports whether ctx was marked by WithReadahead.
func IsReadahead(ctx context.Context) bool {
	v, _ := ctx.Value(readaheadKey{}).(bool)
	return v
}
