package statedir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/internal/testenv"
)

// nobody is the uid given to files "another user" owns; creating them needs root.
const nobody = 65534

func requireRoot(t *testing.T) {
	t.Helper()
	testenv.Require(t, os.Geteuid() == 0, "root, to create files owned by another user")
}

func TestOpenInCreatesAPrivateFolder(t *testing.T) {
	parent := t.TempDir()
	d, err := OpenIn(parent, "dmfs", true, true)
	require.NoError(t, err)
	defer d.Close()
	fi, err := os.Lstat(filepath.Join(parent, "dmfs"))
	require.NoError(t, err)
	assert.True(t, fi.IsDir())
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())

	again, err := OpenIn(parent, "dmfs", true, false)
	require.NoError(t, err, "a folder of ours is opened again as found")
	again.Close()

	_, err = OpenIn(t.TempDir(), "dmfs", true, false)
	assert.ErrorIs(t, err, os.ErrNotExist, "without create, a missing folder is not made")
}

func TestOpenInRefusesAFolderOthersCouldControl(t *testing.T) {
	cases := []struct {
		name    string
		root    bool // needs root to set up
		private bool // parent is XDG_RUNTIME_DIR
		plant   func(t *testing.T, parent, path string)
		want    []string // in the error
	}{
		{"a symlink to a folder of ours", false, false, func(t *testing.T, parent, path string) {
			target := filepath.Join(parent, "elsewhere")
			require.NoError(t, os.Mkdir(target, 0o700))
			require.NoError(t, os.Symlink(target, path))
		}, []string{"is a symbolic link", "remove it"}},
		{"a dangling symlink", false, false, func(t *testing.T, parent, path string) {
			require.NoError(t, os.Symlink(filepath.Join(parent, "missing"), path))
		}, []string{"is a symbolic link"}},
		{"a file", false, false, func(t *testing.T, _, path string) {
			require.NoError(t, os.WriteFile(path, nil, 0o600))
		}, []string{"is not a directory"}},
		{"group-writable", false, false, func(t *testing.T, _, path string) {
			require.NoError(t, os.Mkdir(path, 0o700))
			require.NoError(t, os.Chmod(path, 0o770))
		}, []string{"open to group or others", "drwxrwx---", "chmod 700"}},
		{"world-readable", false, false, func(t *testing.T, _, path string) {
			require.NoError(t, os.Mkdir(path, 0o700))
			require.NoError(t, os.Chmod(path, 0o705))
		}, []string{"open to group or others"}},
		{"owned by another user", true, false, func(t *testing.T, _, path string) {
			require.NoError(t, os.Mkdir(path, 0o700))
			require.NoError(t, os.Chown(path, nobody, nobody))
		}, []string{"not owned by you", "owner uid 65534", "remove it"}},
		{"XDG_RUNTIME_DIR owned by another user", true, true, func(t *testing.T, parent, _ string) {
			require.NoError(t, os.Chown(parent, nobody, nobody))
		}, []string{"XDG_RUNTIME_DIR", "not owned by you", "owner uid 65534"}},
		{"XDG_RUNTIME_DIR group-writable", false, true, func(t *testing.T, parent, _ string) {
			require.NoError(t, os.Chmod(parent, 0o770))
		}, []string{"XDG_RUNTIME_DIR", "writable by group or others"}},
		{"a shared parent writable by all and not sticky", false, false, func(t *testing.T, parent, _ string) {
			require.NoError(t, os.Chmod(parent, 0o777))
		}, []string{"not sticky"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.root {
				requireRoot(t)
			}
			parent := t.TempDir()
			path := filepath.Join(parent, "dmfs")
			c.plant(t, parent, path)
			before, _ := os.Lstat(path)
			for _, create := range []bool{true, false} {
				d, err := OpenIn(parent, "dmfs", c.private, create)
				if d != nil {
					d.Close()
				}
				require.Error(t, err)
				assert.ErrorIs(t, err, ErrUnsafe)
				for _, s := range c.want {
					assert.Contains(t, err.Error(), s)
				}
			}
			after, _ := os.Lstat(path)
			if before != nil {
				require.NotNil(t, after)
				assert.Equal(t, before.Mode(), after.Mode(), "what was found is left as it was")
			}
		})
	}
}

func TestOpenInAcceptsAStickySharedParent(t *testing.T) {
	parent := t.TempDir()
	require.NoError(t, os.Chmod(parent, 0o777|os.ModeSticky))
	d, err := OpenIn(parent, "dmfs-1", false, true)
	require.NoError(t, err)
	d.Close()
}

func TestDefaultPath(t *testing.T) {
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	env["XDG_RUNTIME_DIR"] = "/run/user/1000/"
	dir, parent, private, err := DefaultPath(getenv)
	require.NoError(t, err)
	assert.Equal(t, "/run/user/1000/dmfs", dir)
	assert.Equal(t, "/run/user/1000", parent)
	assert.True(t, private)

	env["XDG_RUNTIME_DIR"] = "relative"
	_, _, _, err = DefaultPath(getenv)
	assert.ErrorContains(t, err, "not an absolute path")

	delete(env, "XDG_RUNTIME_DIR")
	dir, _, private, err = DefaultPath(getenv)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(os.TempDir(), "dmfs-"+strconv.Itoa(os.Geteuid())), dir)
	assert.False(t, private)
}

func openTemp(t *testing.T) *Dir {
	t.Helper()
	d, err := OpenIn(t.TempDir(), "dmfs", true, true)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	return d
}

// victim is a file outside the state folder that a planted symlink points
// at; it must come out unchanged.
func victim(t *testing.T) (string, func(t *testing.T)) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "notes.txt")
	require.NoError(t, os.WriteFile(p, []byte("precious\n"), 0o644))
	return p, func(t *testing.T) {
		t.Helper()
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		assert.Equal(t, "precious\n", string(b), "the symlink's target is unchanged")
		fi, err := os.Stat(p)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o644), fi.Mode().Perm())
	}
}

func TestPlantedSymlinksAreNotFollowed(t *testing.T) {
	ops := []struct {
		name    string
		op      func(d *Dir, name string) error
		refused bool // else the symlink itself is replaced
	}{
		{"WriteRecord", func(d *Dir, name string) error { return d.WriteRecord(name, []byte("123\n")) }, false},
		{"ReadRecord", func(d *Dir, name string) error { _, err := d.ReadRecord(name); return err }, true},
		{"OpenAppend", func(d *Dir, name string) error {
			f, err := d.OpenAppend(name)
			if err == nil {
				f.WriteString("log line\n")
				f.Close()
			}
			return err
		}, true},
		{"TryLock", func(d *Dir, name string) error {
			l, err := d.TryLock(name)
			if err == nil {
				l.Close()
			}
			return err
		}, true},
		{"Remove", func(d *Dir, name string) error { return d.Remove(name) }, false},
	}
	for _, o := range ops {
		t.Run(o.name, func(t *testing.T) {
			d := openTemp(t)
			target, unchanged := victim(t)
			require.NoError(t, os.Symlink(target, d.File("x.pid")))
			err := o.op(d, "x.pid")
			if o.refused {
				require.Error(t, err)
				assert.ErrorIs(t, err, ErrUnsafe)
				assert.Contains(t, err.Error(), "symbolic link")
				assert.Contains(t, err.Error(), d.File("x.pid"))
			} else {
				require.NoError(t, err)
				fi, err := os.Lstat(d.File("x.pid"))
				if err == nil {
					assert.Zero(t, fi.Mode()&os.ModeSymlink, "the symlink itself was replaced")
				}
			}
			unchanged(t)
		})
	}
}

func TestOpenLogDoesNotFollowASymlink(t *testing.T) {
	target, unchanged := victim(t)
	link := filepath.Join(t.TempDir(), "dmfs.log")
	require.NoError(t, os.Symlink(target, link))
	_, err := OpenLog(link)
	assert.ErrorIs(t, err, ErrUnsafe)
	assert.ErrorContains(t, err, "symbolic link")
	unchanged(t)

	plain := filepath.Join(t.TempDir(), "dmfs.log")
	f, err := OpenLog(plain)
	require.NoError(t, err)
	_, err = f.WriteString("one\n")
	require.NoError(t, err)
	f.Close()
	f, err = OpenLog(plain)
	require.NoError(t, err)
	f.WriteString("two\n")
	f.Close()
	b, err := os.ReadFile(plain)
	require.NoError(t, err)
	assert.Equal(t, "one\ntwo\n", string(b), "appended, not truncated")
	fi, err := os.Stat(plain)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
}

func TestOpenLogRefusesAFileOfAnotherUser(t *testing.T) {
	requireRoot(t)
	p := filepath.Join(t.TempDir(), "dmfs.log")
	require.NoError(t, os.WriteFile(p, []byte("theirs\n"), 0o666))
	require.NoError(t, os.Chown(p, nobody, nobody))
	_, err := OpenLog(p)
	assert.ErrorIs(t, err, ErrUnsafe)
	assert.ErrorContains(t, err, "owner uid 65534")
}

func TestRecordsRoundTripPrivately(t *testing.T) {
	d := openTemp(t)
	require.NoError(t, d.WriteRecord("a.session", []byte(`{"id":"1"}`)))
	require.NoError(t, d.WriteRecord("a.session", []byte(`{"id":"2"}`)))
	b, err := d.ReadRecord("a.session")
	require.NoError(t, err)
	assert.Equal(t, `{"id":"2"}`, string(b))
	fi, err := os.Lstat(d.File("a.session"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode())
	names, err := os.ReadDir(d.Path())
	require.NoError(t, err)
	assert.Len(t, names, 1, "no temporary file left behind")

	_, err = d.ReadRecord("missing")
	assert.ErrorIs(t, err, os.ErrNotExist)
	require.NoError(t, d.Remove("a.session"))
	_, err = d.ReadRecord("a.session")
	assert.ErrorIs(t, err, os.ErrNotExist)

	_, err = d.ReadRecord("../escape")
	assert.ErrorContains(t, err, "not a plain name")
}

func TestReadRecordRefusesWhatDmfsDidNotWrite(t *testing.T) {
	cases := []struct {
		name  string
		root  bool
		plant func(t *testing.T, path string)
		want  string
	}{
		{"readable by others", false, func(t *testing.T, p string) {
			require.NoError(t, os.WriteFile(p, []byte("{}"), 0o644))
		}, "open to group or others"},
		{"owned by another user", true, func(t *testing.T, p string) {
			require.NoError(t, os.WriteFile(p, []byte("{}"), 0o600))
			require.NoError(t, os.Chown(p, nobody, nobody))
		}, "owner uid 65534"},
		{"too large", false, func(t *testing.T, p string) {
			require.NoError(t, os.WriteFile(p, make([]byte, MaxRecord+1), 0o600))
		}, "more than a dmfs record"},
		{"a FIFO", false, func(t *testing.T, p string) {
			require.NoError(t, syscall.Mkfifo(p, 0o600))
		}, "not a regular file"},
		{"a directory", false, func(t *testing.T, p string) {
			require.NoError(t, os.Mkdir(p, 0o700))
		}, "not a regular file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.root {
				requireRoot(t)
			}
			d := openTemp(t)
			c.plant(t, d.File("r"))
			_, err := d.ReadRecord("r")
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrUnsafe)
			assert.Contains(t, err.Error(), c.want)
		})
	}
}

func TestTryLockHasExactlyOneWinner(t *testing.T) {
	d := openTemp(t)
	const n = 16
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		winners []*Lock
		losers  []error
	)
	start := make(chan struct{})
	for range n {
		wg.Go(func() {
			<-start
			l, err := d.TryLock("m.lock")
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				winners = append(winners, l)
			} else {
				losers = append(losers, err)
			}
		})
	}
	close(start)
	wg.Wait()
	require.Len(t, winners, 1)
	require.Len(t, losers, n-1)
	for _, err := range losers {
		var held *LockedError
		require.True(t, errors.As(err, &held), "%v", err)
		assert.ErrorIs(t, err, ErrLocked)
		// 0 when it looked before the winner wrote its pid.
		assert.Contains(t, []int{0, os.Getpid()}, held.PID)
	}

	_, err := d.TryLock("m.lock")
	var held *LockedError
	require.True(t, errors.As(err, &held), "held until closed: %v", err)
	assert.Equal(t, os.Getpid(), held.PID, "the holder's pid is in the lock file")
	assert.ErrorContains(t, err, fmt.Sprintf("held by pid %d", os.Getpid()))
	require.NoError(t, winners[0].Close())
	l, err := d.TryLock("m.lock")
	require.NoError(t, err, "free once the holder closed it")
	l.Close()
}
