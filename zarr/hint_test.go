package zarr

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestReadaheadHint(t *testing.T) {
	ctx := context.Background()
	assert.False(t, IsReadahead(ctx))
	ra := WithReadahead(ctx)
	assert.True(t, IsReadahead(ra))
	assert.False(t, IsReadahead(ctx), "the parent is unchanged")
	// It travels with the other hints, either way round.
	both := WithSizeLimit(ra, 10)
	assert.True(t, IsReadahead(both))
	n, ok := SizeLimit(both)
	assert.True(t, ok)
	assert.Equal(t, int64(10), n)
	assert.True(t, IsReadahead(WithReadahead(WithSizeLimit(ctx, 10))))
	// Cancellation keeps it: a derived context is still readahead.
	child, cancel := context.WithCancel(ra)
	defer cancel()
	assert.True(t, IsReadahead(child))
}
