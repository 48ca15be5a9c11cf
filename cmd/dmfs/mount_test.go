package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/flow"
	"github.com/oceanum-dmfs/dmfs/internal/mountinfo"
	"github.com/oceanum-dmfs/dmfs/internal/statedir"
)

func runArgs(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestRunDispatch(t *testing.T) {
	cases := []struct {
		args []string
		code int
		out  string
	}{
		{nil, exitUsage, "Usage:"},
		{[]string{"frobnicate"}, exitUsage, "unknown command"},
		{[]string{"version"}, exitOK, "dmfs "},
		{[]string{"help"}, exitOK, "dmfs mount"},
		{[]string{"mount"}, exitUsage, "exactly one MOUNTPOINT"},
		{[]string{"mount", "a", "b"}, exitUsage, "exactly one MOUNTPOINT"},
		{[]string{"mount", "--no-such-flag", "x"}, exitUsage, "unknown flag"},
		{[]string{"unmount"}, exitUsage, "exactly one MOUNTPOINT"},
		{[]string{"mount", "--max-connections", "0", "x"}, exitUsage, "--max-connections must be from 1"},
		{[]string{"mount", "--max-connections", "5000", "x"}, exitUsage, "--max-connections must be from 1"},
		{[]string{"mount", "--readahead", "-5", "x"}, exitUsage, "--readahead must not be negative"},
	}
	for _, c := range cases {
		code, stdout, stderr := runArgs(t, nil, c.args...)
		assert.Equal(t, c.code, code, "%v", c.args)
		assert.Contains(t, stdout+stderr, c.out, "%v", c.args)
	}
}

func TestMountHelpDocumentsEveryFlag(t *testing.T) {
	code, stdout, _ := runArgs(t, nil, "mount", "--help")
	assert.Equal(t, exitOK, code)
	for _, flag := range []string{"--token-file", "--service", "--gateway", "--session-duration", "--datasource",
		"--cache-size", "--readahead", "--max-connections", "--metadata-ttl", "--allow-other", "--allow-root", "--uid", "--gid",
		"--file-mode", "--dir-mode", "--options", "--log-level", "--log-format", "--log-file",
		"--fuse-debug", "--foreground", "DATAMESH_SERVICE", "DATAMESH_GATEWAY", "DATAMESH_TOKEN", "(default 1GiB)",
		"SIGHUP", "mount.fuse.dmfs", "NOTIFY_SOCKET"} {
		assert.Contains(t, stdout, flag)
	}
}

func TestUnmountHelpDocumentsEveryFlag(t *testing.T) {
	code, stdout, _ := runArgs(t, nil, "unmount", "--help")
	assert.Equal(t, exitOK, code)
	for _, flag := range []string{"--lazy", "--service", "--gateway", "--token-file",
		"DATAMESH_SERVICE", "DATAMESH_GATEWAY", "DATAMESH_TOKEN_FILE"} {
		assert.Contains(t, stdout, flag)
	}
}

func TestMountWithoutTokenSaysWhereOneGoes(t *testing.T) {
	mp := t.TempDir()
	code, _, stderr := runArgs(t, map[string]string{"DATAMESH_TOKEN": "", "DATAMESH_TOKEN_FILE": ""},
		"mount", "--foreground", "--service", "http://127.0.0.1:9", mp)
	assert.Equal(t, exitAuth, code)
	for _, s := range []string{"DATAMESH_TOKEN", "--token-file", "dmfs serve --demo"} {
		assert.Contains(t, stderr, s)
	}
}

func TestCheckMountpoint(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	full := filepath.Join(dir, "full")
	require.NoError(t, os.Mkdir(full, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(full, "x"), nil, 0o644))
	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.Mkdir(empty, 0o755))

	cases := []struct {
		path, err string
	}{
		{filepath.Join(dir, "missing"), "does not exist"},
		{file, "not a directory"},
		{full, "not empty"},
		{"/proc", "already a mount point"},
		{empty, ""},
	}
	for _, c := range cases {
		abs, err := checkMountpoint(c.path)
		if c.err == "" {
			require.NoError(t, err)
			assert.Equal(t, empty, abs)
			continue
		}
		require.Error(t, err, c.path)
		assert.ErrorIs(t, err, errMountPoint)
		assert.Contains(t, err.Error(), c.err)
	}
}

func TestIsDmfsMount(t *testing.T) {
	assert.True(t, isDmfsMount(mountinfo.Entry{FSType: "fuse.dmfs", Source: "dmfs"}))
	assert.True(t, isDmfsMount(mountinfo.Entry{FSType: "fuse", Source: "dmfs"}))
	assert.False(t, isDmfsMount(mountinfo.Entry{FSType: "fuse.rclone", Source: "remote:"}))
	assert.False(t, isDmfsMount(mountinfo.Entry{FSType: "proc", Source: "proc"}))
}

func TestByteSizeFlag(t *testing.T) {
	var b byteSize
	require.NoError(t, b.Set("512MiB"))
	assert.Equal(t, byteSize(512<<20), b)
	assert.Equal(t, "512MiB", b.String())
	assert.Error(t, b.Set("lots"))
}

func TestStateFilesAreDistinctPerMountpoint(t *testing.T) {
	dir := openStateDir(t)
	a, b := stateName("/a/b", ".pid"), stateName("/a_b", ".pid")
	assert.NotEqual(t, a, b)
	require.NoError(t, writePidFile(dir, "/a/b"))
	pid, err := readPidFile(dir, "/a/b")
	require.NoError(t, err)
	assert.Equal(t, os.Getpid(), pid)
	_, err = readPidFile(dir, "/a_b")
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// openStateDir points XDG_RUNTIME_DIR at a fresh folder and opens the state
// folder in it, as dmfs does.
func openStateDir(t *testing.T) *statedir.Dir {
	t.Helper()
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	dir, err := statedir.Open(true)
	require.NoError(t, err)
	t.Cleanup(func() { dir.Close() })
	return dir
}

func TestChildFlagsReparseToTheSameOptions(t *testing.T) {
	args := []string{"/mnt/x", "--cache-size", "2GiB", "--datasource", "a_b", "--datasource=c-d",
		"--readahead", "8", "--allow-other", "--session-duration", "90m", "--log-file", "/tmp/l"}
	parse := func(args []string) (mountOptions, []string) {
		var o mountOptions
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		o.AddFlags(fs, func(string) string { return "" })
		require.NoError(t, fs.Parse(args))
		return o, fs.Args()
	}
	want, pos := parse(args)
	assert.Equal(t, []string{"/mnt/x"}, pos)
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	var o mountOptions
	o.AddFlags(fs, func(string) string { return "" })
	require.NoError(t, fs.Parse(args))
	got, pos := parse(append(childFlags(fs), "--", "/mnt/x"))
	assert.Equal(t, []string{"/mnt/x"}, pos)
	assert.Equal(t, want, got)
}

func TestLeftoverSessionOnlyOfAProcessThatIsGone(t *testing.T) {
	dir := openStateDir(t)
	end := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	gone := exec.Command("true")
	require.NoError(t, gone.Run()) // its pid is now free

	tests := []struct {
		name  string
		write func(mp string)
		want  bool
		warns string // logged when a record is ignored
	}{
		{"no record", func(string) {}, false, ""},
		{"a live process", func(mp string) {
			require.NoError(t, writeSessionRecord(dir, mp, sessionRecord{Gateway: "http://g", ID: "s1", EndTime: end, PID: os.Getpid()}))
		}, false, ""},
		{"a process that is gone", func(mp string) {
			require.NoError(t, writeSessionRecord(dir, mp, sessionRecord{Gateway: "http://g", ID: "s2", EndTime: end, PID: gone.Process.Pid}))
		}, true, ""},
		{"expired", func(mp string) {
			require.NoError(t, writeSessionRecord(dir, mp, sessionRecord{Gateway: "http://g", ID: "s3", EndTime: time.Now().Add(-time.Minute), PID: gone.Process.Pid}))
		}, false, ""},
		{"unreadable", func(mp string) {
			require.NoError(t, os.WriteFile(dir.File(sessionRecordName(mp)), []byte("{not json"), 0o600))
		}, false, "not a dmfs session record"},
		{"readable by others", func(mp string) {
			b := fmt.Sprintf(`{"gateway":"http://g","id":"s4","pid":%d}`, gone.Process.Pid)
			require.NoError(t, os.WriteFile(dir.File(sessionRecordName(mp)), []byte(b), 0o644))
		}, false, "open to group or others"},
		{"a symlink", func(mp string) {
			other := filepath.Join(t.TempDir(), "rec")
			b := fmt.Sprintf(`{"gateway":"http://g","id":"s5","pid":%d}`, gone.Process.Pid)
			require.NoError(t, os.WriteFile(other, []byte(b), 0o600))
			require.NoError(t, os.Symlink(other, dir.File(sessionRecordName(mp))))
		}, false, "symbolic link"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mp := fmt.Sprintf("/mnt/point%d", i)
			tt.write(mp)
			var logged bytes.Buffer
			rec, ok := leftoverSession(dir, mp, slog.New(slog.NewTextHandler(&logged, nil)))
			assert.Equal(t, tt.want, ok)
			if tt.warns != "" {
				assert.Contains(t, logged.String(), tt.warns)
			} else {
				assert.Empty(t, logged.String())
			}
			if ok {
				assert.Equal(t, sessionRecord{Gateway: "http://g", ID: "s2", EndTime: end, PID: gone.Process.Pid}, rec)
				fi, err := os.Stat(dir.File(sessionRecordName(mp)))
				require.NoError(t, err)
				assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "the record is private")
			}
		})
	}
	_, err := os.Lstat(dir.File(sessionRecordName("/mnt/point3")))
	assert.ErrorIs(t, err, os.ErrNotExist, "an expired record is removed")
}

func TestDiskQueueBytes(t *testing.T) {
	for _, c := range []struct{ cache, want int64 }{
		{1 << 20, 16 << 20},
		{256 << 20, 32 << 20},
		{8 << 30, 64 << 20},
	} {
		assert.Equal(t, c.want, diskQueueBytes(c.cache), "cache %d", c.cache)
	}
}

// The limit starts at the gateway's practical width, never above
// --max-connections, and flow accepts every width the flag allows.
func TestLimiterStartsAtTheGatewaysWidth(t *testing.T) {
	for _, tc := range []struct{ max, initial int }{{128, 64}, {4096, 64}, {64, 64}, {16, 16}, {2, 2}, {1, 1}} {
		cfg := limiterConfig(tc.max, nil)
		assert.Equal(t, tc.initial, cfg.Initial, "--max-connections %d", tc.max)
		l, err := flow.New(cfg)
		require.NoError(t, err, "--max-connections %d", tc.max)
		assert.Equal(t, tc.initial, l.Limit(), "--max-connections %d", tc.max)
	}
}
