package zarr

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// mapStore is an in-memory Store and Lister whose listing is derived from its
// keys. It records the requests it answers.
type mapStore struct {
	keys  map[string][]byte
	fail  map[string]error // keys that answer an error instead
	delay time.Duration

	mu       sync.Mutex
	gets     []string
	lists    []string
	limits   map[string]int64 // the size limit each Get was asked with; -1 for none
	inFlight atomic.Int32
	maxSeen  atomic.Int32
}

func newMapStore(keys map[string][]byte) *mapStore {
	return &mapStore{keys: keys, fail: map[string]error{}}
}

func (m *mapStore) enter() func() {
	n := m.inFlight.Add(1)
	for {
		seen := m.maxSeen.Load()
		if n <= seen || m.maxSeen.CompareAndSwap(seen, n) {
			break
		}
	}
	if m.delay > 0 {
		time.Sleep(m.delay)
	}
	return func() { m.inFlight.Add(-1) }
}

func (m *mapStore) Get(ctx context.Context, key string) ([]byte, error) {
	defer m.enter()()
	limit, ok := SizeLimit(ctx)
	if !ok {
		limit = -1
	}
	m.mu.Lock()
	m.gets = append(m.gets, key)
	if m.limits == nil {
		m.limits = map[string]int64{}
	}
	m.limits[key] = limit
	m.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// Like a careless server client, it returns values whatever their
	// size: Open must check them itself.
	if err, ok := m.fail[key]; ok {
		return nil, err
	}
	data, ok := m.keys[key]
	if !ok {
		return nil, &fs.PathError{Op: "get", Path: key, Err: fs.ErrNotExist}
	}
	return data, nil
}

func (m *mapStore) Head(ctx context.Context, key string) (int64, error) {
	data, err := m.Get(ctx, key)
	return int64(len(data)), err
}

func (m *mapStore) List(ctx context.Context, prefix string) ([]string, error) {
	defer m.enter()()
	m.mu.Lock()
	m.lists = append(m.lists, prefix)
	m.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err, ok := m.fail[prefix+"/"]; ok {
		return nil, err
	}
	seen := map[string]bool{}
	base := prefix
	if base != "" {
		base += "/"
	}
	for key := range m.keys {
		rest, ok := strings.CutPrefix(key, base)
		if !ok {
			continue
		}
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			rest = rest[:i+1]
		}
		seen[rest] = true
	}
	out := make([]string, 0, len(seen))
	for name := range seen {
		out = append(out, name)
	}
	sort.Strings(out)
	return out, nil
}

func (m *mapStore) requests() (gets, lists []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.gets), slices.Clone(m.lists)
}

// getOnlyStore hides the Lister of a store.
type getOnlyStore struct{ Store }

// loadFixture reads a folder of testdata into a map of keys.
func loadFixture(t testing.TB, name string) map[string][]byte {
	t.Helper()
	root := filepath.Join("testdata", name)
	keys := map[string][]byte{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		data, err := os.ReadFile(path)
		keys[filepath.ToSlash(rel)] = data
		return err
	})
	require.NoError(t, err)
	require.NotEmpty(t, keys, "fixture %s", name)
	return keys
}

// isMetadataName reports whether a file name is a Zarr metadata document.
func isMetadataName(name string) bool {
	switch name {
	case zmetadataKey, zgroupName, zarrayName, zattrsName, zarrJSONName:
		return true
	}
	return false
}
