package zarr

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestChunkBytes(t *testing.T) {
	cases := []struct {
		dtype  string
		chunks []int64
		want   int64
	}{
		{"<f4", []int64{1024, 1024}, 4 << 20},
		{"|u1", []int64{10}, 10},
		{"<M8[ns]", []int64{3}, 24},
		{"<U10", []int64{2}, 80},
		{"float32", []int64{256, 256}, 256 << 10},
		{"complex128", []int64{2}, 32},
		{"bool", []int64{7}, 7},
		{"uint16", []int64{4}, 8},
		{`[["a","<f4"]]`, []int64{4}, 0},
		{"string", []int64{4}, 0},
		{"float", []int64{4}, 0},
		{"<f4", []int64{1 << 40, 1 << 40}, 0},
	}
	for _, c := range cases {
		a := &Array{DType: c.dtype, Chunks: c.chunks}
		assert.Equal(t, c.want, a.ChunkBytes(), "%s %v", c.dtype, c.chunks)
	}
}

func TestSizeHint(t *testing.T) {
	_, ok := SizeHint(context.Background())
	assert.False(t, ok)
	n, ok := SizeHint(WithSizeHint(context.Background(), 42))
	assert.True(t, ok)
	assert.Equal(t, int64(42), n)
	_, ok = SizeHint(WithSizeHint(context.Background(), 0))
	assert.False(t, ok, "no hint for an unknown size")
}
