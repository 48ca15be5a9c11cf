package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/cache"
	"github.com/oceanum-dmfs/dmfs/fs"
	"github.com/oceanum-dmfs/dmfs/internal/statedir"
	"github.com/oceanum-dmfs/dmfs/mountstat"
	"github.com/oceanum-dmfs/dmfs/session"
)

var quietLog = slog.New(slog.DiscardHandler)

func TestMetricsFlagsAreValidated(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--metrics-addr", "0.0.0.0:9100"}, "not a loopback address"},
		{[]string{"--metrics-addr", ":9100"}, "--metrics-allow-remote"},
		{[]string{"--metrics-addr", "127.0.0.1"}, "HOST:PORT"},
		{[]string{"--metrics-addr", "127.0.0.1:99999"}, "port must be a number"},
		{[]string{"--metrics-allow-remote"}, "needs --metrics-addr"},
	}
	for _, c := range cases {
		code, _, stderr := runArgs(t, nil, append(append([]string{"mount"}, c.args...), t.TempDir())...)
		assert.Equal(t, exitUsage, code, "%v", c.args)
		assert.Contains(t, stderr, c.want, "%v", c.args)
	}
	code, stdout, _ := runArgs(t, nil, "mount", "--help")
	assert.Equal(t, exitOK, code)
	assert.Contains(t, stdout, "--metrics-addr")
	assert.Contains(t, stdout, "no authentication")
}

func TestStatusCommandLine(t *testing.T) {
	// A state folder of its own: no mount of the machine is this test's.
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	code, stdout, _ := runArgs(t, nil, "status")
	assert.Equal(t, exitOK, code)
	assert.Equal(t, "no dmfs mounts\n", stdout)

	code, stdout, _ = runArgs(t, nil, "status", "--json")
	assert.Equal(t, exitOK, code)
	var doc mountstat.Status
	require.NoError(t, json.Unmarshal([]byte(stdout), &doc))
	assert.Equal(t, mountstat.Status{Version: 1, Mounts: []mountstat.Mount{}}, doc)

	code, _, stderr := runArgs(t, nil, "status", t.TempDir())
	assert.Equal(t, exitNotMounted, code)
	assert.Contains(t, stderr, "is not a dmfs mount")

	code, _, stderr = runArgs(t, nil, "status", "a", "b")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "at most one MOUNTPOINT")

	code, stdout, _ = runArgs(t, nil, "status", "--help")
	assert.Equal(t, exitOK, code)
	assert.Contains(t, stdout, "--json")
}

func TestStatusRefusesAnUnsafeStateFolder(t *testing.T) {
	x := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(x, "dmfs"), 0o755))
	t.Setenv("XDG_RUNTIME_DIR", x)
	code, _, stderr := runArgs(t, nil, "status")
	assert.Equal(t, exitFailure, code)
	assert.Contains(t, stderr, "open to group or others")
}

func newStateDir(t *testing.T) *statedir.Dir {
	t.Helper()
	d, err := statedir.OpenIn(t.TempDir(), "dmfs", true, true)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	return d
}

// deadPID is the pid of a process that has exited.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	require.NoError(t, cmd.Run())
	return cmd.Process.Pid
}

func TestInspectMount(t *testing.T) {
	end := time.Now().Add(time.Hour).Truncate(time.Second)
	t.Run("running", func(t *testing.T) {
		dir := newStateDir(t)
		mp := "/mnt/running"
		l, err := dir.ListenUnix(statusSocketName(mp))
		require.NoError(t, err)
		srv := mountstat.Serve(l, func() mountstat.Snapshot {
			return mountstat.Snapshot{Mountpoint: mp, PID: 12, Session: mountstat.Session{ID: "s1", EndTime: end},
				Cache: &mountstat.Cache{Bytes: 7}}
		}, quietLog)
		defer srv.Close()
		m, ours := inspectMount(context.Background(), dir, mp)
		assert.True(t, ours)
		assert.Equal(t, mountstat.StateRunning, m.State)
		assert.Equal(t, "s1", m.Session.ID)
		assert.Equal(t, int64(7), m.Cache.Bytes)
	})
	t.Run("dead", func(t *testing.T) {
		dir := newStateDir(t)
		mp := "/mnt/dead"
		pid := deadPID(t)
		require.NoError(t, dir.WriteRecord(pidFileName(mp), []byte(fmt.Sprint(pid)+"\n")))
		require.NoError(t, writeSessionRecord(dir, mp, sessionRecord{Gateway: "http://g", ID: "s2", EndTime: end, PID: pid}))
		// The socket it left: nobody listens.
		l, err := dir.ListenUnix(statusSocketName(mp))
		require.NoError(t, err)
		l.Close()
		logf, err := dir.OpenAppend(stateName(mp, ".log"))
		require.NoError(t, err)
		logf.Close()
		m, ours := inspectMount(context.Background(), dir, mp)
		assert.True(t, ours)
		assert.Equal(t, mountstat.StateDead, m.State)
		assert.Contains(t, m.Problem, "dmfs unmount /mnt/dead")
		assert.Equal(t, pid, m.PID)
		assert.Equal(t, "http://g", m.Gateway)
		assert.Equal(t, mountstat.Session{ID: "s2", EndTime: end}, mountstat.Session{ID: m.Session.ID, EndTime: m.Session.EndTime.Local()})
		assert.Equal(t, dir.File(stateName(mp, ".log")), m.Log)
		assert.Nil(t, m.Cache)
	})
	t.Run("alive but not answering", func(t *testing.T) {
		dir := newStateDir(t)
		mp := "/mnt/stuck"
		require.NoError(t, writePidFile(dir, mp)) // this process: alive
		l, err := dir.ListenUnix(statusSocketName(mp))
		require.NoError(t, err)
		l.Close()
		m, ours := inspectMount(context.Background(), dir, mp)
		assert.True(t, ours)
		assert.Equal(t, mountstat.StateUnreachable, m.State)
		assert.Contains(t, m.Problem, "no answer")
	})
	t.Run("another user's", func(t *testing.T) {
		_, ours := inspectMount(context.Background(), newStateDir(t), "/mnt/theirs")
		assert.False(t, ours)
		_, ours = inspectMount(context.Background(), nil, "/mnt/theirs")
		assert.False(t, ours)
	})
}

// TestSnapshotReadsTheMountsParts checks the one function both the status
// socket and the metrics serve.
func TestSnapshotReadsTheMountsParts(t *testing.T) {
	client, err := session.New(session.Config{Token: "t", Service: "http://127.0.0.1:1"})
	require.NoError(t, err)
	chunks := cache.New(cache.Options{MaxBytes: 1 << 20})
	defer chunks.Close()
	chunks.Put("ds/a/0", []byte("12345"))
	root := fs.NewRoot(fs.Options{Cache: chunks, Write: &fs.WriteOptions{SpoolDir: t.TempDir(), SpoolSize: 1 << 20}})

	st, err := startStatus(&statusOptions{MetricsAddr: "127.0.0.1:0"}, newStateDir(t), "/mnt/x", quietLog)
	require.NoError(t, err)
	defer st.close()
	st.observe("get", "ds/a/0")(200, nil)
	st.observe("get", "ds/.zmetadata")(500, nil)
	parts := statusParts{client: client, cache: chunks, root: root, service: "https://svc", gateway: "https://gw",
		write: true, logPath: "/log"}
	s := st.snapshot(parts)
	assert.Equal(t, "/mnt/x", s.Mountpoint)
	assert.Equal(t, os.Getpid(), s.PID)
	assert.Equal(t, "https://svc", s.Service)
	assert.Equal(t, "https://gw", s.Gateway)
	assert.True(t, s.Write)
	assert.Equal(t, "/log", s.Log)
	assert.Regexp(t, `^http://127\.0\.0\.1:\d+/metrics$`, s.Metrics)
	assert.Equal(t, int64(5), s.Cache.Bytes)
	assert.Equal(t, int64(1), s.Cache.Entries)
	assert.Equal(t, int64(1<<20), s.Cache.MaxBytes)
	assert.Equal(t, mountstat.Requests{Total: 1}, s.Requests["chunk"])
	assert.Equal(t, mountstat.Requests{Total: 1, Errors: 1}, s.Requests["metadata"])
	require.NotNil(t, s.Uploads)
	assert.Equal(t, int64(1<<20), s.Uploads.SpoolMaxBytes)

	// Served: the socket gives the same figures.
	st.serve(parts)
	m, ours := inspectMount(context.Background(), st.dir, "/mnt/x")
	require.True(t, ours)
	assert.Equal(t, mountstat.StateRunning, m.State)
	assert.Equal(t, s.Requests, m.Requests)
	assert.Equal(t, *s.Cache, *m.Cache)
}

func TestMetricsAddressInUseFailsTheStart(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	_, err = startStatus(&statusOptions{MetricsAddr: l.Addr().String()}, newStateDir(t), "/mnt/x", quietLog)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "--metrics-addr")
	assert.Contains(t, err.Error(), "address already in use")
}
