package integration

import (
	"bytes"
	"crypto/md5"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// smallStore writes a v2 store with one 1-d int8 array "a" of two chunks;
// consolidated adds .zmetadata, otherwise only the per-node files exist.
func smallStore(t *testing.T, dir string, consolidated bool, attr string) {
	t.Helper()
	zarray := `{"chunks": [8], "compressor": null, "dtype": "|i1", "fill_value": 0, "filters": null, "order": "C", "shape": [16], "zarr_format": 2}`
	zattrs := fmt.Sprintf(`{"_ARRAY_DIMENSIONS": ["x"], "note": %q}`, attr)
	files := map[string]string{
		".zgroup":   `{"zarr_format": 2}`,
		".zattrs":   `{}`,
		"a/.zarray": zarray,
		"a/.zattrs": zattrs,
		"a/0":       "01234567",
		"a/1":       "89abcdef",
	}
	if consolidated {
		files[".zmetadata"] = fmt.Sprintf(`{"metadata": {".zgroup": {"zarr_format": 2}, ".zattrs": {}, "a/.zarray": %s, "a/.zattrs": %s}, "zarr_consolidated_format": 1}`, zarray, zattrs)
	}
	for rel, body := range files {
		p := filepath.Join(dir, rel)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
	}
}

// replaceFile swaps a file's content atomically, as a writer publishing a
// store would (readers never see it half-written at the source).
func replaceFile(t *testing.T, path string, body []byte) {
	t.Helper()
	tmp := path + ".tmp"
	require.NoError(t, os.WriteFile(tmp, body, 0o644))
	require.NoError(t, os.Rename(tmp, path))
}

// watchChange reads path through the mount until it reads want. Every read
// before must be exactly old (never torn, cut, padded or an error), and want
// must come within limit. It returns how long the change took to show.
func watchChange(t *testing.T, path string, old, want []byte, since time.Time, limit time.Duration) time.Duration {
	t.Helper()
	for {
		got, err := os.ReadFile(path)
		require.NoError(t, err, "%s: reads must not fail while the store changes", path)
		if bytes.Equal(got, want) {
			return time.Since(since)
		}
		require.True(t, bytes.Equal(got, old), "%s: read %d bytes (md5 %x) that are neither the old nor the new content",
			path, len(got), md5.Sum(got))
		require.Less(t, time.Since(since), limit, "%s: still the old content after %s", path, limit)
		time.Sleep(50 * time.Millisecond)
	}
}

func TestStoreChangedOnServerReadsNewAndWhole(t *testing.T) {
	dir := t.TempDir()
	cons := filepath.Join(dir, "cons")
	plain := filepath.Join(dir, "plain")
	smallStore(t, cons, true, "first")
	smallStore(t, plain, false, "first")
	still := filepath.Join(dir, "still")
	smallStore(t, still, true, "first")
	g := startGateway(t, dir)
	const ttl = 2 * time.Second
	m := mountForeground(t, g, "--metadata-ttl", ttl.String())

	read := func(rel string) []byte {
		b, err := os.ReadFile(filepath.Join(m.Dir, rel))
		require.NoError(t, err, rel)
		return b
	}
	// Warm everything: kernel page cache and dmfs's cache hold the old bytes.
	oldZmeta := read("cons/.zmetadata")
	oldSame := read("cons/a/0")
	oldSized := read("cons/a/1")
	oldChild := read("plain/a/.zattrs")
	oldStill := read("still/a/0")
	require.Equal(t, "01234567", string(oldSame))

	// The server changes: a chunk rewritten with the same size, a chunk
	// with another size, a shrunk .zmetadata, and in the store without
	// .zmetadata only a child .zattrs.
	newSame := []byte("ABCDEFGH")
	newSized := []byte("89ab")
	newZmeta := bytes.Replace(oldZmeta, []byte(`"note": "first"`), []byte(`"note": "2"`), 1)
	require.Less(t, len(newZmeta), len(oldZmeta))
	newChildSrc := []byte(`{"_ARRAY_DIMENSIONS": ["x"], "note": "second"}`)
	changed := time.Now()
	replaceFile(t, filepath.Join(cons, "a", "0"), newSame)
	replaceFile(t, filepath.Join(cons, "a", "1"), newSized)
	replaceFile(t, filepath.Join(cons, ".zmetadata"), newZmeta)
	replaceFile(t, filepath.Join(plain, "a", ".zattrs"), newChildSrc)
	// And a store where only a chunk is rewritten in place, same size.
	replaceFile(t, filepath.Join(still, "a", "0"), newSame)

	// Served whole and new after the TTL (2 TTLs of slack: the kernel's
	// entry and dmfs's metadata age are not aligned), never torn before.
	limit := 2*ttl + 3*time.Second
	took := watchChange(t, filepath.Join(m.Dir, "cons/.zmetadata"), oldZmeta, newZmeta, changed, limit)
	t.Logf(".zmetadata new after %s", took)
	took = watchChange(t, filepath.Join(m.Dir, "cons/a/0"), oldSame, newSame, changed, limit)
	t.Logf("same-size chunk new after %s", took)
	took = watchChange(t, filepath.Join(m.Dir, "cons/a/1"), oldSized, newSized, changed, limit)
	t.Logf("resized chunk new after %s", took)
	took = watchChange(t, filepath.Join(m.Dir, "still/a/0"), oldStill, newSame, changed, limit)
	t.Logf("chunk rewritten without a metadata change new after %s", took)
	got := waitFor(t, limit, func() ([]byte, bool) {
		b := read("plain/a/.zattrs")
		return b, strings.Contains(string(b), "second")
	})
	require.NotEqual(t, oldChild, got)
	t.Logf("child .zattrs new after %s", time.Since(changed))

	// And xarray-style readers see sizes that match the bytes.
	for _, rel := range []string{"cons/a/0", "cons/a/1", "cons/.zmetadata"} {
		st, err := os.Stat(filepath.Join(m.Dir, rel))
		require.NoError(t, err)
		require.Equal(t, int64(len(read(rel))), st.Size(), rel)
	}
}

// waitFor polls f until it reports done, failing after limit.
func waitFor[T any](t *testing.T, limit time.Duration, f func() (T, bool)) T {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		v, ok := f()
		if ok {
			return v
		}
		require.True(t, time.Now().Before(deadline), "condition not met within %s", limit)
		time.Sleep(50 * time.Millisecond)
	}
}
