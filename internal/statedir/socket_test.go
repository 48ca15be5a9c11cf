package statedir

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// echoOnce answers one connection on l with "hi".
func echoOnce(l net.Listener) {
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		io.WriteString(c, "hi")
		c.Close()
	}()
}

func dialRead(t *testing.T, d *Dir, name string) (string, error) {
	t.Helper()
	c, err := d.DialUnix(context.Background(), name)
	if err != nil {
		return "", err
	}
	defer c.Close()
	b, err := io.ReadAll(c)
	return string(b), err
}

func TestSocketIsPrivateAndReplacesAStaleOne(t *testing.T) {
	// A deep folder: the socket's own path is longer than a unix socket
	// address can be; the descriptor's path is not.
	parent := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60))
	require.NoError(t, os.MkdirAll(parent, 0o700))
	d, err := OpenIn(parent, "dmfs", true, true)
	require.NoError(t, err)
	defer d.Close()
	name := strings.Repeat("m", 40) + "-0123abcd.sock"
	require.Greater(t, len(d.File(name)), 108)

	// A socket left by a killed process is replaced.
	stale, err := d.ListenUnix(name)
	require.NoError(t, err)
	stale.Close()
	_, err = dialRead(t, d, name)
	assert.ErrorIs(t, err, syscall.ECONNREFUSED, "nobody listens on a stale socket")
	assert.NotContains(t, err.Error(), "/proc/self/fd", "errors name the state folder's path")

	l, err := d.ListenUnix(name)
	require.NoError(t, err)
	fi, err := os.Lstat(d.File(name))
	require.NoError(t, err)
	assert.Equal(t, os.ModeSocket|0o600, fi.Mode()&(os.ModeType|os.ModePerm))
	echoOnce(l)
	got, err := dialRead(t, d, name)
	require.NoError(t, err)
	assert.Equal(t, "hi", got)

	l.Close()
	require.NoError(t, d.RemoveSocket(name))
	_, err = os.Lstat(d.File(name))
	assert.ErrorIs(t, err, os.ErrNotExist)
	_, err = d.DialUnix(context.Background(), name)
	assert.ErrorIs(t, err, os.ErrNotExist)
}

func TestDialUnixRefusesWhatIsNotAPrivateSocket(t *testing.T) {
	cases := []struct {
		name  string
		plant func(t *testing.T, d *Dir, path string)
		want  string
	}{
		{"a regular file", func(t *testing.T, _ *Dir, path string) {
			require.NoError(t, os.WriteFile(path, nil, 0o600))
		}, "is not a unix socket"},
		{"a symlink to a socket", func(t *testing.T, d *Dir, path string) {
			l, err := d.ListenUnix("real.sock")
			require.NoError(t, err)
			t.Cleanup(func() { l.Close() })
			require.NoError(t, os.Symlink(d.File("real.sock"), path))
		}, "is not a unix socket"},
		{"a socket open to others", func(t *testing.T, d *Dir, path string) {
			l, err := d.ListenUnix(filepath.Base(path))
			require.NoError(t, err)
			t.Cleanup(func() { l.Close() })
			require.NoError(t, os.Chmod(path, 0o666))
		}, "is open to group or others"},
		{"a socket of another user", func(t *testing.T, d *Dir, path string) {
			requireRoot(t)
			l, err := d.ListenUnix(filepath.Base(path))
			require.NoError(t, err)
			t.Cleanup(func() { l.Close() })
			require.NoError(t, os.Lchown(path, nobody, nobody))
		}, "is not owned by you"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := OpenIn(t.TempDir(), "dmfs", true, true)
			require.NoError(t, err)
			defer d.Close()
			c.plant(t, d, d.File("s.sock"))
			_, err = d.DialUnix(context.Background(), "s.sock")
			require.ErrorIs(t, err, ErrUnsafe)
			assert.Contains(t, err.Error(), c.want)
		})
	}
}

func TestRemoveSocketRemovesOnlyASocket(t *testing.T) {
	d, err := OpenIn(t.TempDir(), "dmfs", true, true)
	require.NoError(t, err)
	defer d.Close()
	require.NoError(t, os.WriteFile(d.File("x.sock"), []byte("data"), 0o600))
	assert.ErrorIs(t, d.RemoveSocket("x.sock"), ErrUnsafe)
	_, err = os.Stat(d.File("x.sock"))
	assert.NoError(t, err, "a file under a socket's name is left alone")

	for _, bad := range []string{"", ".", "..", "a/b"} {
		_, err := d.ListenUnix(bad)
		assert.Error(t, err, "%q", bad)
		_, err = d.DialUnix(context.Background(), bad)
		assert.Error(t, err, "%q", bad)
	}
}
