package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/internal/mountinfo"
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
	}
	for _, c := range cases {
		code, stdout, stderr := runArgs(t, nil, c.args...)
		assert.Equal(t, c.code, code, "%v", c.args)
		assert.Contains(t, stdout+stderr, c.out, "%v", c.args)
	}
}

func TestMountHelpDocumentsEveryFlag(t *testing.T) {
	code, _, stderr := runArgs(t, nil, "mount", "--help")
	assert.Equal(t, exitOK, code)
	for _, flag := range []string{"--token-file", "--service", "--gateway", "--session-duration", "--datasource",
		"--cache-size", "--readahead", "--metadata-ttl", "--allow-other", "--log-level", "--log-file",
		"--fuse-debug", "--foreground", "DATAMESH_SERVICE", "DATAMESH_GATEWAY", "DATAMESH_TOKEN", "(default 1GiB)"} {
		assert.Contains(t, stderr, flag)
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
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	a, b := stateFile("/a/b", ".pid"), stateFile("/a_b", ".pid")
	assert.NotEqual(t, a, b)
	_, err := writePidFile("/a/b")
	require.NoError(t, err)
	pid, ok := readPidFile("/a/b")
	assert.True(t, ok)
	assert.Equal(t, os.Getpid(), pid)
	_, ok = readPidFile("/a_b")
	assert.False(t, ok)
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
	want.LogFile = ""
	assert.Equal(t, want, got)
}

func TestLeftoverSessionOnlyOfAProcessThatIsGone(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	end := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	gone := exec.Command("true")
	require.NoError(t, gone.Run()) // its pid is now free

	tests := []struct {
		name  string
		write func(mp string)
		want  bool
	}{
		{"no record", func(string) {}, false},
		{"a live process", func(mp string) {
			require.NoError(t, writeSessionRecord(mp, sessionRecord{Gateway: "http://g", ID: "s1", EndTime: end, PID: os.Getpid()}))
		}, false},
		{"a process that is gone", func(mp string) {
			require.NoError(t, writeSessionRecord(mp, sessionRecord{Gateway: "http://g", ID: "s2", EndTime: end, PID: gone.Process.Pid}))
		}, true},
		{"unreadable", func(mp string) {
			require.NoError(t, os.MkdirAll(stateDir(), 0o700))
			require.NoError(t, os.WriteFile(sessionRecordPath(mp), []byte("{not json"), 0o600))
		}, false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mp := fmt.Sprintf("/mnt/point%d", i)
			tt.write(mp)
			rec, ok := leftoverSession(mp)
			assert.Equal(t, tt.want, ok)
			if ok {
				assert.Equal(t, sessionRecord{Gateway: "http://g", ID: "s2", EndTime: end, PID: gone.Process.Pid}, rec)
				fi, err := os.Stat(sessionRecordPath(mp))
				require.NoError(t, err)
				assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "the record is private")
			}
		})
	}
}
