package zarr

import (
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
)

// maxChunks bounds the chunk count of one array. Beyond it the metadata is
// taken to be wrong rather than the data that large (2^40 chunks of one byte
// would already be a terabyte of keys).
const maxChunks = int64(1) << 40

// maxRank bounds the number of dimensions of an array.
const maxRank = 64

// Array is one array of a hierarchy: its metadata and its chunk-key grid.
// The grid is never materialised: names are computed from indices and back.
type Array struct {
	Path       string  // folder of the array, "" at the store root
	ZarrFormat int     // 2 or 3
	Shape      []int64 // array shape
	Chunks     []int64 // chunk shape; for a sharded v3 array, the shard shape
	DType      string  // as in metadata: "<f4", "float32"; structured v2 dtypes as compact JSON

	grid chunkGrid
}

// chunkGrid describes a chunk key as a sequence of components joined by sep.
// Components are the chunk indices, preceded by the literal "c" in v3's
// default encoding. A 0-d array without the "c" prefix has the single
// component "0", treated as one dimension with one chunk.
type chunkGrid struct {
	counts []int64 // entries per component; 1 for the "c" prefix
	prefix bool    // component 0 is the literal "c"
	sep    byte    // '.' or '/'
	total  int64   // number of chunk keys
}

// newChunkGrid computes the grid of shape split into chunks. shape and chunks
// must have the same length, shape entries >= 0 and chunk entries >= 1.
func newChunkGrid(shape, chunks []int64, sep byte, prefix bool) (chunkGrid, error) {
	g := chunkGrid{prefix: prefix, sep: sep}
	if len(shape) != len(chunks) {
		return g, fmt.Errorf("shape has %d dimensions but chunks has %d", len(shape), len(chunks))
	}
	if len(shape) > maxRank {
		return g, fmt.Errorf("%d dimensions is more than the %d supported", len(shape), maxRank)
	}
	if prefix {
		g.counts = append(g.counts, 1)
	} else if len(shape) == 0 {
		g.counts = append(g.counts, 1) // the key "0"
	}
	total, nonZero := int64(1), int64(1)
	for d, n := range shape {
		c := chunks[d]
		if n < 0 {
			return g, fmt.Errorf("negative shape %d in dimension %d", n, d)
		}
		if c < 1 {
			return g, fmt.Errorf("chunk size %d in dimension %d is not positive", c, d)
		}
		count := n / c
		if n%c != 0 {
			count++
		}
		g.counts = append(g.counts, count)
		total *= count
		if count > 0 {
			hi, lo := bits.Mul64(uint64(nonZero), uint64(count))
			if hi != 0 || lo > uint64(maxChunks) {
				return g, fmt.Errorf("more than 2^40 chunks (shape %v, chunks %v)", shape, chunks)
			}
			nonZero = int64(lo)
		}
	}
	g.total = total
	return g, nil
}

// nested reports whether keys span several folder levels.
func (g *chunkGrid) nested() bool { return g.sep == '/' && len(g.counts) > 1 }

// parseComponent parses component d of a key: "c" for the prefix, else a
// decimal index in range without sign or leading zeros.
func (g *chunkGrid) parseComponent(d int, s string) (int64, bool) {
	if d == 0 && g.prefix {
		return 0, s == "c"
	}
	if len(s) == 0 || len(s) > 19 || (s[0] == '0' && len(s) > 1) {
		return 0, false
	}
	var v int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int64(c-'0')
		if v < 0 { // wrapped: 19 digits can exceed int64
			return 0, false
		}
	}
	return v, v < g.counts[d]
}

func (g *chunkGrid) appendComponent(b []byte, d int, v int64) []byte {
	if d == 0 && g.prefix {
		return append(b, 'c')
	}
	return strconv.AppendInt(b, v, 10)
}

// keyIndex returns the C-order index of a full chunk key, without allocating.
func (g *chunkGrid) keyIndex(key string) (int64, bool) {
	if g.total == 0 {
		return 0, false
	}
	var idx int64
	d := 0
	for start := 0; ; d++ {
		if d >= len(g.counts) {
			return 0, false
		}
		end := start
		for end < len(key) && key[end] != g.sep {
			end++
		}
		v, ok := g.parseComponent(d, key[start:end])
		if !ok {
			return 0, false
		}
		idx = idx*g.counts[d] + v
		if end == len(key) {
			break
		}
		start = end + 1
	}
	return idx, d == len(g.counts)-1
}

// keyName returns the chunk key with C-order index idx.
func (g *chunkGrid) keyName(idx int64) string {
	var vals [maxRank + 1]int64
	for d := len(g.counts) - 1; d >= 0; d-- {
		vals[d] = idx % g.counts[d]
		idx /= g.counts[d]
	}
	b := make([]byte, 0, 4*len(g.counts))
	for d := range g.counts {
		if d > 0 {
			b = append(b, g.sep)
		}
		b = g.appendComponent(b, d, vals[d])
	}
	return string(b)
}

// NumChunks returns the number of chunk keys of the array (for a sharded
// array, of shards).
func (a *Array) NumChunks() int64 { return a.grid.total }

// IsChunkKey reports whether rel (relative to the array folder) is one of
// the array's chunk keys. It does not allocate.
func (a *Array) IsChunkKey(rel string) bool {
	_, ok := a.grid.keyIndex(rel)
	return ok
}

// ChunkKeysAfter returns up to n chunk keys (relative to the array folder)
// that follow the chunk key rel in C order; rel "" gives the first n keys.
// It returns nil when rel is not a chunk key.
func (a *Array) ChunkKeysAfter(rel string, n int) []string {
	g := &a.grid
	next := int64(0)
	if rel != "" {
		idx, ok := g.keyIndex(rel)
		if !ok {
			return nil
		}
		next = idx + 1
	}
	if n <= 0 || next >= g.total {
		return nil
	}
	count := min(int64(n), g.total-next)
	keys := make([]string, 0, count)
	for i := range count {
		keys = append(keys, g.keyName(next+i))
	}
	return keys
}

// ChunkFolder returns one folder level of the chunk keys inside the array's
// folder. rel is relative to the array folder: "" is the array folder itself,
// "c", "c/0", "0", "0/1" are nested levels when keys are "/"-separated.
//
// An array with a zero-length dimension has no chunks: its folder lists no
// chunk entries and has no nested chunk folders (for v3's default encoding
// there is no "c" folder).
func (a *Array) ChunkFolder(rel string) (ChunkFolder, bool) {
	g := &a.grid
	if rel == "" {
		return ChunkFolder{grid: g}, true
	}
	if !g.nested() || g.total == 0 {
		return ChunkFolder{}, false
	}
	depth := 0
	for start := 0; ; depth++ {
		// The last component names files, so folders stop one level short.
		if depth >= len(g.counts)-1 {
			return ChunkFolder{}, false
		}
		end := start
		for end < len(rel) && rel[end] != '/' {
			end++
		}
		if _, ok := g.parseComponent(depth, rel[start:end]); !ok {
			return ChunkFolder{}, false
		}
		if end == len(rel) {
			break
		}
		start = end + 1
	}
	return ChunkFolder{grid: g, depth: depth + 1}, true
}

// ChunkFolder is one folder level of an array's chunk keys. Entries are
// listed in C order; their names (digits, "c", "0.1", "c.0.1") never collide
// with metadata file names. The zero value is an empty folder.
type ChunkFolder struct {
	grid  *chunkGrid
	depth int // key components consumed by the folder's path
}

// flat reports whether the folder's entries are whole keys.
func (f ChunkFolder) flat() bool { return !f.grid.nested() }

// Len returns the number of entries in the folder.
func (f ChunkFolder) Len() int64 {
	switch {
	case f.grid == nil || f.grid.total == 0:
		return 0
	case f.flat():
		return f.grid.total
	default:
		return f.grid.counts[f.depth]
	}
}

// Name returns the i-th entry in key (C) order, or "" when i is out of range.
func (f ChunkFolder) Name(i int64) string {
	if i < 0 || i >= f.Len() {
		return ""
	}
	if f.flat() {
		return f.grid.keyName(i)
	}
	return string(f.grid.appendComponent(nil, f.depth, i))
}

// Index returns the position of name among the folder's entries. It does
// not allocate.
func (f ChunkFolder) Index(name string) (int64, bool) {
	if f.Len() == 0 {
		return 0, false
	}
	if f.flat() {
		return f.grid.keyIndex(name)
	}
	return f.grid.parseComponent(f.depth, name)
}

// Dirs reports whether the entries are sub-folders (true) or chunk files.
// An empty folder reports false.
func (f ChunkFolder) Dirs() bool {
	return f.Len() > 0 && !f.flat() && f.depth < len(f.grid.counts)-1
}

// ChunkBytes is the uncompressed size of one chunk (for a sharded v3 array,
// one shard): the product of the chunk shape and the size of one element; 0
// when the element size cannot be told from DType (structured, strings of
// variable length).
func (a *Array) ChunkBytes() int64 {
	item := itemSize(a.DType)
	if item <= 0 {
		return 0
	}
	n := item
	for _, c := range a.Chunks {
		if c <= 0 || n > math.MaxInt64/c {
			return 0
		}
		n *= c
	}
	return n
}

// itemSize is the size in bytes of one element of dtype: a v2 typestr
// ("<f4", "|u1", "<M8[ns]", "<U10") or a v3 data type name ("float32",
// "int8", "bool", "complex128"); 0 when unknown.
func itemSize(dtype string) int64 {
	switch dtype {
	case "bool", "int8", "uint8":
		return 1
	}
	for _, prefix := range []string{"complex", "float", "uint", "int"} {
		if bits, ok := strings.CutPrefix(dtype, prefix); ok {
			if b, err := strconv.Atoi(bits); err == nil && b > 0 && b%8 == 0 {
				return int64(b / 8)
			}
			return 0
		}
	}
	if len(dtype) < 3 || !strings.ContainsRune("<>|", rune(dtype[0])) {
		return 0
	}
	digits := dtype[2:]
	if i := strings.IndexByte(digits, '['); i >= 0 {
		digits = digits[:i]
	}
	n, err := strconv.Atoi(digits)
	if err != nil || n <= 0 {
		return 0
	}
	if dtype[1] == 'U' { // UCS-4 characters
		return int64(n) * 4
	}
	return int64(n)
}
