package zarr

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func mustGrid(t testing.TB, shape, chunks []int64, sep byte, prefix bool) *Array {
	t.Helper()
	g, err := newChunkGrid(shape, chunks, sep, prefix)
	require.NoError(t, err)
	return &Array{Shape: shape, Chunks: chunks, grid: g}
}

func TestChunkFolder(t *testing.T) {
	type level struct {
		rel   string
		names []string // nil: the folder does not exist
		dirs  bool
	}
	tests := []struct {
		name   string
		shape  []int64
		chunks []int64
		sep    byte
		prefix bool
		total  int64
		levels []level
		keys   []string // every chunk key in C order
	}{
		{
			name: "v2 dot 2x3", shape: []int64{4, 6}, chunks: []int64{2, 2}, sep: '.', total: 6,
			levels: []level{
				{rel: "", names: []string{"0.0", "0.1", "0.2", "1.0", "1.1", "1.2"}},
				{rel: "0"},
				{rel: "0.0"},
			},
			keys: []string{"0.0", "0.1", "0.2", "1.0", "1.1", "1.2"},
		},
		{
			name: "v2 slash 2x3", shape: []int64{3, 5}, chunks: []int64{2, 2}, sep: '/', total: 6,
			levels: []level{
				{rel: "", names: []string{"0", "1"}, dirs: true},
				{rel: "1", names: []string{"0", "1", "2"}},
				{rel: "0", names: []string{"0", "1", "2"}},
				{rel: "2"},
				{rel: "01"},
				{rel: "1/0"},
				{rel: "c"},
			},
			keys: []string{"0/0", "0/1", "0/2", "1/0", "1/1", "1/2"},
		},
		{
			name: "v3 default 2x3", shape: []int64{4, 6}, chunks: []int64{2, 2}, sep: '/', prefix: true, total: 6,
			levels: []level{
				{rel: "", names: []string{"c"}, dirs: true},
				{rel: "c", names: []string{"0", "1"}, dirs: true},
				{rel: "c/1", names: []string{"0", "1", "2"}},
				{rel: "c/2"},
				{rel: "c/1/0"},
				{rel: "0"},
				{rel: "c/"},
			},
			keys: []string{"c/0/0", "c/0/1", "c/0/2", "c/1/0", "c/1/1", "c/1/2"},
		},
		{
			name: "v3 default dot", shape: []int64{2, 3}, chunks: []int64{1, 3}, sep: '.', prefix: true, total: 2,
			levels: []level{{rel: "", names: []string{"c.0.0", "c.1.0"}}, {rel: "c"}},
			keys:   []string{"c.0.0", "c.1.0"},
		},
		{
			name: "v3 0-d", shape: []int64{}, chunks: []int64{}, sep: '/', prefix: true, total: 1,
			levels: []level{{rel: "", names: []string{"c"}}, {rel: "c"}},
			keys:   []string{"c"},
		},
		{
			name: "v2 0-d", shape: []int64{}, chunks: []int64{}, sep: '.', total: 1,
			levels: []level{{rel: "", names: []string{"0"}}},
			keys:   []string{"0"},
		},
		{
			name: "v2 0-d slash", shape: []int64{}, chunks: []int64{}, sep: '/', total: 1,
			levels: []level{{rel: "", names: []string{"0"}}, {rel: "0"}},
			keys:   []string{"0"},
		},
		{
			name: "zero-length dim v2", shape: []int64{5, 0}, chunks: []int64{2, 2}, sep: '/', total: 0,
			levels: []level{{rel: "", names: []string{}}, {rel: "0"}},
		},
		{
			name: "zero-length dim v3", shape: []int64{0}, chunks: []int64{4}, sep: '/', prefix: true, total: 0,
			levels: []level{{rel: "", names: []string{}}, {rel: "c"}},
		},
		{
			name: "chunk larger than shape", shape: []int64{3}, chunks: []int64{10}, sep: '.', total: 1,
			levels: []level{{rel: "", names: []string{"0"}}},
			keys:   []string{"0"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := mustGrid(t, tt.shape, tt.chunks, tt.sep, tt.prefix)
			assert.Equal(t, tt.total, a.NumChunks())
			for _, lv := range tt.levels {
				cf, ok := a.ChunkFolder(lv.rel)
				if lv.names == nil {
					assert.False(t, ok, "folder %q should not exist", lv.rel)
					continue
				}
				require.True(t, ok, "folder %q", lv.rel)
				require.Equal(t, int64(len(lv.names)), cf.Len(), lv.rel)
				assert.Equal(t, lv.dirs, cf.Dirs(), lv.rel)
				for i, name := range lv.names {
					assert.Equal(t, name, cf.Name(int64(i)))
					idx, ok := cf.Index(name)
					assert.True(t, ok, name)
					assert.Equal(t, int64(i), idx, name)
				}
				assert.Equal(t, "", cf.Name(cf.Len()))
				assert.Equal(t, "", cf.Name(-1))
				for _, bad := range []string{"", "-1", "+0", "00", "9999999999999999999", "99999999999999999999", "c/0", ".zarray", "zarr.json"} {
					_, ok := cf.Index(bad)
					assert.False(t, ok, "%q in folder %q", bad, lv.rel)
				}
			}
			assert.Equal(t, tt.keys, a.ChunkKeysAfter("", 100))
			for i, key := range tt.keys {
				assert.True(t, a.IsChunkKey(key), key)
				want := tt.keys[i+1 : min(len(tt.keys), i+3)]
				if len(want) == 0 {
					want = nil
				}
				assert.Equal(t, want, a.ChunkKeysAfter(key, 2), key)
				for _, bad := range []string{key + "/", key + ".", "/" + key, key + "0"} {
					assert.False(t, a.IsChunkKey(bad), bad)
				}
			}
			assert.Nil(t, a.ChunkKeysAfter("nope", 2))
			assert.False(t, a.IsChunkKey(""))
		})
	}
}

func TestNewChunkGridErrors(t *testing.T) {
	tests := []struct {
		name          string
		shape, chunks []int64
		want          string
	}{
		{"rank mismatch", []int64{1, 2}, []int64{1}, "shape has 2 dimensions but chunks has 1"},
		{"negative shape", []int64{-1}, []int64{1}, "negative shape"},
		{"zero chunk", []int64{4}, []int64{0}, "not positive"},
		{"too many chunks", []int64{1 << 21, 1 << 20}, []int64{1, 1}, "more than 2^40 chunks"},
		{"overflow", []int64{1 << 62, 1 << 62, 1 << 62}, []int64{1, 1, 1}, "more than 2^40 chunks"},
		{"absurd with a zero dim", []int64{0, 1 << 62, 1 << 62}, []int64{1, 1, 1}, "more than 2^40 chunks"},
		{"too many dims", make([]int64, 65), make([]int64, 65), "dimensions"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newChunkGrid(tt.shape, tt.chunks, '.', false)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
	// Exactly 2^40 is allowed, and the largest index round-trips.
	a := mustGrid(t, []int64{1 << 20, 1 << 20}, []int64{1, 1}, '.', false)
	assert.Equal(t, int64(1)<<40, a.NumChunks())
	last := a.grid.keyName(a.NumChunks() - 1)
	assert.Equal(t, "1048575.1048575", last)
	assert.True(t, a.IsChunkKey(last))
	assert.False(t, a.IsChunkKey("1048576.0"))
	assert.Nil(t, a.ChunkKeysAfter(last, 5))
}

const benchChunks = 10_000_000

func BenchmarkChunkLookup(b *testing.B) {
	for _, bc := range []struct {
		name   string
		sep    byte
		prefix bool
		key    string
		folder string
		entry  string
	}{
		{name: "v2-dot", sep: '.', key: "7919.732", folder: "", entry: "3141.592"},
		{name: "v3-default", sep: '/', prefix: true, key: "c/7919/732", folder: "c/3141", entry: "592"},
	} {
		// 10,000 x 1,000 chunks.
		a := mustGrid(b, []int64{10_000, 10_000}, []int64{1, 10}, bc.sep, bc.prefix)
		require.Equal(b, int64(benchChunks), a.NumChunks())
		cf, ok := a.ChunkFolder(bc.folder)
		require.True(b, ok)
		b.Run(bc.name+"/IsChunkKey", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if !a.IsChunkKey(bc.key) {
					b.Fatal("not a key")
				}
			}
		})
		b.Run(bc.name+"/Index", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := cf.Index(bc.entry); !ok {
					b.Fatal("not an entry")
				}
			}
		})
		b.Run(bc.name+"/ChunkFolder", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := a.ChunkFolder(bc.folder); !ok {
					b.Fatal("no folder")
				}
			}
		})
	}
}

// TestLookupDoesNotAllocate keeps the benchmark's promise in the normal
// test run.
func TestLookupDoesNotAllocate(t *testing.T) {
	a := mustGrid(t, []int64{10_000, 10_000}, []int64{1, 10}, '/', true)
	cf, ok := a.ChunkFolder("c/17")
	require.True(t, ok)
	flat := mustGrid(t, []int64{10_000, 10_000}, []int64{1, 10}, '.', false)
	root, _ := flat.ChunkFolder("")
	allocs := testing.AllocsPerRun(100, func() {
		_ = a.IsChunkKey("c/9999/999")
		_, _ = cf.Index("999")
		_, _ = a.ChunkFolder("c/9999")
		_ = flat.IsChunkKey("9999.999")
		_, _ = root.Index("9999.999")
	})
	assert.Zero(t, allocs)
}
