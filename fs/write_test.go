package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/cache"
	"github.com/oceanum-dmfs/dmfs/internal/testenv"
	"github.com/oceanum-dmfs/dmfs/zarr"
)

// writeStore is a memStore that takes writes, counting them, as a
// session's store does (read-your-writes).
type writeStore struct {
	*memStore
	puts     map[string]int
	deletes  []string
	clears   int
	failKeys string        // path.Match pattern: Put fails for good
	putDelay time.Duration // each Put takes this long
	inflight int
	peak     int // most Puts at once
}

func newWriteStore(keys map[string]string) *writeStore {
	return &writeStore{memStore: newMemStore(keys), puts: map[string]int{}}
}

func (s *writeStore) Put(ctx context.Context, key string, body io.ReaderAt, size int64) error {
	s.mu.Lock()
	s.puts[key]++
	s.inflight++
	s.peak = max(s.peak, s.inflight)
	fail := s.failKeys != "" && matchKey(s.failKeys, key)
	delay := s.putDelay
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inflight--
		s.mu.Unlock()
	}()
	if delay > 0 {
		time.Sleep(delay)
	}
	if fail {
		return fmt.Errorf("put %s: 500 internal error", key)
	}
	b := make([]byte, size)
	if size > 0 {
		if _, err := body.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
	}
	s.mu.Lock()
	s.keys[key] = b
	s.mu.Unlock()
	return nil
}

func matchKey(pattern, key string) bool {
	ok, _ := path.Match(pattern, key)
	return ok
}

// List answers as the gateway does: the immediate children of prefix.
func (s *writeStore) List(ctx context.Context, prefix string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for k := range s.keys {
		rest, ok := strings.CutPrefix(k, prefix+"/")
		if prefix == "" {
			rest, ok = k, true
		}
		if !ok {
			continue
		}
		name := rest
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			name = rest[:i+1]
		}
		if !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out, nil
}

func (s *writeStore) Delete(ctx context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deletes = append(s.deletes, key)
	if _, ok := s.keys[key]; !ok {
		return fmt.Errorf("key %s: %w", key, iofs.ErrNotExist)
	}
	delete(s.keys, key)
	return nil
}

func (s *writeStore) Clear(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clears++
	clear(s.keys)
	return nil
}

// set changes the store's behaviour under its lock (FUSE requests run on
// other goroutines).
func (s *writeStore) set(change func(s *writeStore)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	change(s)
}

func (s *writeStore) deleted() (keys []string, clears int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.deletes), s.clears
}

func (s *writeStore) putKeys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k := range s.puts {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func (s *writeStore) totalPuts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.puts {
		n += c
	}
	return n
}

func (s *writeStore) value(key string) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.keys[key]
	return b, ok
}

// writeCatalog serves writeStores, making one for any new id.
type writeCatalog struct {
	memCatalog
	mu     sync.Mutex
	writes map[string]*writeStore
}

func (c *writeCatalog) Store(id string) zarr.Store {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.writes[id]
	if s == nil {
		s = newWriteStore(nil)
		c.writes[id] = s
	}
	return s
}

type writeMount struct {
	dir   string
	root  *Root
	cat   *writeCatalog
	log   *testenv.Buffer
	cache *cache.Cache
}

// mountWrite mounts a write mount for real (root, /dev/fuse) over a
// catalog holding "alpha" (testStore's keys).
func mountWrite(t *testing.T, wo WriteOptions) *writeMount {
	t.Helper()
	testenv.Require(t, os.Geteuid() == 0, "root (FUSE mounts)")
	_, err := os.Stat("/dev/fuse")
	testenv.Require(t, err == nil, "/dev/fuse")
	alpha := newWriteStore(map[string]string{
		".zmetadata": zmetadata,
		"grid/0.0":   "aaaaaa", "grid/0.1": "bbbbbb", "grid/1.0": "cccccc",
		"line/0": "xx", "line/1": "yy", "line/2": "zz",
	})
	cat := &writeCatalog{memCatalog: memCatalog{listed: []string{"alpha"}}, writes: map[string]*writeStore{"alpha": alpha}}
	cat.stores = map[string]zarr.Store{"alpha": alpha}
	if wo.SpoolDir == "" {
		wo.SpoolDir = t.TempDir()
	}
	if wo.ValidNewID == nil {
		wo.ValidNewID = func(id string) error {
			if strings.ToLower(id) != id || len(id) < 3 {
				return errors.New("lower case, 3 characters or more")
			}
			return nil
		}
	}
	logBuf := &testenv.Buffer{}
	c := cache.New(cache.Options{MaxBytes: 64 << 20})
	root := NewRoot(Options{Catalog: cat, Cache: c, Readahead: 4, MetadataTTL: time.Minute,
		Logger: slog.New(slog.NewTextHandler(logBuf, nil)), Write: &wo})
	dir := t.TempDir()
	server, err := Mount(dir, root, MountOptions{DirectMount: true})
	require.NoError(t, err)
	t.Cleanup(func() {
		if err := server.Unmount(); err != nil {
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
		root.opt.writer.shutdown()
		c.Close()
	})
	return &writeMount{dir: dir, root: root, cat: cat, log: logBuf, cache: c}
}

func (m *writeMount) store(id string) *writeStore {
	m.cat.mu.Lock()
	defer m.cat.mu.Unlock()
	return m.cat.writes[id]
}

func (m *writeMount) finish(t *testing.T) WriteSummary {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return m.root.FinishWrites(ctx)
}

func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s %v: %s", name, args, out)
	return string(out)
}

// makeTree writes files (key -> content) under dir.
func makeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for k, v := range files {
		p := filepath.Join(dir, filepath.FromSlash(k))
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(v), 0o644))
	}
}

func TestCopyIntoNewDatasourceUploadsEachKeyOnce(t *testing.T) {
	m := mountWrite(t, WriteOptions{WriteBack: 50 * time.Millisecond})
	src := t.TempDir()
	files := map[string]string{
		".zgroup": `{"zarr_format": 2}`, ".zattrs": `{}`,
		"v/.zarray": `{"chunks":[2]}`, "v/0": "ab", "v/1": "cd", "v/2": "",
		"deep/er/x": strings.Repeat("z", 100_000),
	}
	makeTree(t, filepath.Join(src, "result"), files)
	run(t, src, "cp", "-r", "result", filepath.Join(m.dir, "new_run"))

	// Read back at once, before and after the uploads: the mount's own
	// writes, costing no request.
	for k, v := range files {
		b, err := os.ReadFile(filepath.Join(m.dir, "new_run", k))
		require.NoError(t, err, k)
		assert.Equal(t, v, string(b), k)
	}
	sum := m.finish(t)
	assert.True(t, sum.OK(), "%+v", sum)
	assert.Equal(t, len(files), sum.Uploaded)
	s := m.store("new_run")
	require.NotNil(t, s)
	assert.Equal(t, len(files), s.totalPuts(), "one POST per key: %v", s.puts)
	for k, v := range files {
		b, ok := s.value(k)
		assert.True(t, ok, k)
		assert.Equal(t, v, string(b), k)
	}
	for k, v := range files {
		b, err := os.ReadFile(filepath.Join(m.dir, "new_run", k))
		require.NoError(t, err, k)
		assert.Equal(t, v, string(b), k)
	}
	gets, heads := s.counts()
	assert.Zero(t, gets+heads, "reads of own writes cost nothing")
	ls := run(t, m.dir, "ls", "-a", "new_run")
	assert.Equal(t, []string{".", "..", ".zattrs", ".zgroup", "deep", "v"}, strings.Fields(ls))
	ls = run(t, m.dir, "ls", "-a")
	assert.Contains(t, strings.Fields(ls), "new_run")
	assert.Contains(t, strings.Fields(ls), "alpha")
}

func TestPartialFileIsUploadedOnceUnderItsFinalName(t *testing.T) {
	m := mountWrite(t, WriteOptions{WriteBack: time.Hour})
	d := filepath.Join(m.dir, "new_run")
	require.NoError(t, os.Mkdir(d, 0o755))
	tmp := filepath.Join(d, "0.0.3f2a9c.partial")
	require.NoError(t, os.WriteFile(tmp, []byte("chunk"), 0o644))
	require.NoError(t, os.Rename(tmp, filepath.Join(d, "0.0")))
	// The rename queues the upload at once, whatever the write-back delay.
	require.Eventually(t, func() bool { return m.store("new_run").totalPuts() == 1 }, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, []string{"0.0"}, m.store("new_run").putKeys())

	// A file already uploaded is not moved: EXDEV, and mv copies it.
	err := os.Rename(filepath.Join(d, "0.0"), filepath.Join(d, "0.1"))
	assert.ErrorIs(t, err, syscall.EXDEV)

	// A .partial file left behind is never uploaded, and is reported.
	require.NoError(t, os.WriteFile(filepath.Join(d, "1.0.aa.partial"), []byte("x"), 0o644))
	sum := m.finish(t)
	assert.Equal(t, []string{"new_run/1.0.aa.partial"}, sum.NotUploaded)
	assert.False(t, sum.OK())
	assert.Equal(t, []string{"0.0"}, m.store("new_run").putKeys())
}

func TestWriteBackDelayLetsRsyncRenameFirst(t *testing.T) {
	testenv.RequireCommand(t, "rsync")
	m := mountWrite(t, WriteOptions{WriteBack: 2 * time.Second})
	src := t.TempDir()
	// .zmetadata too: rsync writes it as .zmetadata.XXXXXX and renames it
	// onto its name, which waits for the other uploads (slow here); its
	// queued upload under the temporary name must not start meanwhile.
	files := map[string]string{".zgroup": `{"zarr_format": 2}`, "a/0": "one", "a/1": "two", ".zmetadata": "{}"}
	makeTree(t, filepath.Join(src, "s"), files)
	require.NoError(t, os.Mkdir(filepath.Join(m.dir, "rs_run"), 0o755))
	m.store("rs_run").set(func(s *writeStore) { s.putDelay = 300 * time.Millisecond })
	run(t, src, "rsync", "-a", "s/", filepath.Join(m.dir, "rs_run")+"/")
	sum := m.finish(t)
	assert.True(t, sum.OK(), "%+v", sum)
	assert.Equal(t, []string{".zgroup", ".zmetadata", "a/0", "a/1"}, m.store("rs_run").putKeys(), "no temporary name reached the gateway")
	assert.Equal(t, 4, m.store("rs_run").totalPuts(), "one upload per key")
}

func TestDeletesNeedAllowDelete(t *testing.T) {
	m := mountWrite(t, WriteOptions{})
	// A key of the gateway: EPERM, logged, nothing sent.
	err := os.Remove(filepath.Join(m.dir, "alpha", "line", "0"))
	assert.ErrorIs(t, err, syscall.EPERM)
	deletes, _ := m.store("alpha").deleted()
	assert.Empty(t, deletes)
	assert.Contains(t, m.log.String(), "--allow-delete")
	// A file that never left the mount can always go.
	p := filepath.Join(m.dir, "alpha", "scratch.partial")
	require.NoError(t, os.WriteFile(p, []byte("x"), 0o644))
	require.NoError(t, os.Remove(p))
	// An invalid new id is EINVAL; a read-only mount stays EROFS (see
	// TestEveryWriteIsEROFS).
	assert.ErrorIs(t, os.Mkdir(filepath.Join(m.dir, "Bad Id"), 0o755), syscall.EINVAL)
	assert.ErrorIs(t, os.Mkdir(filepath.Join(m.dir, "alpha"), 0o755), syscall.EEXIST)
	// An empty new datasource can be removed: nothing reached the gateway.
	require.NoError(t, os.Mkdir(filepath.Join(m.dir, "tmp_ds"), 0o755))
	require.NoError(t, os.Remove(filepath.Join(m.dir, "tmp_ds")))
	_, err = os.Stat(filepath.Join(m.dir, "tmp_ds"))
	assert.ErrorIs(t, err, iofs.ErrNotExist)
}

func TestRemoveDatasourceWithAllowDelete(t *testing.T) {
	m := mountWrite(t, WriteOptions{AllowDelete: true})
	run(t, m.dir, "rm", "-r", "alpha")
	deletes, clears := m.store("alpha").deleted()
	for _, k := range []string{".zmetadata", "grid/0.0", "grid/0.1", "grid/1.0", "line/0", "line/1", "line/2"} {
		assert.Contains(t, deletes, k)
	}
	assert.Equal(t, 1, clears, "rm -r of a datasource ends with DELETE /zarr/{id}/")
	_, err := os.Stat(filepath.Join(m.dir, "alpha"))
	assert.ErrorIs(t, err, iofs.ErrNotExist)
}

func TestFailedUploadFailsTheConsolidatedMetadata(t *testing.T) {
	// Uploads wait for the barrier (a failure seen earlier would fail the
	// next close already: TestAFailedUploadFailsLaterClosesAndRenames).
	m := mountWrite(t, WriteOptions{WriteBack: time.Hour})
	d := filepath.Join(m.dir, "bad_run")
	require.NoError(t, os.Mkdir(d, 0o755))
	m.store("bad_run").set(func(s *writeStore) { s.failKeys = "v/1" })
	makeTree(t, d, map[string]string{"v/0": "a", "v/1": "b"})
	err := os.WriteFile(filepath.Join(d, ".zmetadata"), []byte("{}"), 0o644)
	require.Error(t, err, "close() of .zmetadata reports the failed chunk")
	assert.ErrorIs(t, err, syscall.EIO)
	sum := m.finish(t)
	require.Len(t, sum.Failed, 1)
	assert.Equal(t, "bad_run/v/1", sum.Failed[0].Key)
	assert.NotContains(t, m.store("bad_run").putKeys(), ".zmetadata")
	assert.Contains(t, sum.NotUploaded, "bad_run/.zmetadata")
}

func TestFsyncReturnsTheUploadError(t *testing.T) {
	m := mountWrite(t, WriteOptions{WriteBack: time.Hour})
	d := filepath.Join(m.dir, "sync_run")
	require.NoError(t, os.Mkdir(d, 0o755))
	m.store("sync_run").set(func(s *writeStore) { s.failKeys = "bad" })
	for name, want := range map[string]error{"good": nil, "bad": syscall.EIO} {
		f, err := os.Create(filepath.Join(d, name))
		require.NoError(t, err)
		_, err = f.WriteString("data")
		require.NoError(t, err)
		err = f.Sync()
		if want == nil {
			assert.NoError(t, err, name)
		} else {
			assert.ErrorIs(t, err, want, name)
		}
		f.Close()
	}
	assert.Equal(t, []string{"bad", "good"}, m.store("sync_run").putKeys())
}

func TestSpoolFullWaitsForUploadsThenENOSPC(t *testing.T) {
	m := mountWrite(t, WriteOptions{SpoolSize: 1 << 20, WriteBack: time.Hour})
	d := filepath.Join(m.dir, "big_run")
	require.NoError(t, os.Mkdir(d, 0o755))
	m.store("big_run").set(func(s *writeStore) { s.putDelay = 5 * time.Millisecond })
	// 10x the spool, in closed files: writers wait for uploads.
	chunk := bytes.Repeat([]byte("q"), 256<<10)
	for i := range 40 {
		require.NoError(t, os.WriteFile(filepath.Join(d, fmt.Sprint(i)), chunk, 0o644))
	}
	sum := m.finish(t)
	assert.True(t, sum.OK(), "%+v", sum)
	assert.Equal(t, 40, m.store("big_run").totalPuts())
	// One file larger than the spool can never be spooled; left there, its
	// truncated content is never uploaded, and the mount not finalised.
	err := os.WriteFile(filepath.Join(d, "huge"), bytes.Repeat([]byte("h"), 2<<20), 0o644)
	assert.ErrorIs(t, err, syscall.ENOSPC)
	sum = m.finish(t)
	assert.False(t, sum.OK())
	require.Len(t, sum.Failed, 1)
	assert.Equal(t, "big_run/huge", sum.Failed[0].Key)
	assert.Contains(t, sum.Failed[0].Err.Error(), "a write to it failed")
	assert.NotContains(t, m.store("big_run").putKeys(), "huge")
}

// Once an upload of a datasource failed for good, later closes and
// renames there fail too: a writer that does not wait for its uploads
// (dask threads, cp) learns of it before it ends.
func TestAFailedUploadFailsLaterClosesAndRenames(t *testing.T) {
	m := mountWrite(t, WriteOptions{WriteBack: time.Hour})
	d := filepath.Join(m.dir, "sticky_run")
	require.NoError(t, os.Mkdir(d, 0o755))
	m.store("sticky_run").set(func(s *writeStore) { s.failKeys = "v/0" })
	require.NoError(t, os.MkdirAll(filepath.Join(d, "v"), 0o755))
	tmp := filepath.Join(d, "v", "0.aa.partial")
	require.NoError(t, os.WriteFile(tmp, []byte("a"), 0o644))
	require.NoError(t, os.Rename(tmp, filepath.Join(d, "v", "0")), "the failing upload is queued, not waited for")
	require.Eventually(t, func() bool { return m.store("sticky_run").totalPuts() == 1 }, 10*time.Second, 5*time.Millisecond)
	var err error
	for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(5 * time.Millisecond) {
		if err = os.WriteFile(filepath.Join(d, "v", "1.bb.partial"), []byte("b"), 0o644); errors.Is(err, syscall.EIO) {
			break
		}
	}
	require.ErrorIs(t, err, syscall.EIO, "the close of a later file fails: %s", m.log.String())
	err = os.Rename(filepath.Join(d, "v", "1.bb.partial"), filepath.Join(d, "v", "1"))
	assert.ErrorIs(t, err, syscall.EIO, "and its rename")
	err = os.WriteFile(filepath.Join(d, "other"), []byte("c"), 0o644)
	assert.ErrorIs(t, err, syscall.EIO)
	sum := m.finish(t)
	assert.False(t, sum.OK())
	assert.Equal(t, "sticky_run/v/0", sum.Failed[0].Key)
}

func TestUploadsRunInParallel(t *testing.T) {
	m := mountWrite(t, WriteOptions{Uploads: 8})
	d := filepath.Join(m.dir, "par_run")
	require.NoError(t, os.Mkdir(d, 0o755))
	s := m.store("par_run")
	s.set(func(s *writeStore) { s.putDelay = 50 * time.Millisecond })
	for i := range 32 {
		require.NoError(t, os.WriteFile(filepath.Join(d, fmt.Sprint(i)), []byte("x"), 0o644))
	}
	m.finish(t)
	s.mu.Lock()
	defer s.mu.Unlock()
	assert.Equal(t, 8, s.peak, "uploads in flight reach the bound and stay within it")
}

func TestOverwriteGatewayKey(t *testing.T) {
	m := mountWrite(t, WriteOptions{})
	p := filepath.Join(m.dir, "alpha", "line", "1")
	require.NoError(t, os.WriteFile(p, []byte("new!"), 0o644))
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	assert.Equal(t, "new!", string(b))
	// Append keeps the gateway's bytes.
	f, err := os.OpenFile(filepath.Join(m.dir, "alpha", "line", "2"), os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = f.WriteString("++")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	sum := m.finish(t)
	assert.True(t, sum.OK(), "%+v", sum)
	v, _ := m.store("alpha").value("line/1")
	assert.Equal(t, "new!", string(v))
	v, _ = m.store("alpha").value("line/2")
	assert.Equal(t, "zz++", string(v))
	// Opening for writing and closing unchanged costs nothing.
	f, err = os.OpenFile(filepath.Join(m.dir, "alpha", "grid", "0.0"), os.O_WRONLY, 0)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	m.finish(t)
	assert.Equal(t, 2, m.store("alpha").totalPuts())
}

// xarrayWrite is the scientist's session: a new dataset (mode w,
// consolidated), an append along time, a region rewrite, each read back
// through the mount and compared with what was computed.
const xarrayWrite = `
import sys, numpy as np, xarray as xr, zarr

class Counting(zarr.storage.KVStore):
    sets = 0
    def __setitem__(self, key, value):
        Counting.sets += 1
        super().__setitem__(key, value)

def session(p):
    t = np.arange(6)
    ds = xr.Dataset({"hs": (("time", "x"), np.arange(24, dtype="f4").reshape(6, 4)),
                     "tp": (("time",), np.linspace(1, 2, 6))},
                    coords={"time": t, "x": np.arange(4)}, attrs={"title": "run"})
    enc = {"hs": {"chunks": (2, 4)}, "tp": {"chunks": (2,)}}
    ds.to_zarr(p, mode="w", consolidated=True, encoding=enc)
    xr.testing.assert_identical(xr.open_zarr(p).load(), ds)
    more = ds.isel(time=slice(0, 2)).assign_coords(time=[6, 7]) + 100
    more.attrs = ds.attrs
    more.to_zarr(p, mode="a", append_dim="time", consolidated=True)
    full = xr.concat([ds, more], dim="time")
    full.attrs = ds.attrs
    xr.testing.assert_identical(xr.open_zarr(p).load(), full)
    patch = full.isel(time=slice(2, 4)) * 0 - 1
    patch[["hs", "tp"]].drop_vars(["time", "x"]).to_zarr(p, region={"time": slice(2, 4)})
    full["hs"][2:4] = -1
    full["tp"][2:4] = -1
    xr.testing.assert_identical(xr.open_zarr(p).load(), full)

session(sys.argv[1] + "/xr_run")
session(Counting({}))
print("sets", Counting.sets)
`

func TestXarrayWritesThroughTheMount(t *testing.T) {
	testenv.RequirePython(t, "xarray, zarr, numpy")
	m := mountWrite(t, WriteOptions{WriteBack: 100 * time.Millisecond})
	script := filepath.Join(t.TempDir(), "w.py")
	require.NoError(t, os.WriteFile(script, []byte(xarrayWrite), 0o644))
	out, err := exec.Command(testenv.DebianPython, script, m.dir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	sum := m.finish(t)
	assert.True(t, sum.OK(), "%+v", sum)
	s := m.store("xr_run")
	for _, k := range s.putKeys() {
		assert.NotContains(t, k, ".partial", "no temporary key reaches the gateway")
	}
	assert.Contains(t, s.putKeys(), ".zmetadata")
	assert.Contains(t, s.putKeys(), "hs/3.0", "appended chunk")
	gets, heads := s.counts()
	assert.Zero(t, gets+heads, "a new datasource is never asked of the gateway")
	// As many POSTs as zarr set keys in the same session on a store of
	// its own: one per key written, nothing more.
	var sets int
	_, err = fmt.Sscanf(strings.TrimSpace(string(out)), "sets %d", &sets)
	require.NoError(t, err, "%s", out)
	assert.Equal(t, sets, s.totalPuts(), "POSTs: %v", s.puts)
}
