package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/session"
)

// helperEnv makes the test binary, started by startDaemon, act as the
// background mount in TestDaemonHelper.
const helperEnv = "DMFS_TEST_DAEMON_HELPER"

// daemonReport is what the helper saw of itself.
type daemonReport struct {
	Token   string
	Environ string // /proc/self/environ: what the kernel shows other processes of ours
	Cmdline string
	Err     string
}

// TestDaemonGetsTheTokenOnlyThroughAPipe starts a child the way the
// background mount starts, with DATAMESH_TOKEN set here: the child gets the
// token, and neither its /proc environ nor its command line holds it.
func TestDaemonGetsTheTokenOnlyThroughAPipe(t *testing.T) {
	const secret = "daemon-secret-token-7f3a"
	t.Setenv(session.EnvToken, secret)
	t.Setenv(helperEnv, "1")
	logf, err := os.Create(filepath.Join(t.TempDir(), "log"))
	require.NoError(t, err)
	defer logf.Close()
	cmd, ready, err := startDaemon(os.Args[0], []string{"-test.run=^TestDaemonHelper$"}, secret, logf)
	require.NoError(t, err)
	defer ready.Close()
	var got daemonReport
	require.NoError(t, json.NewDecoder(ready).Decode(&got))
	require.NoError(t, cmd.Wait())
	require.Empty(t, got.Err)

	assert.Equal(t, secret, got.Token, "the token arrives through the pipe")
	assert.Contains(t, got.Environ, helperEnv+"=1", "the rest of the environment is inherited")
	assert.Contains(t, got.Environ, readyFDEnv+"=3")
	assert.NotContains(t, got.Environ, secret)
	assert.NotContains(t, got.Environ, session.EnvToken+"=")
	assert.Contains(t, got.Cmdline, "-test.run")
	assert.NotContains(t, got.Cmdline, secret)
}

// TestDaemonHelper is the child of TestDaemonGetsTheTokenOnlyThroughAPipe;
// run on its own it does nothing.
func TestDaemonHelper(t *testing.T) {
	if os.Getenv(helperEnv) != "1" || os.Getenv(readyFDEnv) != "3" {
		return
	}
	var r daemonReport
	environ, err1 := os.ReadFile("/proc/self/environ") // before anything could change it
	cmdline, err2 := os.ReadFile("/proc/self/cmdline")
	r.Environ = strings.ReplaceAll(string(environ), "\x00", "\n")
	r.Cmdline = strings.ReplaceAll(string(cmdline), "\x00", " ")
	tok, err3 := readTokenFD(os.Getenv(tokenFDEnv))
	r.Token = tok
	for _, err := range []error{err1, err2, err3} {
		if err != nil {
			r.Err += err.Error() + "; "
		}
	}
	ready := os.NewFile(3, "ready")
	defer ready.Close()
	require.NoError(t, json.NewEncoder(ready).Encode(r))
}

func TestDaemonEnvDropsTheToken(t *testing.T) {
	in := []string{"HOME=/root", "DATAMESH_TOKEN=abc", "DATAMESH_TOKEN_FILE=/t", "DATAMESH_TOKENX=1",
		"DMFS_READY_FD=9", "DMFS_TOKEN_FD=8", "DATAMESH_SERVICE=http://s", "PATH=/bin", "NOTIFY_SOCKET=/run/systemd/notify"}
	assert.Equal(t, []string{"HOME=/root", "DATAMESH_TOKEN_FILE=/t", "DATAMESH_TOKENX=1",
		"DATAMESH_SERVICE=http://s", "PATH=/bin"}, daemonEnv(in))
}

func TestReadTokenTakesItOutOfTheEnvironment(t *testing.T) {
	file := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(file, []byte("from-file\n"), 0o600))
	cases := []struct {
		name, env, file, want string
	}{
		{"from DATAMESH_TOKEN", " from-env ", "", "from-env"},
		{"the token file wins", "from-env", file, "from-file"},
		{"none", "", "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(session.EnvToken, c.env)
			tok, err := readToken(c.file)
			require.NoError(t, err)
			assert.Equal(t, c.want, tok)
			_, set := os.LookupEnv(session.EnvToken)
			assert.False(t, set, "DATAMESH_TOKEN is gone from the environment")
		})
	}
}
