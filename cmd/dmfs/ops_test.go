package main

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestHelpGoesToStdoutForEveryForm(t *testing.T) {
	forms := [][]string{
		{"help"}, {"--help"}, {"-h"},
		{"help", "mount"}, {"mount", "-h"}, {"mount", "--help"},
		{"help", "unmount"}, {"unmount", "-h"}, {"umount", "--help"},
		{"help", "serve"}, {"serve", "--help"},
		{"help", "ls"}, {"ls", "-h"},
		{"help", "version"}, {"version", "--help"},
	}
	for _, args := range forms {
		code, stdout, stderr := runArgs(t, nil, args...)
		assert.Equal(t, exitOK, code, "%v", args)
		assert.Contains(t, stdout, "Usage", "%v", args)
		assert.Empty(t, stderr, "%v: help goes to stdout", args)
	}
	// The command's own help, not the top-level usage.
	_, mountHelp, _ := runArgs(t, nil, "help", "mount")
	assert.Contains(t, mountHelp, "--cache-size")
	for _, args := range [][]string{{"help"}, {"help", "mount"}, {"help", "unmount"}} {
		_, stdout, _ := runArgs(t, nil, args...)
		assert.Contains(t, stdout, "Exit codes:", "%v", args)
		for code := exitOK; code <= exitWrite; code++ {
			assert.Contains(t, stdout, fmt.Sprintf("\n  %d  ", code), "%v lists exit code %d", args, code)
		}
	}
	code, stdout, stderr := runArgs(t, nil, "help", "frobnicate")
	assert.Equal(t, exitUsage, code)
	assert.Empty(t, stdout)
	assert.Contains(t, stderr, `unknown command "frobnicate"`)
}

func TestVersionNamesTheModuleTheCommitAndGo(t *testing.T) {
	code, stdout, _ := runArgs(t, nil, "version")
	require.Equal(t, exitOK, code)
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	require.Len(t, lines, 3, stdout)
	assert.Regexp(t, `^dmfs \S+$`, lines[0])
	assert.NotEqual(t, "dmfs dev", lines[0], "the module version from the build information")
	assert.Regexp(t, `^commit (\S+|unknown .*)`, lines[1])
	assert.Equal(t, fmt.Sprintf("go %s %s/%s", runtime.Version(), runtime.GOOS, runtime.GOARCH), lines[2])
	_, again, _ := runArgs(t, nil, "--version")
	assert.Equal(t, stdout, again)
	code, _, stderr := runArgs(t, nil, "version", "extra")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "takes no arguments")
}

// TestBadValuesAreUsageErrors: every flag is checked before anything
// starts, with the same exit code in the foreground and the background.
func TestBadValuesAreUsageErrors(t *testing.T) {
	missingDir := filepath.Join(t.TempDir(), "no-such-folder", "dmfs.log")
	cases := []struct {
		args []string
		says string
	}{
		{[]string{"--session-duration", "0s"}, "--session-duration must be at least 1s"},
		{[]string{"--session-duration", "-1h"}, "--session-duration must be at least 1s"},
		{[]string{"--session-duration", "500ms"}, "--session-duration must be at least 1s"},
		{[]string{"--readahead", "-5"}, "--readahead must not be negative"},
		{[]string{"--metadata-ttl", "-1s"}, "--metadata-ttl must be more than 0"},
		{[]string{"--metadata-ttl", "0s"}, "--metadata-ttl must be more than 0"},
		{[]string{"--cache-size", "0"}, "--cache-size must be more than 0"},
		{[]string{"--retry-budget", "0s"}, "--retry-budget must be more than 0"},
		{[]string{"--log-level", "loud"}, "--log-level"},
		{[]string{"--log-format", "xml"}, `invalid --log-format "xml"`},
		{[]string{"--uid", "no-such-user-dmfs"}, `no user "no-such-user-dmfs"`},
		{[]string{"--gid", "no-such-group-dmfs"}, `no group "no-such-group-dmfs"`},
		{[]string{"--uid", "-1"}, "want a number or a name"},
		{[]string{"--uid", "4294967295"}, "not a usable id"},
		{[]string{"--file-mode", "0999"}, "not an octal mode"},
		{[]string{"--file-mode", "4755"}, "only permission bits"},
		{[]string{"--dir-mode", "0"}, "nobody"},
		{[]string{"--allow-other", "--allow-root"}, "exclude each other"},
		{[]string{"--allow-root", "--file-mode", "0644"}, "--file-mode 0644 gives group or others access"},
		{[]string{"--datasource", ".."}, "not a datasource id"},
		{[]string{"-o", "bogus"}, `unknown mount option "bogus"`},
		{[]string{"-o", "foreground"}, `unknown mount option "foreground"`},
		{[]string{"-o", "cache-size=1GiB"}, "unknown mount option"},
		{[]string{"-o", "cache_size"}, "needs a value"},
		{[]string{"-o", "cache_size=lots"}, "cache_size=lots"},
		{[]string{"--cache-size", "1GiB", "-o", "cache_size=2GiB"}, "repeats --cache-size"},
		{[]string{"-o", "ro,write"}, "ro and write exclude each other"},
		{[]string{"-o", "uploads=3"}, "--uploads only applies to a --write mount"},
		{[]string{"--log-file", missingDir}, "no-such-folder"},
	}
	for _, c := range cases {
		checkUsageError(t, c.args, c.says)
	}
}

// checkUsageError mounts with args in the background and in the foreground
// and expects exit 2 with one message saying says, before any session.
func checkUsageError(t *testing.T, args []string, says string) {
	t.Helper()
	for _, mode := range []string{"background", "foreground"} {
		t.Run(strings.Join(args, " ")+"/"+mode, func(t *testing.T) {
			t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
			a := append([]string{"mount", "--service", "http://127.0.0.1:9"}, args...)
			if mode == "foreground" {
				a = append(a, "--foreground")
			}
			env := map[string]string{"DATAMESH_TOKEN": "t", "DATAMESH_TOKEN_FILE": ""}
			code, stdout, stderr := runArgs(t, env, append(a, t.TempDir())...)
			assert.Equal(t, exitUsage, code, stderr)
			assert.Contains(t, stderr, says)
			assert.Empty(t, stdout)
			assert.Equal(t, 1, strings.Count(strings.TrimSpace(stderr), "dmfs mount:"), "one message: %s", stderr)
		})
	}
}

// parseOptions parses a `dmfs mount` command line as runMount does.
func parseOptions(t *testing.T, args ...string) (*mountOptions, *pflag.FlagSet) {
	t.Helper()
	t.Setenv("DATAMESH_TOKEN_FILE", "")
	var stdout, stderr bytes.Buffer
	o, flags, code, done := parseMount(args, &stdout, &stderr, false)
	require.False(t, done, "code %d: %s", code, stderr.String())
	return o, flags
}

func TestMountOptionsMapToFlags(t *testing.T) {
	o, flags := parseOptions(t, "-o", "rw,token_file=/t,service=http://s:1,cache_size=64MiB,allow_other,datasource=a_b",
		"-o", "datasource=c,_netdev,nofail,defaults,noexec,nosuid,x-systemd.automount,user,user=bob,noatime,comment=x",
		"-o", "uid=7,gid=8,file_mode=640,dir_mode=0750,write,uploads=3,log_format=json,session_duration=2h",
		"/mnt/x")
	assert.Equal(t, "/t", o.TokenFile)
	assert.Equal(t, "http://s:1", o.Service)
	assert.Equal(t, byteSize(64<<20), o.CacheSize)
	assert.True(t, o.AllowOther)
	assert.Equal(t, []string{"a_b", "c"}, o.Datasources)
	assert.Equal(t, []string{"noexec", "nosuid"}, o.fuseOpts)
	assert.Equal(t, uint32(7), o.UID.or(0))
	assert.Equal(t, uint32(8), o.GID.or(0))
	assert.Equal(t, permBits(0o640), o.FileMode)
	assert.Equal(t, permBits(0o750), o.DirMode)
	assert.True(t, o.Write, "write is --write; rw, which mount(8) adds to every call, is not")
	assert.Equal(t, 3, o.Uploads)
	assert.Equal(t, "json", o.LogFormat)
	assert.Equal(t, 2*time.Hour, o.SessionDuration)
	assert.Equal(t, "/mnt/x", o.Mountpoint)

	// The background process parses what childFlags renders to the same.
	child, _ := parseOptions(t, append(childFlags(flags), "--", "/mnt/x")...)
	child.fuseOpts, child.Options, o.Options = o.fuseOpts, nil, nil
	assert.Equal(t, o, child)
	assert.NotContains(t, strings.Join(childFlags(flags), " "), "--options", "-o is applied, not passed on")

	plain, _ := parseOptions(t, "-o", "rw", "/mnt/x")
	assert.False(t, plain.Write, "rw alone is read-only")

	// mount -s: options that are not dmfs's are skipped.
	var stderr bytes.Buffer
	sloppy, _, code, done := parseMount([]string{"-o", "bogus,cache_size=2GiB", "/mnt/x"}, &bytes.Buffer{}, &stderr, true)
	require.False(t, done, "code %d: %s", code, stderr.String())
	assert.Equal(t, byteSize(2<<30), sloppy.CacheSize)
}

func TestParseHelperArgs(t *testing.T) {
	cases := []struct {
		args                  []string
		mountArgs             []string
		fake, verbose, sloppy bool
		err                   string
	}{
		{[]string{"dmfs", "/mnt/d", "-o", "rw,cache_size=1GiB"}, []string{"-o", "rw,cache_size=1GiB", "--", "/mnt/d"}, false, false, false, ""},
		{[]string{"/root/dmfs", "/mnt/d", "-n", "-orw", "-t", "fuse.dmfs"}, []string{"-o", "rw", "--", "/mnt/d"}, false, false, false, ""},
		{[]string{"https://datamesh.example", "/mnt/d", "-fvs", "-o", "ro"},
			[]string{"--service", "https://datamesh.example", "-o", "ro", "--", "/mnt/d"}, true, true, true, ""},
		{[]string{"dmfs"}, nil, false, false, false, "wants SOURCE MOUNTPOINT"},
		{[]string{"nfs:/x", "/mnt/d"}, nil, false, false, false, `source "nfs:/x"`},
		{[]string{"dmfs", "/mnt/d", "-N", "1"}, nil, false, false, false, "-N is not supported"},
		{[]string{"dmfs", "/mnt/d", "-o"}, nil, false, false, false, "-o needs a value"},
	}
	for _, c := range cases {
		got, err := parseHelperArgs(c.args)
		if c.err != "" {
			assert.ErrorContains(t, err, c.err, "%v", c.args)
			continue
		}
		require.NoError(t, err, "%v", c.args)
		assert.Equal(t, c.mountArgs, got.mountArgs, "%v", c.args)
		assert.Equal(t, [3]bool{c.fake, c.verbose, c.sloppy}, [3]bool{got.fake, got.verbose, got.sloppy}, "%v", c.args)
	}
}

// TestMountFuse3FormReachesTheHelper: mount.fuse3 runs 'dmfs SOURCE
// MOUNTPOINT -o OPTIONS'; an unknown option there is a usage error of the
// helper, not an unknown command.
func TestMountFuse3FormReachesTheHelper(t *testing.T) {
	mp := t.TempDir()
	for _, source := range []string{"dmfs", "/usr/local/bin/dmfs", "http://127.0.0.1:9"} {
		code, _, stderr := runArgs(t, nil, source, mp, "-o", "rw,bogus")
		assert.Equal(t, exitUsage, code, source)
		assert.Contains(t, stderr, `unknown mount option "bogus"`, source)
	}
	// -f (fake): checked, nothing mounted.
	code, stdout, stderr := runArgs(t, map[string]string{"DATAMESH_TOKEN": "t"}, "dmfs", mp, "-f", "-o", "rw,cache_size=1GiB,_netdev")
	assert.Equal(t, exitOK, code, stderr)
	assert.Empty(t, stdout+stderr)
	assert.True(t, isHelperName("/sbin/mount.fuse.dmfs"))
	assert.False(t, isHelperName("/usr/bin/dmfs"))
}

func TestNotifySystemd(t *testing.T) {
	listen := func(t *testing.T, name string) *net.UnixConn {
		conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	read := func(t *testing.T, conn *net.UnixConn) string {
		buf := make([]byte, 4096)
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
		n, err := conn.Read(buf)
		require.NoError(t, err)
		return string(buf[:n])
	}
	path := filepath.Join(t.TempDir(), "notify")
	conn := listen(t, path)
	t.Setenv(notifySocketEnv, path)
	require.NoError(t, notifySystemd("READY=1\nSTATUS=Mounted at /mnt/x"))
	assert.Equal(t, "READY=1\nSTATUS=Mounted at /mnt/x", read(t, conn))

	abstract := fmt.Sprintf("@dmfs-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	aconn := listen(t, abstract)
	t.Setenv(notifySocketEnv, abstract)
	require.NoError(t, notifySystemd("STOPPING=1"))
	assert.Equal(t, "STOPPING=1", read(t, aconn))

	t.Setenv(notifySocketEnv, "")
	assert.NoError(t, notifySystemd("READY=1"), "not under systemd: nothing to do")
	t.Setenv(notifySocketEnv, filepath.Join(t.TempDir(), "nobody-listens"))
	assert.Error(t, notifySystemd("READY=1"))
}

func TestUserAllowOther(t *testing.T) {
	cases := map[string]bool{
		"user_allow_other\n":                         true,
		"  user_allow_other  \n":                     true,
		"mount_max = 1000\nuser_allow_other":         true,
		"user_allow_other # let users share\n":       true,
		"#user_allow_other\n":                        false,
		"# user_allow_other - Using the option...\n": false,
		"user_allow_others\n":                        false,
		"":                                           false,
	}
	for content, want := range cases {
		path := filepath.Join(t.TempDir(), "fuse.conf")
		require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
		got, err := userAllowOther(path)
		require.NoError(t, err)
		assert.Equal(t, want, got, "%q", content)
	}
	got, err := userAllowOther(filepath.Join(t.TempDir(), "missing"))
	assert.False(t, got)
	assert.ErrorIs(t, err, os.ErrNotExist)
}

func TestFuseDeviceErrorSaysWhatToDo(t *testing.T) {
	saved := fuseDevice
	t.Cleanup(func() { fuseDevice = saved })
	fuseDevice = filepath.Join(t.TempDir(), "fuse")
	assert.ErrorContains(t, fuseDeviceError(syscall.ENOENT), "modprobe fuse")
	require.NoError(t, os.WriteFile(fuseDevice, nil, 0o600))
	err := fuseDeviceError(syscall.EACCES)
	assert.ErrorContains(t, err, "no read and write access to "+fuseDevice+" (mode 0600, owner uid "+strconv.Itoa(os.Getuid()))
	assert.ErrorContains(t, err, "or mount as root")
	assert.NotContains(t, err.Error(), "\n")
}

func TestCaptureStderrCatchesWhatAChildSays(t *testing.T) {
	said, err := captureStderr(func() error {
		cmd := exec.Command("/bin/sh", "-c", "echo 'fusermount3: failed to open /dev/fuse: Permission denied' >&2; exit 1")
		cmd.Stderr = os.Stderr // as go-fuse starts fusermount3
		return cmd.Run()
	})
	assert.Error(t, err)
	assert.Equal(t, "fusermount3: failed to open /dev/fuse: Permission denied", said)
	said, err = captureStderr(func() error { return nil })
	assert.NoError(t, err)
	assert.Empty(t, said)
}

func TestLogOutputReopensItsFileOnSIGHUP(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dmfs.log")
	f, err := openLogFile(path)
	require.NoError(t, err)
	out := &logOutput{w: f, open: func() (*os.File, error) { return openLogFile(path) }}
	log := slog.New(slog.NewTextHandler(out, nil))
	log.Info("before rotation")
	require.NoError(t, os.Rename(path, path+".1")) // logrotate
	log.Info("between")
	require.NoError(t, out.reopen())
	log.Info("after rotation")
	old, err := os.ReadFile(path + ".1")
	require.NoError(t, err)
	cur, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Contains(t, string(old), "before rotation")
	assert.Contains(t, string(old), "between")
	assert.NotContains(t, string(old), "after rotation")
	assert.Contains(t, string(cur), "after rotation")
	assert.NotContains(t, string(cur), "before")

	assert.ErrorIs(t, (&logOutput{w: &bytes.Buffer{}}).reopen(), errNoLogFile, "a terminal is not reopened")
}

func TestTerminalHandlerPrintsMessagesNotLogLines(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(&terminalHandler{w: &b, prefix: "dmfs unmount: "})
	log.Info("closed the session a killed mount left open", "session", "s1", "pid", 42)
	log.Warn("removing the session record", "err", errors.New("busy\nline"))
	log.Debug("not shown")
	assert.Equal(t, "dmfs unmount: closed the session a killed mount left open (session s1, pid 42)\n"+
		"dmfs unmount: warning: removing the session record (err busy line)\n", b.String())
}

func TestOwnerIDAndPermBits(t *testing.T) {
	var u ownerID
	require.NoError(t, u.Set("root"))
	assert.Equal(t, "0", u.String())
	require.NoError(t, u.Set("1001"))
	assert.Equal(t, uint32(1001), u.or(5))
	var unset ownerID
	assert.Equal(t, uint32(5), unset.or(5))
	g := ownerID{group: true}
	require.NoError(t, g.Set("root"))
	assert.Equal(t, "gid", g.Type())

	var p permBits
	for in, want := range map[string]permBits{"0640": 0o640, "640": 0o640, "0o755": 0o755, "400": 0o400} {
		require.NoError(t, p.Set(in), in)
		assert.Equal(t, want, p, in)
	}
	require.NoError(t, p.Set("0400"))
	assert.Equal(t, "0400", p.String())
}

func TestAllowRootGivesGroupAndOthersNothing(t *testing.T) {
	o, _ := parseOptions(t, "--allow-root", "/mnt/x")
	file, dir := o.modes()
	assert.Equal(t, [2]uint32{0o400, 0o500}, [2]uint32{file, dir})
	var stderr bytes.Buffer
	_, _, code, done := parseMount([]string{"--allow-root", "--dir-mode", "0750", "/mnt/x"}, &bytes.Buffer{}, &stderr, false)
	assert.True(t, done)
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr.String(), "--dir-mode 0750 gives group or others access")
	o, _ = parseOptions(t, "--allow-root", "--write", "/mnt/x")
	file, dir = o.modes()
	assert.Equal(t, [2]uint32{0o600, 0o700}, [2]uint32{file, dir})
	o, _ = parseOptions(t, "/mnt/x")
	file, dir = o.modes()
	assert.Equal(t, [2]uint32{0, 0}, [2]uint32{file, dir}, "0: the filesystem's defaults")
}

func TestFsNameIsTheServiceWithoutSecrets(t *testing.T) {
	assert.Equal(t, "https://datamesh.oceanum.io", fsName("https://datamesh.oceanum.io"))
	assert.Equal(t, "http://127.0.0.1:8765", fsName("http://127.0.0.1:8765/"))
	assert.Equal(t, "https://h.example/api", fsName("https://user:secret@h.example/api/?token=x#f"))
	assert.Equal(t, "dmfs", fsName("not a url"))
}

func TestMountedLine(t *testing.T) {
	end := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	line := mountedLine("/mnt/d", end.Format(time.RFC3339), "/run/user/1000/dmfs/mnt_d.log")
	assert.Contains(t, line, "mounted /mnt/d")
	assert.Contains(t, line, "session until "+end.Local().Format("2006-01-02 15:04:05 MST"))
	assert.Contains(t, line, "log: /run/user/1000/dmfs/mnt_d.log")
	assert.NotContains(t, line, "\n")
}
