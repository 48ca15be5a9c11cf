package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func setLockWait(t *testing.T, d time.Duration) {
	t.Helper()
	old := mountLockWait
	mountLockWait = d
	t.Cleanup(func() { mountLockWait = old })
}

func TestMountLockHasExactlyOneWinner(t *testing.T) {
	setLockWait(t, 0)
	dir := openStateDir(t)
	mp := t.TempDir()
	alias := filepath.Join(t.TempDir(), "alias")
	require.NoError(t, os.Symlink(mp, alias))
	const n = 12
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		winners int
		losers  []error
	)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			path := mp
			if i%2 == 1 {
				path = alias // another name of the same folder shares the lock
			}
			lock, err := lockMountpoint(context.Background(), dir, path, nil)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				losers = append(losers, err)
				return
			}
			winners++
			t.Cleanup(func() { lock.Close() })
		})
	}
	close(start)
	wg.Wait()
	assert.Equal(t, 1, winners)
	require.Len(t, losers, n-1)
	for _, err := range losers {
		assert.ErrorIs(t, err, errMountPoint)
		assert.ErrorContains(t, err, "already being mounted")
	}
	_, err := lockMountpoint(context.Background(), dir, mp, nil)
	assert.ErrorContains(t, err, fmt.Sprintf("already being mounted (or unmounted) by dmfs pid %d", os.Getpid()),
		"the holder is named once it has written its pid")
}

func TestMountLockWaitsForAHolderThatLetsGo(t *testing.T) {
	setLockWait(t, time.Minute)
	dir := openStateDir(t)
	mp := t.TempDir()
	holder, err := lockMountpoint(context.Background(), dir, mp, nil)
	require.NoError(t, err)
	busy := 0
	lock, err := lockMountpoint(context.Background(), dir, mp, func() {
		busy++
		if busy == 1 {
			holder.Close() // the other mount ends (closed its session, exited)
		}
	})
	require.NoError(t, err)
	lock.Close()
	assert.Equal(t, 1, busy, "refused once while held, then taken")
}

func TestMountLockOnAMountedPathFailsAtOnce(t *testing.T) {
	setLockWait(t, time.Minute)
	dir := openStateDir(t)
	const mounted = "/proc" // a mount point in every Linux mount table
	holder, err := lockMountpoint(context.Background(), dir, mounted, nil)
	require.NoError(t, err)
	defer holder.Close()
	_, err = lockMountpoint(context.Background(), dir, mounted, func() { t.Error("waited for a path that is mounted") })
	assert.ErrorIs(t, err, errMountPoint)
	assert.ErrorContains(t, err, "already a mount point")
	assert.ErrorContains(t, err, fmt.Sprintf("held by dmfs pid %d", os.Getpid()))
}

func TestMountLockWaitEndsWithTheContext(t *testing.T) {
	setLockWait(t, time.Minute)
	dir := openStateDir(t)
	mp := t.TempDir()
	holder, err := lockMountpoint(context.Background(), dir, mp, nil)
	require.NoError(t, err)
	defer holder.Close()
	ctx, cancel := context.WithCancel(context.Background())
	_, err = lockMountpoint(ctx, dir, mp, cancel)
	assert.ErrorIs(t, err, context.Canceled)
}

// TestMountThatLosesTheLockAcquiresNoSession runs `dmfs mount --foreground`
// on a mount point whose lock another mount holds: it exits 5 before it
// speaks to the gateway.
func TestMountThatLosesTheLockAcquiresNoSession(t *testing.T) {
	setLockWait(t, 0)
	g := newFakeGateway(t)
	dir := openStateDir(t)
	mp := t.TempDir()
	holder, err := lockMountpoint(context.Background(), dir, mp, nil)
	require.NoError(t, err)
	defer holder.Close()
	code, _, stderr := runArgs(t, map[string]string{"DATAMESH_TOKEN": testToken},
		"mount", "--foreground", "--service", g.URL, mp)
	assert.Equal(t, exitMountPoint, code, stderr)
	assert.Contains(t, stderr, "already being mounted")
	assert.Contains(t, stderr, fmt.Sprintf("dmfs pid %d", os.Getpid()))
	assert.Empty(t, g.requests(), "no session acquired")
}

func TestMountRefusesAnUnsafeStateFolder(t *testing.T) {
	cases := []struct {
		name  string
		plant func(t *testing.T, path string)
		want  []string
	}{
		{"a symlink", func(t *testing.T, p string) { require.NoError(t, os.Symlink(t.TempDir(), p)) },
			[]string{"is a symbolic link", "remove it", "XDG_RUNTIME_DIR"}},
		{"group-writable", func(t *testing.T, p string) {
			require.NoError(t, os.Mkdir(p, 0o700))
			require.NoError(t, os.Chmod(p, 0o770))
		}, []string{"open to group or others", "drwxrwx---"}},
		{"a file", func(t *testing.T, p string) { require.NoError(t, os.WriteFile(p, nil, 0o600)) },
			[]string{"is not a directory"}},
	}
	for _, c := range cases {
		for _, mode := range []string{"background", "foreground"} {
			t.Run(c.name+"/"+mode, func(t *testing.T) {
				g := newFakeGateway(t)
				runtime := t.TempDir()
				t.Setenv("XDG_RUNTIME_DIR", runtime)
				state := filepath.Join(runtime, "dmfs")
				c.plant(t, state)
				args := []string{"mount", "--service", g.URL}
				if mode == "foreground" {
					args = append(args, "--foreground")
				}
				code, _, stderr := runArgs(t, map[string]string{"DATAMESH_TOKEN": testToken}, append(args, t.TempDir())...)
				assert.Equal(t, exitFailure, code, stderr)
				assert.Contains(t, stderr, state)
				for _, s := range c.want {
					assert.Contains(t, stderr, s)
				}
				assert.Empty(t, g.requests(), "no session acquired")
			})
		}
	}
}

func TestMountRefusesALogFileThatIsASymlink(t *testing.T) {
	dir := openStateDir(t)
	mp := t.TempDir()
	target := filepath.Join(t.TempDir(), "notes.txt")
	require.NoError(t, os.WriteFile(target, []byte("precious\n"), 0o600))
	require.NoError(t, os.Symlink(target, dir.File(stateName(mp, ".log"))))
	userLog := filepath.Join(t.TempDir(), "user.log")
	require.NoError(t, os.Symlink(target, userLog))
	for _, args := range [][]string{
		{"mount", "--service", "http://127.0.0.1:9", mp},                                        // the default log of a background mount
		{"mount", "--service", "http://127.0.0.1:9", "--log-file", userLog, mp},                 // --log-file
		{"mount", "--foreground", "--service", "http://127.0.0.1:9", "--log-file", userLog, mp}, // --log-file, foreground
	} {
		code, _, stderr := runArgs(t, map[string]string{"DATAMESH_TOKEN": testToken}, args...)
		assert.NotEqual(t, exitOK, code, "%v", args)
		assert.Contains(t, stderr, "symbolic link", "%v", args)
	}
	b, err := os.ReadFile(target)
	require.NoError(t, err)
	assert.Equal(t, "precious\n", string(b))
}
