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

type sizeHintKey struct{}

// WithSizeHint returns a context that says the value a Get asks for is
// probably about n bytes (an array's uncompressed chunk size: exact for
// uncompressed chunks, an upper bound otherwise). A Store may then fetch a
// large value in parallel parts.
func WithSizeHint(ctx context.Context, n int64) context.Context {
	if n <= 0 {
		return ctx
	}
	return context.WithValue(ctx, sizeHintKey{}, n)
}

// SizeHint returns the hint WithSizeHint put in ctx.
func SizeHint(ctx context.Context) (int64, bool) {
	n, ok := ctx.Value(sizeHintKey{}).(int64)
	return n, ok
}
