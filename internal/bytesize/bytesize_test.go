package bytesize

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"1024", 1024, true},
		{"1GiB", 1 << 30, true},
		{"1gib", 1 << 30, true},
		{"1G", 1 << 30, true},
		{"1.5 MiB", 3 << 19, true},
		{"500MB", 500e6, true},
		{"64k", 64 << 10, true},
		{"2TB", 2e12, true},
		{"", 0, false},
		{"GiB", 0, false},
		{"1 parsec", 0, false},
		{"-1GiB", 0, false},
		{"1e30TiB", 0, false},
	}
	for _, tc := range tests {
		got, err := Parse(tc.in)
		if !tc.ok {
			assert.Error(t, err, tc.in)
			continue
		}
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, got, tc.in)
	}
}

func TestFormatRoundTrips(t *testing.T) {
	for _, n := range []int64{0, 1, 1000, 1 << 10, 3 << 20, 1 << 30, 5 << 40, 1<<30 + 1} {
		got, err := Parse(Format(n))
		require.NoError(t, err)
		assert.Equal(t, n, got)
	}
	assert.Equal(t, "512MiB", Format(512<<20))
}
