package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const testOrigin = "http://gateway.test"

func openDisk(t *testing.T, o DiskOptions) *Disk {
	t.Helper()
	if o.Origin == "" {
		o.Origin = testOrigin
	}
	d, err := OpenDisk(o)
	require.NoError(t, err)
	t.Cleanup(d.Close)
	return d
}

// diskCache is a Cache over a Disk in dir; closing the cache flushes and closes the disk.
func diskCache(t *testing.T, dir string, o DiskOptions, co Options) (*Cache, *Disk) {
	t.Helper()
	o.Dir = dir
	d := openDisk(t, o)
	co.Disk = d
	return newCache(t, co), d
}

// duBytes is what `du -sb dir` says: the apparent size of every file and directory in it.
func duBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed meanwhile
		}
		if err != nil {
			return err
		}
		if fi, err := os.Lstat(p); err == nil {
			total += fi.Size()
		}
		return nil
	})
	require.NoError(t, err)
	return total
}

// entryFiles lists the entry files of a disk folder.
func entryFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := readDirNames(filepath.Join(dir, entriesDir))
	require.NoError(t, err)
	return names
}

// testBytes is a test value of n bytes determined by seed.
func testBytes(seed, n int) []byte {
	r := rand.New(rand.NewPCG(uint64(seed), 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return b
}

func TestDiskAnswersAfterReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disk")
	clock := newFakeClock()
	want := testBytes(1, 5000)
	var calls atomic.Int64

	c1, _ := diskCache(t, dir, DiskOptions{}, Options{Now: clock.Now})
	got, err := c1.GetOrFetch(context.Background(), "ds/a/0", constFetch(&calls, want, nil), OnDisk("ds@v1", "a/0"))
	require.NoError(t, err)
	assert.Equal(t, want, got)
	_, err = c1.GetOrFetch(context.Background(), "ds/a/1", constFetch(&calls, []byte("no disk"), nil))
	require.NoError(t, err)
	c1.Close() // flushes the disk writes
	st := c1.Stats()
	assert.Equal(t, int64(2), st.Fetches)
	assert.Equal(t, int64(1), st.DiskWrites, "only the value given OnDisk is written")
	assert.Len(t, entryFiles(t, dir), 1)
	info, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), info.Mode().Perm(), "the folder is created private")

	clock.Advance(time.Hour)
	c2, _ := diskCache(t, dir, DiskOptions{}, Options{Now: clock.Now})
	n, err := c2.SizeOrHead(context.Background(), "ds/a/0", mustNotHead(t), OnDisk("ds@v1", "a/0"))
	require.NoError(t, err)
	assert.Equal(t, int64(len(want)), n, "the size comes from the entry's header")
	got, err = c2.GetOrFetch(context.Background(), "ds/a/0", mustNotFetch(t), OnDisk("ds@v1", "a/0"))
	require.NoError(t, err)
	assert.Equal(t, want, got)
	age, ok := c2.Age("ds/a/0")
	require.True(t, ok)
	assert.Equal(t, time.Hour, age, "a value from disk is as old as the fetch that got it")
	st = c2.Stats()
	assert.Equal(t, int64(0), st.Fetches, "a disk hit is not a fetch")
	assert.Equal(t, int64(0), st.Heads, "a size from disk is not a head")
	assert.Equal(t, int64(2), st.DiskHits)
	assert.Positive(t, st.DiskBytes)
	assert.Equal(t, int64(DefaultDiskMaxBytes), st.DiskMaxBytes)
}

func TestDiskMisses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disk")
	var calls atomic.Int64
	c1, _ := diskCache(t, dir, DiskOptions{}, Options{})
	_, err := c1.GetOrFetch(context.Background(), "k", constFetch(&calls, []byte("v1 bytes"), nil), OnDisk("ds@v1", "a/0"))
	require.NoError(t, err)
	c1.Close()

	for _, tc := range []struct {
		name    string
		origin  string
		opt     FetchOption
		fetched bool
	}{
		{"same name", testOrigin, OnDisk("ds@v1", "a/0"), false},
		{"another version of the source", testOrigin, OnDisk("ds@v2", "a/0"), true},
		{"another key", testOrigin, OnDisk("ds@v1", "a/1"), true},
		{"another origin", "http://other.test", OnDisk("ds@v1", "a/0"), true},
		{"no disk option", testOrigin, FetchOption{}, true},
		{"refresh", testOrigin, RefreshOnDisk("ds@v1", "a/0"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int64
			c, _ := diskCache(t, dir, DiskOptions{Origin: tc.origin}, Options{})
			_, err := c.GetOrFetch(context.Background(), "k", constFetch(&calls, []byte("v1 bytes"), nil), tc.opt)
			require.NoError(t, err)
			if tc.fetched {
				assert.Equal(t, int64(1), calls.Load())
				assert.Equal(t, int64(0), c.Stats().DiskHits)
			} else {
				assert.Equal(t, int64(0), calls.Load())
				assert.Equal(t, int64(1), c.Stats().DiskHits)
			}
		})
	}
}

func TestDiskRefreshReplacesTheEntry(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disk")
	var calls atomic.Int64
	c1, _ := diskCache(t, dir, DiskOptions{}, Options{})
	_, err := c1.GetOrFetch(context.Background(), "k", constFetch(&calls, []byte("old"), nil), OnDisk("v", "k"))
	require.NoError(t, err)
	c1.Forget("k")
	got, err := c1.GetOrFetch(context.Background(), "k", constFetch(&calls, []byte("new bytes"), nil), RefreshOnDisk("v", "k"))
	require.NoError(t, err)
	assert.Equal(t, "new bytes", string(got))
	c1.Close()
	assert.Equal(t, int64(2), calls.Load(), "a refresh does not read the disk")

	c2, _ := diskCache(t, dir, DiskOptions{}, Options{})
	got, err = c2.GetOrFetch(context.Background(), "k", mustNotFetch(t), OnDisk("v", "k"))
	require.NoError(t, err)
	assert.Equal(t, "new bytes", string(got))
}

func TestDiskKeepsNoFailureNorAbandonedAnswer(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disk")
	c, _ := diskCache(t, dir, DiskOptions{}, Options{})
	var calls atomic.Int64
	_, err := c.GetOrFetch(context.Background(), "missing", constFetch(&calls, nil, fs.ErrNotExist), OnDisk("v", "missing"))
	require.ErrorIs(t, err, fs.ErrNotExist)
	_, err = c.GetOrFetch(context.Background(), "failing", constFetch(&calls, nil, errors.New("502")), OnDisk("v", "failing"))
	require.Error(t, err)

	// A fetch that Invalidate made stale answers its caller but is not kept anywhere.
	g := newGated([]byte("from before the change"), nil)
	done := make(chan error, 1)
	go func() {
		_, err := c.GetOrFetch(context.Background(), "ds/old", g.fetch, OnDisk("v", "old"))
		done <- err
	}()
	waitStarted(t, g)
	c.Invalidate("ds/")
	close(g.gate)
	require.NoError(t, <-done)
	c.Close()
	assert.Empty(t, entryFiles(t, dir), "neither a 404, a failure nor an invalidated answer is written")
	assert.Equal(t, int64(0), c.Stats().DiskWrites)
}

func TestDiskDamagedEntryIsRefetched(t *testing.T) {
	want := testBytes(2, 3000)
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, path string)
	}{
		{"a byte flipped in the value", func(t *testing.T, path string) { flipByte(t, path, diskHeaderSize+1234) }},
		{"a byte flipped in the header", func(t *testing.T, path string) { flipByte(t, path, 42) }},
		{"a byte flipped in the value's checksum", func(t *testing.T, path string) { flipByte(t, path, 57) }},
		{"truncated in the value", func(t *testing.T, path string) { require.NoError(t, os.Truncate(path, diskHeaderSize+100)) }},
		{"truncated in the header", func(t *testing.T, path string) { require.NoError(t, os.Truncate(path, 20)) }},
		{"empty", func(t *testing.T, path string) { require.NoError(t, os.Truncate(path, 0)) }},
		{"longer", func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = f.Write([]byte("more"))
			require.NoError(t, err)
			require.NoError(t, f.Close())
		}},
		{"another entry's file", func(t *testing.T, path string) {
			// The entry of another name, renamed onto this one.
			d := openDisk(t, DiskOptions{Dir: filepath.Dir(filepath.Dir(path))})
			other := d.path(d.name("v", "other"))
			d.writeEntry(diskJob{sum: d.name("v", "other"), val: want, at: time.Now()})
			require.NoError(t, os.Rename(other, path))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "disk")
			var calls atomic.Int64
			c1, d1 := diskCache(t, dir, DiskOptions{}, Options{})
			_, err := c1.GetOrFetch(context.Background(), "k", constFetch(&calls, want, nil), OnDisk("v", "k"))
			require.NoError(t, err)
			c1.Close()
			path := d1.path(d1.name("v", "k"))
			tc.damage(t, path)

			c2, _ := diskCache(t, dir, DiskOptions{}, Options{})
			got, err := c2.GetOrFetch(context.Background(), "k", constFetch(&calls, want, nil), OnDisk("v", "k"))
			require.NoError(t, err)
			assert.Equal(t, want, got, "never the damaged bytes")
			assert.Equal(t, int64(2), calls.Load(), "a damaged entry is fetched again")
			st := c2.Stats()
			assert.Equal(t, int64(1), st.DiskCorrupt)
			assert.Equal(t, int64(0), st.DiskHits)
			c2.Close()

			// The refetched value replaced it.
			c3, _ := diskCache(t, dir, DiskOptions{}, Options{})
			got, err = c3.GetOrFetch(context.Background(), "k", mustNotFetch(t), OnDisk("v", "k"))
			require.NoError(t, err)
			assert.Equal(t, want, got)
		})
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	b := make([]byte, 1)
	_, err = f.ReadAt(b, off)
	require.NoError(t, err)
	b[0] ^= 0x10
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
}

func TestDiskDamagedHeaderTellsNoSize(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disk")
	d := openDisk(t, DiskOptions{Dir: dir})
	d.writeEntry(diskJob{sum: d.name("v", "k"), val: testBytes(3, 1000), at: time.Now()})
	n, _, ok := d.size("v", "k")
	require.True(t, ok)
	assert.Equal(t, int64(1000), n)
	require.NoError(t, os.Truncate(d.path(d.name("v", "k")), 500))
	_, _, ok = d.size("v", "k")
	assert.False(t, ok, "a torn entry tells no size")
}

func TestDiskCapAndLRUEviction(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disk")
	const capBytes = 64 << 10
	// Hits mark entries used a day from now: later than any write's mtime.
	later := func() time.Time { return time.Now().Add(24 * time.Hour) }
	d := openDisk(t, DiskOptions{Dir: dir, MaxBytes: capBytes, Now: later})
	d.touchAfter = 0
	put := func(i int) {
		d.writeEntry(diskJob{sum: d.name("v", fmt.Sprint(i)), val: testBytes(i, 4000), at: time.Now()})
	}
	// Fill to about half the cap, then use 0 to 2, so that they are the most recent.
	for i := range 7 {
		put(i)
	}
	for i := range 3 {
		_, _, ok := d.get("v", fmt.Sprint(i))
		require.True(t, ok)
	}
	for i := 7; i < 40; i++ {
		put(i)
		require.LessOrEqual(t, duBytes(t, dir), int64(capBytes), "after writing %d", i)
	}
	st := d.stats()
	assert.Positive(t, st.evictions)
	assert.LessOrEqual(t, st.bytes, int64(capBytes))
	for i := range 3 {
		_, _, ok := d.get("v", fmt.Sprint(i))
		assert.True(t, ok, "entry %d was used recently and is kept", i)
	}
	for i := 3; i < 7; i++ {
		_, _, ok := d.get("v", fmt.Sprint(i))
		assert.False(t, ok, "entry %d is the least recently used and is evicted", i)
	}
	_, _, ok := d.get("v", "39")
	assert.True(t, ok, "the newest entry is kept")

	// A value larger than the cap is not written at all.
	d.writeEntry(diskJob{sum: d.name("v", "huge"), val: make([]byte, capBytes), at: time.Now()})
	_, _, ok = d.get("v", "huge")
	assert.False(t, ok)
	assert.Positive(t, d.stats().dropped)
}

func TestDiskOpenCountsWhatIsThereAndRemovesDeadTemps(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disk")
	d1 := openDisk(t, DiskOptions{Dir: dir})
	for i := range 5 {
		d1.writeEntry(diskJob{sum: d1.name("v", fmt.Sprint(i)), val: testBytes(i, 2000), at: time.Now()})
	}
	// A live writer: d1 is open and has a temp file.
	liveTemp := filepath.Join(dir, tmpDir, d1.owner+".99")
	require.NoError(t, os.WriteFile(liveTemp, make([]byte, 777), 0o600))
	// A crashed writer: its owner lock is there but not held, with a temp file; and an
	// orphan temp file without an owner lock.
	deadLock := filepath.Join(dir, tmpDir, "deadbeef00000000"+ownerSuffix)
	deadTemp := filepath.Join(dir, tmpDir, "deadbeef00000000.3")
	orphan := filepath.Join(dir, tmpDir, "0123456789abcdef.1")
	require.NoError(t, os.WriteFile(deadLock, nil, 0o600))
	require.NoError(t, os.WriteFile(deadTemp, make([]byte, 5000), 0o600))
	require.NoError(t, os.WriteFile(orphan, make([]byte, 5000), 0o600))

	d2 := openDisk(t, DiskOptions{Dir: dir})
	for _, p := range []string{deadLock, deadTemp, orphan} {
		assert.NoFileExists(t, p, "left by a writer that is gone")
	}
	assert.FileExists(t, liveTemp, "a live writer's temp file stays")
	assert.Equal(t, duBytes(t, dir), d2.stats().bytes, "the count at open is what du -sb says")
	for i := range 5 {
		_, _, ok := d2.get("v", fmt.Sprint(i))
		assert.True(t, ok)
	}
}

func TestDiskQueueIsBoundedAndFlushedAtClose(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disk")
	d, err := OpenDisk(DiskOptions{Dir: dir, QueueBytes: 100, Origin: testOrigin})
	require.NoError(t, err)
	defer d.Close()
	require.NoError(t, d.lock()) // writers wait: what is queued stays queued
	d.put("v", "a", value{bytes: testBytes(1, 80)}, time.Now(), false)
	d.put("v", "b", value{bytes: testBytes(2, 80)}, time.Now(), false) // 160 > 100: dropped
	d.put("v", "c", value{bytes: testBytes(3, 10)}, time.Now(), false)
	d.unlock()
	d.Close()
	st := d.stats()
	assert.Equal(t, int64(1), st.dropped, "only the value that did not fit the queue")
	assert.Equal(t, int64(2), st.writes)
	d2 := openDisk(t, DiskOptions{Dir: dir})
	for key, want := range map[string]bool{"a": true, "b": false, "c": true} {
		_, _, ok := d2.get("v", key)
		assert.Equal(t, want, ok, key)
	}
}

func TestDiskSharedByTwoInstances(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disk")
	const capBytes = 256 << 10
	const keys = 150
	vals := make([][]byte, keys)
	for i := range vals {
		vals[i] = testBytes(i, 1000+i*37%6000)
	}
	var disks [2]*Disk
	for i := range disks {
		disks[i] = openDisk(t, DiskOptions{Dir: dir, MaxBytes: capBytes})
	}
	// The folder is sampled under its lock, as a third process would: a walk without it
	// could count an entry being evicted and the temp file that takes its room both.
	watcher := openDisk(t, DiskOptions{Dir: dir, MaxBytes: capBytes})
	var maxSeen atomic.Int64
	stop := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			require.NoError(t, watcher.lock())
			if n := duBytes(t, dir); n > maxSeen.Load() {
				maxSeen.Store(n)
			}
			watcher.unlock()
			time.Sleep(time.Millisecond)
		}
	})
	var wg sync.WaitGroup
	var bad atomic.Int64
	for w, d := range disks {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range 600 {
				i := r.IntN(keys)
				key := fmt.Sprint(i)
				if v, _, ok := d.get("v", key); ok && !bytes.Equal(v, vals[i]) {
					bad.Add(1)
				}
				d.put("v", key, value{bytes: vals[i]}, time.Now(), r.IntN(10) == 0)
			}
		})
	}
	wg.Wait()
	for _, d := range disks {
		d.Close()
	}
	close(stop)
	watch.Wait()
	watcher.Close()
	assert.Zero(t, bad.Load(), "a read returned bytes that are not the value")
	assert.LessOrEqual(t, maxSeen.Load(), int64(capBytes), "du -sb of the shared folder, sampled while both wrote")
	assert.LessOrEqual(t, duBytes(t, dir), int64(capBytes))
	st0, st1 := disks[0].stats(), disks[1].stats()
	assert.Positive(t, st0.writes+st1.writes)
	assert.Positive(t, st0.evictions+st1.evictions, "the cap was reached")
	assert.Zero(t, st0.corrupt+st1.corrupt)

	// Every entry left is whole and right.
	d := openDisk(t, DiskOptions{Dir: dir, MaxBytes: capBytes})
	found := 0
	for i := range keys {
		if v, _, ok := d.get("v", fmt.Sprint(i)); ok {
			found++
			assert.Equal(t, vals[i], v, "entry %d", i)
		}
	}
	assert.Positive(t, found)
	assert.Zero(t, d.stats().corrupt)
	tmps, err := readDirNames(filepath.Join(dir, tmpDir))
	require.NoError(t, err)
	assert.Len(t, tmps, 1, "only the open instance's owner lock: no temp file left (%v)", tmps)
}

func TestOpenDiskRefusesUnsafeFolders(t *testing.T) {
	for _, tc := range []struct {
		name   string
		setup  func(t *testing.T, dir string) // dir does not exist yet
		unsafe bool                           // ErrUnsafeDir, else another error
		root   bool                           // needs root
	}{
		{name: "a symbolic link", unsafe: true, setup: func(t *testing.T, dir string) {
			real := dir + ".real"
			require.NoError(t, os.Mkdir(real, 0o700))
			require.NoError(t, os.Symlink(real, dir))
		}},
		{name: "group-writable", unsafe: true, setup: func(t *testing.T, dir string) { mkdirMode(t, dir, 0o770) }},
		{name: "world-writable", unsafe: true, setup: func(t *testing.T, dir string) { mkdirMode(t, dir, 0o777) }},
		{name: "a file", unsafe: true, setup: func(t *testing.T, dir string) {
			require.NoError(t, os.WriteFile(dir, nil, 0o600))
		}},
		{name: "owned by another user", unsafe: true, root: true, setup: func(t *testing.T, dir string) {
			mkdirMode(t, dir, 0o700)
			require.NoError(t, os.Chown(dir, 65534, 65534))
		}},
		{name: "its entries folder a symbolic link", unsafe: true, setup: func(t *testing.T, dir string) {
			mkdirMode(t, dir, 0o700)
			require.NoError(t, os.Symlink(t.TempDir(), filepath.Join(dir, entriesDir)))
		}},
		{name: "its lock a symbolic link", setup: func(t *testing.T, dir string) {
			mkdirMode(t, dir, 0o700)
			require.NoError(t, os.Symlink(filepath.Join(t.TempDir(), "x"), filepath.Join(dir, lockFileName)))
		}},
		{name: "a missing parent", setup: func(t *testing.T, dir string) {
			require.NoError(t, os.Remove(filepath.Dir(dir)))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Geteuid() != 0 {
				t.Skip("needs root to give a folder to another user")
			}
			parent := filepath.Join(t.TempDir(), "p")
			require.NoError(t, os.Mkdir(parent, 0o700))
			dir := filepath.Join(parent, "disk")
			tc.setup(t, dir)
			d, err := OpenDisk(DiskOptions{Dir: dir})
			if d != nil {
				d.Close()
			}
			require.Error(t, err)
			if tc.unsafe {
				assert.ErrorIs(t, err, ErrUnsafeDir)
			}
			assert.Contains(t, err.Error(), "disk cache folder")
		})
	}
	// Readable by others is the user's choice; entries stay in a 0700 folder.
	dir := filepath.Join(t.TempDir(), "readable")
	mkdirMode(t, dir, 0o755)
	openDisk(t, DiskOptions{Dir: dir})
	fi, err := os.Stat(filepath.Join(dir, entriesDir))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
}

func mkdirMode(t *testing.T, dir string, mode os.FileMode) {
	t.Helper()
	require.NoError(t, os.Mkdir(dir, 0o700))
	require.NoError(t, os.Chmod(dir, mode)) // past the umask
}

func TestDiskFlockExcludesAnotherInstance(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disk")
	d1 := openDisk(t, DiskOptions{Dir: dir})
	require.NoError(t, d1.lock())
	opened := make(chan error, 1)
	go func() {
		d2, err := OpenDisk(DiskOptions{Dir: dir, Origin: testOrigin})
		if d2 != nil {
			d2.Close()
		}
		opened <- err
	}()
	select {
	case <-opened:
		t.Fatal("a second instance counted the folder while the first held its lock")
	case <-time.After(100 * time.Millisecond):
	}
	d1.unlock()
	select {
	case err := <-opened:
		require.NoError(t, err)
	case <-time.After(waitLimit):
		t.Fatal("the second instance did not open once the lock was free")
	}
	var st syscall.Stat_t
	require.NoError(t, syscall.Stat(filepath.Join(dir, lockFileName), &st))
	assert.Equal(t, uint32(0o600), st.Mode&0o777)
}
