package integration

// Operating dmfs: failures that name their cause, the mount helper and
// fstab, systemd readiness, ownership options, signals, exit codes.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// result is what a finished dmfs command printed and its exit code.
type result struct {
	stdout, stderr string
	code           int
}

// runDmfs runs cmd (a dmfs command, or mount(8)) to its end, within a
// minute, and returns what it printed and its exit code.
func runDmfs(t *testing.T, cmd *exec.Cmd) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		t.Fatalf("%v hung; output: %s %s", cmd.Args, stdout.String(), stderr.String())
	}
	code := 0
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code = exitErr.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return result{stdout.String(), stderr.String(), code}
}

// dmfsCmd is dmfs with args and extra environment.
func dmfsCmd(env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(dmfsBin, args...)
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// pidOf reads the pid file a background mount of mp left in the state
// folder runtime ($XDG_RUNTIME_DIR), and has the process ended with the
// tests whatever happens.
func pidOf(t *testing.T, runtime string) int {
	t.Helper()
	pids, _ := filepath.Glob(filepath.Join(runtime, "dmfs", "*.pid"))
	require.Len(t, pids, 1, "one pid file in %s", runtime)
	b, err := os.ReadFile(pids[0])
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	track(pid)
	t.Cleanup(func() { untrack(pid) })
	return pid
}

// mountOptionsOf returns mp's mount options as findmnt shows them (the
// mount's and the filesystem's, comma-separated).
func mountOptionsOf(t *testing.T, mp string) string {
	t.Helper()
	return strings.TrimSpace(runCmd(t, "findmnt", "-n", "-o", "OPTIONS", mp))
}

// mountedLine is what a background mount prints once it serves.
var mountedLine = regexp.MustCompile(`^dmfs: mounted (\S+) \(session until [^)]+, renewed while mounted\); log: (\S+)\n$`)

func TestBackgroundMountSaysWhereAndReopensItsLogOnSIGHUP(t *testing.T) {
	requireFUSE(t)
	g := startGateway(t, "")
	runtime := t.TempDir()
	mp := trackedMountPoint(t)
	env := []string{"DATAMESH_TOKEN=" + testToken, "XDG_RUNTIME_DIR=" + runtime}
	r := runDmfs(t, dmfsCmd(env, "mount", "--service", g.URL, "--log-format", "json", mp))
	require.Equal(t, 0, r.code, r.stderr)
	assert.Empty(t, r.stderr)
	m := mountedLine.FindStringSubmatch(r.stdout)
	require.NotNil(t, m, "one line saying where, until when and the log: %q", r.stdout)
	assert.Equal(t, mp, m[1])
	logFile := m[2]
	require.FileExists(t, logFile)
	pid := pidOf(t, runtime)

	// logrotate moves the log away, then sends SIGHUP: the mount reopens
	// its log by name and goes on serving.
	require.NoError(t, os.Rename(logFile, logFile+".1"))
	require.NoError(t, syscall.Kill(pid, syscall.SIGHUP))
	require.Eventually(t, func() bool {
		b, _ := os.ReadFile(logFile)
		return bytes.Contains(b, []byte("SIGHUP: log file reopened"))
	}, 10*time.Second, 20*time.Millisecond, "a new log file after SIGHUP")
	assert.True(t, running(pid), "SIGHUP does not end the mount")
	assert.True(t, isMounted(mp))
	assert.Contains(t, runCmd(t, "ls", mp), "demo_grid")

	un := runDmfs(t, dmfsCmd(env, "unmount", mp))
	require.Equal(t, 0, un.code, un.stderr)
	assert.Zero(t, g.counters(t).Sessions.Open)

	// --log-format json: every line is an object; each session event is
	// logged once.
	var all []byte
	for _, f := range []string{logFile + ".1", logFile} {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		all = append(all, b...)
	}
	msgs := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(all))
	for sc.Scan() {
		var line struct{ Msg string }
		require.NoError(t, json.Unmarshal(sc.Bytes(), &line), "not JSON: %s", sc.Text())
		msgs[line.Msg]++
	}
	assert.Equal(t, 1, msgs["datamesh session acquired"], "%v", msgs)
	assert.Equal(t, 1, msgs["datamesh session closed"], "%v", msgs)
	for msg, n := range msgs {
		if strings.Contains(msg, "session") {
			assert.Equal(t, 1, n, "logged %d times: %q", n, msg)
		}
	}
}

func TestLazyUnmountWithAFileOpenReturnsAtOnce(t *testing.T) {
	requireFUSE(t)
	g := startGateway(t, "")
	runtime := t.TempDir()
	mp := trackedMountPoint(t)
	env := []string{"DATAMESH_TOKEN=" + testToken, "XDG_RUNTIME_DIR=" + runtime}
	r := runDmfs(t, dmfsCmd(env, "mount", "--service", g.URL, mp))
	require.Equal(t, 0, r.code, r.stderr)
	pid := pidOf(t, runtime)

	f, err := os.Open(filepath.Join(mp, "demo_grid", ".zmetadata"))
	require.NoError(t, err)
	defer f.Close()
	start := time.Now()
	un := runDmfs(t, dmfsCmd(env, "unmount", "--lazy", mp))
	assert.Less(t, time.Since(start), 5*time.Second, "--lazy detaches at once")
	require.Equal(t, 0, un.code, un.stderr)
	assert.Contains(t, un.stderr, "detached "+mp)
	assert.Contains(t, un.stderr, fmt.Sprintf("pid %d", pid))
	assert.NotContains(t, un.stderr, "level=", "messages, not log lines")
	assert.False(t, isMounted(mp), "gone from the mount table")
	assert.True(t, running(pid), "still serving the open file")
	_, err = io.ReadAll(f)
	require.NoError(t, err, "the open file still reads")
	assert.Equal(t, int64(1), g.counters(t).Sessions.Open)

	require.NoError(t, f.Close())
	require.Eventually(t, func() bool { return !running(pid) }, 10*time.Second, 20*time.Millisecond,
		"the process ends once the last file is closed")
	assert.Zero(t, g.counters(t).Sessions.Open, "and closes its session")
}

func TestOwnershipAndModesShowInStat(t *testing.T) {
	g := startGateway(t, "")
	statOf := func(t *testing.T, path string) string {
		return strings.TrimSpace(runCmd(t, "stat", "-c", "%a %u %g", path))
	}
	t.Run("uid gid file-mode dir-mode", func(t *testing.T) {
		m := mountForeground(t, g, "--uid", "12345", "--gid", "23456", "--file-mode", "0640", "--dir-mode", "750")
		assert.Equal(t, "750 12345 23456", statOf(t, m.Dir))
		assert.Equal(t, "750 12345 23456", statOf(t, filepath.Join(m.Dir, "demo_grid")))
		assert.Equal(t, "750 12345 23456", statOf(t, filepath.Join(m.Dir, "demo_grid", "u10")))
		assert.Equal(t, "640 12345 23456", statOf(t, filepath.Join(m.Dir, "demo_grid", ".zmetadata")))
		assert.Equal(t, "640 12345 23456", statOf(t, filepath.Join(m.Dir, "demo_grid", "u10", "0.0.0")))
		assert.Equal(t, "440 12345 23456", statOf(t, filepath.Join(m.Dir, "demo_grid", ".datasource.json")),
			"never written: no write bits")
	})
	t.Run("as mount options", func(t *testing.T) {
		m := mountForeground(t, g, "-o", "uid=12345,gid=23456,file_mode=0600,dir_mode=0700,noexec")
		assert.Equal(t, "600 12345 23456", statOf(t, filepath.Join(m.Dir, "demo_grid", ".zmetadata")))
		assert.Contains(t, strings.Split(mountOptionsOf(t, m.Dir), ","), "noexec", "kernel options are passed on")
	})
	t.Run("allow-root", func(t *testing.T) {
		m := mountForeground(t, g, "--allow-root")
		assert.Equal(t, fmt.Sprintf("500 %d %d", os.Getuid(), os.Getgid()), statOf(t, m.Dir))
		assert.Equal(t, fmt.Sprintf("400 %d %d", os.Getuid(), os.Getgid()), statOf(t, filepath.Join(m.Dir, "demo_grid", ".zmetadata")))
		assert.Contains(t, strings.Split(mountOptionsOf(t, m.Dir), ","), "allow_other", "the kernel lets others reach the permission check")
	})
}

// TestSystemdNotifyReadyOnlyWhenTheMountServes plays systemd: a unix
// datagram socket in NOTIFY_SOCKET, as for a Type=notify unit.
func TestSystemdNotifyReadyOnlyWhenTheMountServes(t *testing.T) {
	requireFUSE(t)
	g := startGateway(t, "")
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	require.NoError(t, err)
	defer conn.Close()
	next := func(t *testing.T) string {
		t.Helper()
		buf := make([]byte, 4096)
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(30*time.Second)))
		n, err := conn.Read(buf)
		require.NoError(t, err, "no notification")
		return string(buf[:n])
	}
	mp := newMountPoint(t)
	trackMount(mp, true)
	t.Cleanup(func() { (&mount{Dir: mp}).unmountQuietly() })
	p := start(t, []string{"DATAMESH_TOKEN=" + testToken, "NOTIFY_SOCKET=" + sock},
		"mount", "--foreground", "--service", g.URL, mp)

	ready := next(t)
	// What READY=1 promises holds the moment it arrives.
	assert.True(t, isMounted(mp), "READY=1 before the mount is in the mount table")
	entries, err := os.ReadDir(mp)
	require.NoError(t, err)
	assert.NotEmpty(t, entries, "READY=1 before the mount serves")
	assert.Equal(t, "READY=1\nSTATUS=Mounted at "+mp, ready)
	assert.Equal(t, int64(1), g.counters(t).Sessions.Open)

	// systemctl stop: SIGTERM.
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, "STOPPING=1\nSTATUS=Unmounting "+mp, next(t))
	assert.Equal(t, 0, p.wait(t, 10*time.Second))
	assert.False(t, isMounted(mp))
	assert.Zero(t, g.counters(t).Sessions.Open, "stop closes the session")
}

// TestMountHelperAndFstab runs mount(8) for real: `mount -t fuse.dmfs` and
// an fstab line. /sbin/mount.fuse.dmfs (a symlink to dmfs) and /etc/fstab
// are bind mounts in a mount namespace of the test's own, so the machine's
// are never touched.
func TestMountHelperAndFstab(t *testing.T) {
	requireFUSE(t)
	requirePrereq(t, os.Geteuid() == 0, "root, for mount(8) and a mount namespace")
	for _, c := range []string{"unshare", "mount", "umount", "findmnt"} {
		_, err := exec.LookPath(c)
		requirePrereq(t, err == nil, c+" (util-linux)")
	}
	g := startGateway(t, "")
	dir := t.TempDir()
	helpers := filepath.Join(dir, "sbin")
	require.NoError(t, os.Mkdir(helpers, 0o755))
	require.NoError(t, os.Symlink(dmfsBin, filepath.Join(helpers, "mount.fuse.dmfs")))
	token := writeToken(t, testToken)
	mp := newMountPoint(t)
	trackMount(mp, true)
	fstab := filepath.Join(dir, "fstab")
	require.NoError(t, os.WriteFile(fstab, []byte(fmt.Sprintf(
		"dmfs %s fuse.dmfs noauto,_netdev,nofail,token_file=%s,service=%s,uid=12345,file_mode=0640,cache_size=32MiB 0 0\n",
		mp, token, g.URL)), 0o644))
	runtime := t.TempDir()
	script := `set -eu
mount --bind "$HELPERS" "$(readlink -f /sbin)"
mount --bind "$FSTAB" /etc/fstab
mount -t fuse.dmfs dmfs "$MP" -o "token_file=$TOKEN,service=$SERVICE,cache_size=64MiB,_netdev,nofail,noexec"
echo "findmnt: $(findmnt -n -o SOURCE,FSTYPE "$MP")"
echo "ls: $(ls "$MP" | tr '\n' ' ')"
umount "$MP"
mount "$MP"
echo "stat: $(stat -c '%a %u' "$MP/demo_grid/.zmetadata")"
umount "$MP"
mount -t fuse.dmfs dmfs "$MP" -o "token_file=$TOKEN,service=$SERVICE,no_such_option" 2>&1 || echo "bad option: exit $?"
mount -t fuse.dmfs dmfs "$MP" -f -o "token_file=$TOKEN,service=$SERVICE,cache_size=1GiB" && echo "fake: exit 0"
`
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script)
	cmd.Dir = dir // mount(8) turns a source "dmfs" into a path when a file of that name is here
	cmd.Env = append(os.Environ(), "HELPERS="+helpers, "FSTAB="+fstab, "MP="+mp, "TOKEN="+token,
		"SERVICE="+g.URL, "XDG_RUNTIME_DIR="+runtime)
	before := g.counters(t).Sessions
	r := runDmfs(t, cmd)
	t.Cleanup(func() {
		// A mount left behind lives in the namespace with its process.
		pids, _ := filepath.Glob(filepath.Join(runtime, "dmfs", "*.pid"))
		for _, f := range pids {
			if b, err := os.ReadFile(f); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
					syscall.Kill(pid, syscall.SIGTERM)
				}
			}
		}
	})
	require.Equal(t, 0, r.code, "stdout: %s\nstderr: %s", r.stdout, r.stderr)
	assert.Contains(t, r.stdout, "findmnt: "+g.URL+" fuse.dmfs", "findmnt names the service")
	assert.Contains(t, r.stdout, "ls: demo_archive demo_grid")
	assert.Contains(t, r.stdout, "stat: 640 12345", "fstab's uid and file_mode")
	assert.Contains(t, r.stdout, `unknown mount option "no_such_option"`)
	assert.Contains(t, r.stdout, "bad option: exit 2")
	assert.Contains(t, r.stdout, "fake: exit 0")
	assert.NotContains(t, r.stdout+r.stderr, testToken)
	require.Eventually(t, func() bool { return g.counters(t).Sessions.Open == 0 }, 10*time.Second, 20*time.Millisecond,
		"umount closes each session")
	after := g.counters(t).Sessions
	assert.Equal(t, before.Acquired+2, after.Acquired, "one session per mount, none for a bad option or -f")
}

// testUser returns a user other than root to mount as: dmfsuser, or one
// made for the test.
func testUser(t *testing.T) (uid, gid uint32) {
	t.Helper()
	u, err := user.Lookup("dmfsuser")
	if err != nil {
		name := fmt.Sprintf("dmfst%d", os.Getpid()%100000)
		out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name).CombinedOutput()
		requirePrereq(t, err == nil, "a user other than root (useradd: "+strings.TrimSpace(string(out))+")")
		t.Cleanup(func() { exec.Command("userdel", name).Run() })
		u, err = user.Lookup(name)
		require.NoError(t, err)
	}
	id, err := strconv.ParseUint(u.Uid, 10, 32)
	require.NoError(t, err)
	g, err := strconv.ParseUint(u.Gid, 10, 32)
	require.NoError(t, err)
	return uint32(id), uint32(g)
}

// keepMode restores path's permission bits when the test ends, however it
// ends.
func keepMode(t *testing.T, path string) {
	t.Helper()
	st, err := os.Stat(path)
	require.NoError(t, err)
	t.Cleanup(func() {
		if err := os.Chmod(path, st.Mode().Perm()); err != nil {
			t.Errorf("restoring the mode of %s: %v", path, err)
		}
	})
}

// keepFile restores path's content and mode when the test ends, however it
// ends.
func keepFile(t *testing.T, path string) {
	t.Helper()
	keepMode(t, path)
	orig, err := os.ReadFile(path)
	require.NoError(t, err)
	t.Cleanup(func() {
		if err := os.WriteFile(path, orig, 0o644); err != nil {
			t.Errorf("restoring %s: %v", path, err)
		}
	})
}

// TestNonRootMountFailuresNameTheCause mounts as a user other than root,
// through fusermount3, without access to /dev/fuse and with --allow-other
// but no user_allow_other: one line names the cause, and no session is
// acquired. The machine's /dev/fuse mode and /etc/fuse.conf are restored
// at the end.
func TestNonRootMountFailuresNameTheCause(t *testing.T) {
	requireFUSE(t)
	requirePrereq(t, os.Geteuid() == 0, "root, to act as a user other than root")
	_, err := exec.LookPath("fusermount3")
	requirePrereq(t, err == nil, "fusermount3")
	uid, gid := testUser(t)
	g := startGateway(t, "")

	// The user's corner: the binary, a token, a state folder, mount points.
	base := t.TempDir()
	require.NoError(t, os.Chmod(filepath.Dir(base), 0o755))
	require.NoError(t, os.Chmod(base, 0o755))
	bin := filepath.Join(base, "dmfs")
	b, err := os.ReadFile(dmfsBin)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(bin, b, 0o755))
	home := filepath.Join(base, "home")
	for _, d := range []string{home, filepath.Join(home, "run"), filepath.Join(home, "mnt")} {
		require.NoError(t, os.Mkdir(d, 0o700))
		require.NoError(t, os.Chown(d, int(uid), int(gid)))
	}
	require.NoError(t, os.Chmod(home, 0o755)) // others reach the mount point
	token := filepath.Join(home, "token")
	require.NoError(t, os.WriteFile(token, []byte(testToken), 0o600))
	require.NoError(t, os.Chown(token, int(uid), int(gid)))
	own := filepath.Join(home, "mnt")
	rootOwned := filepath.Join(base, "root-owned")
	require.NoError(t, os.Mkdir(rootOwned, 0o755))

	asUser := func(t *testing.T, args ...string) result {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + home, "XDG_RUNTIME_DIR=" + filepath.Join(home, "run"),
			"DATAMESH_TOKEN_FILE=" + token, "DATAMESH_SERVICE=" + g.URL}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
		return runDmfs(t, cmd)
	}
	oneLine := func(t *testing.T, r result, code int, says ...string) {
		t.Helper()
		assert.Equal(t, code, r.code, r.stderr)
		assert.Equal(t, 1, strings.Count(r.stderr, "\n"), "one line: %q", r.stderr)
		for _, s := range says {
			assert.Contains(t, r.stderr, s)
		}
		assert.NotContains(t, r.stderr, testToken)
	}

	keepMode(t, "/dev/fuse")
	keepFile(t, "/etc/fuse.conf")
	setFuse := func(t *testing.T, mode os.FileMode, conf string) {
		t.Helper()
		require.NoError(t, os.Chmod("/dev/fuse", mode))
		require.NoError(t, os.WriteFile("/etc/fuse.conf", []byte(conf), 0o644))
	}
	const noUserAllowOther = "# written by dmfs's integration tests; restored afterwards\n#user_allow_other\n"

	t.Run("no access to /dev/fuse", func(t *testing.T) {
		setFuse(t, 0o600, noUserAllowOther)
		before := g.counters(t).Sessions.Acquired
		for _, mode := range [][]string{nil, {"--foreground"}} {
			r := asUser(t, append(append([]string{"mount"}, mode...), own)...)
			oneLine(t, r, 5, "no read and write access to /dev/fuse (mode 0600, owner uid 0", "or mount as root")
			assert.False(t, isMounted(own))
		}
		assert.Equal(t, before, g.counters(t).Sessions.Acquired, "checked before a session is acquired")
	})
	t.Run("allow-other without user_allow_other", func(t *testing.T) {
		setFuse(t, 0o666, noUserAllowOther)
		before := g.counters(t).Sessions.Acquired
		for _, flag := range []string{"--allow-other", "--allow-root"} {
			r := asUser(t, "mount", flag, own)
			oneLine(t, r, 5, flag+" needs the line 'user_allow_other' in /etc/fuse.conf")
			assert.False(t, isMounted(own))
		}
		r := asUser(t, "mount", "-o", "allow_other", own)
		oneLine(t, r, 5, "user_allow_other")
		assert.Equal(t, before, g.counters(t).Sessions.Acquired, "checked before a session is acquired")
	})
	t.Run("fusermount3's own words", func(t *testing.T) {
		setFuse(t, 0o666, noUserAllowOther)
		r := asUser(t, "mount", rootOwned)
		oneLine(t, r, 5, "mounting at "+rootOwned+": ", "fusermount3: user has no write access to mountpoint "+rootOwned,
			"; log: "+filepath.Join(home, "run", "dmfs"))
		assert.NotContains(t, r.stderr, "exited with code")
		require.Eventually(t, func() bool { return g.counters(t).Sessions.Open == 0 }, 10*time.Second, 20*time.Millisecond)
	})
	t.Run("with user_allow_other it mounts", func(t *testing.T) {
		setFuse(t, 0o666, "user_allow_other\n")
		trackMount(own, true)
		t.Cleanup(func() { (&mount{Dir: own}).unmountQuietly() })
		r := asUser(t, "mount", "--allow-other", own)
		require.Equal(t, 0, r.code, r.stderr)
		assert.Regexp(t, mountedLine, r.stdout)
		pidOf(t, filepath.Join(home, "run"))
		opts := strings.Split(mountOptionsOf(t, own), ",")
		assert.Contains(t, opts, "allow_other")
		assert.Contains(t, opts, fmt.Sprintf("user_id=%d", uid), "mounted by the user, through fusermount3")
		// Another user (nobody) reads it.
		ls := exec.Command("ls", filepath.Join(own, "demo_grid"))
		ls.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
		out, err := ls.CombinedOutput()
		require.NoError(t, err, string(out))
		assert.Contains(t, string(out), "u10")
		un := asUser(t, "unmount", own)
		assert.Equal(t, 0, un.code, un.stderr)
		assert.Zero(t, g.counters(t).Sessions.Open)
	})
}

// TestEveryExitCodeOfTheREADMEIsProduced runs, for each exit code the
// README's table lists, a case that ends with it.
func TestEveryExitCodeOfTheREADMEIsProduced(t *testing.T) {
	requireFUSE(t)
	readme, err := os.ReadFile("../README.md")
	require.NoError(t, err)
	_, table, ok := strings.Cut(string(readme), "### Exit codes\n")
	require.True(t, ok, "README has an exit code table")
	var documented []int
	for _, line := range strings.Split(table, "\n") {
		if m := regexp.MustCompile(`^\| (\d+) \|`).FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			documented = append(documented, n)
		} else if len(documented) > 0 && !strings.HasPrefix(line, "|") {
			break
		}
	}
	require.NotEmpty(t, documented)

	g := startGateway(t, "")
	token := "DATAMESH_TOKEN=" + testToken
	mountArgs := func(mp string, extra ...string) []string {
		return append(append([]string{"mount", "--service", g.URL}, extra...), mp)
	}
	cases := map[int]func(t *testing.T) result{
		0: func(t *testing.T) result { return runDmfs(t, dmfsCmd(nil, "version")) },
		1: func(t *testing.T) result {
			runtime := t.TempDir()
			require.NoError(t, os.Mkdir(filepath.Join(runtime, "dmfs"), 0o777))
			require.NoError(t, os.Chmod(filepath.Join(runtime, "dmfs"), 0o777))
			return runDmfs(t, dmfsCmd([]string{token, "XDG_RUNTIME_DIR=" + runtime}, mountArgs(newMountPoint(t))...))
		},
		2: func(t *testing.T) result {
			return runDmfs(t, dmfsCmd([]string{token}, mountArgs(newMountPoint(t), "--session-duration", "0s")...))
		},
		3: func(t *testing.T) result {
			return runDmfs(t, dmfsCmd([]string{"DATAMESH_TOKEN=", "DATAMESH_TOKEN_FILE="}, mountArgs(newMountPoint(t))...))
		},
		4: func(t *testing.T) result {
			return runDmfs(t, dmfsCmd([]string{token}, "mount", "--service", "http://127.0.0.1:9", newMountPoint(t)))
		},
		5: func(t *testing.T) result {
			return runDmfs(t, dmfsCmd([]string{token}, mountArgs(filepath.Join(t.TempDir(), "missing"))...))
		},
		6: func(t *testing.T) result {
			m := mountForeground(t, g)
			f, err := os.Open(filepath.Join(m.Dir, "demo_grid", ".zmetadata"))
			require.NoError(t, err)
			defer f.Close()
			return runDmfs(t, dmfsCmd(nil, "unmount", m.Dir))
		},
		7: func(t *testing.T) result { return runDmfs(t, dmfsCmd(nil, "unmount", t.TempDir())) },
		8: func(t *testing.T) result {
			wg := startGateway(t, t.TempDir(), "--write-fail-keys", "*/refused")
			env := writeEnv(t)
			m := mountWrite(t, wg, env, "--write-back", "0s")
			require.NoError(t, os.Mkdir(filepath.Join(m.Dir, "new_ds"), 0o755))
			require.NoError(t, os.WriteFile(filepath.Join(m.Dir, "new_ds", "refused"), []byte("x"), 0o644))
			out, code := dmfsUnmount(t, wg, env, m.Dir)
			return result{stderr: out, code: code}
		},
	}
	var produced []int
	for code, run := range cases {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			r := run(t)
			assert.Equal(t, code, r.code, "stdout: %s\nstderr: %s", r.stdout, r.stderr)
			produced = append(produced, code)
		})
	}
	slices.Sort(produced)
	assert.Equal(t, documented, produced, "every code of the README's table, and only those")
}

// TestNoTokenHintWorks follows the hint a mount without a token prints.
func TestNoTokenHintWorks(t *testing.T) {
	requireFUSE(t)
	addrFile := filepath.Join(t.TempDir(), "addr")
	// As the hint says: 'dmfs serve --demo', no token of its own.
	start(t, []string{"DATAMESH_TOKEN="},
		"serve", "--demo", "--addr", "127.0.0.1:0", "--addr-file", addrFile, "--log-level", "warn", demoDir)
	var addr string
	require.Eventually(t, func() bool {
		b, _ := os.ReadFile(addrFile)
		addr = strings.TrimSpace(string(b))
		return addr != ""
	}, 30*time.Second, 20*time.Millisecond)

	mp := trackedMountPoint(t)
	runtime := t.TempDir()
	r := runDmfs(t, dmfsCmd([]string{"DATAMESH_TOKEN=", "DATAMESH_TOKEN_FILE=", "XDG_RUNTIME_DIR=" + runtime},
		"mount", "--service", "http://"+addr, mp))
	require.Equal(t, 3, r.code, r.stderr)
	hint := regexp.MustCompile(`'(DATAMESH_TOKEN=\S+ dmfs mount --service http://127\.0\.0\.1:8765 \S+)'`).FindStringSubmatch(r.stderr)
	require.NotNil(t, hint, "the hint gives a command: %s", r.stderr)
	assert.Contains(t, r.stderr, "'dmfs serve --demo'")
	// The demo gateway's default address is 127.0.0.1:8765; this one's is
	// another, so as not to clash with anything running there.
	command := strings.Replace(hint[1], "127.0.0.1:8765", addr, 1)
	command = strings.Replace(command, "dmfs mount", dmfsBin+" mount", 1)
	cmd := exec.Command("/bin/sh", "-c", command)
	cmd.Env = append(os.Environ(), "DATAMESH_TOKEN_FILE=", "XDG_RUNTIME_DIR="+runtime)
	r = runDmfs(t, cmd)
	require.Equal(t, 0, r.code, r.stderr)
	pidOf(t, runtime)
	assert.Contains(t, runCmd(t, "ls", mp), "demo_grid")
	un := runDmfs(t, dmfsCmd([]string{"XDG_RUNTIME_DIR=" + runtime}, "unmount", mp))
	assert.Equal(t, 0, un.code, un.stderr)
}

// TestReadmeByHandWorks runs the README's "By hand" block as it is, but for
// the build (the test's binary is copied instead).
func TestReadmeByHandWorks(t *testing.T) {
	requireFUSE(t)
	requirePrereq(t, pythonOK, "/usr/bin/python3 with xarray, zarr, numpy")
	readme, err := os.ReadFile("../README.md")
	require.NoError(t, err)
	_, rest, ok := strings.Cut(string(readme), "By hand (bash):\n\n```\n")
	require.True(t, ok, "README has a By hand block")
	block, _, ok := strings.Cut(rest, "```\n")
	require.True(t, ok)
	const build = "go build -o dmfs ./cmd/dmfs\n"
	require.True(t, strings.HasPrefix(block, build), "the block starts with the build: %s", block)
	script := "set -euo pipefail\ncp \"$DMFS_BIN\" dmfs\n" + strings.TrimPrefix(block, build)
	for _, must := range []string{"--addr 127.0.0.1:0", "umask 077", "mktemp -d", "kill $server", "/usr/bin/python3"} {
		assert.Contains(t, block, must)
	}

	home := t.TempDir()
	work := t.TempDir()
	// The demo data the tests wrote already, where 'dmfs serve --demo'
	// looks ($XDG_CACHE_HOME/dmfs/demo): up to date, it is served as is.
	require.NoError(t, os.MkdirAll(filepath.Join(home, ".cache", "dmfs"), 0o700))
	require.NoError(t, os.Symlink(demoDir, filepath.Join(home, ".cache", "dmfs", "demo")))
	trackMount(filepath.Join(home, "datamesh"), true)
	t.Cleanup(func() { (&mount{Dir: filepath.Join(home, "datamesh")}).unmountQuietly() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "HOME="+home, "DMFS_BIN="+dmfsBin, "XDG_RUNTIME_DIR="+t.TempDir(),
		"XDG_CACHE_HOME="+filepath.Join(home, ".cache"), "DATAMESH_TOKEN=", "DATAMESH_TOKEN_FILE=", "DATAMESH_SERVICE=")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	t.Cleanup(func() { // the server, if the block failed before its kill
		if cmd.Process != nil {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		}
	})
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "the README's By hand block failed:\n%s", out)
	assert.Regexp(t, `dmfs: mounted \S+/datamesh \(session until`, string(out))
	assert.Contains(t, string(out), "u10")
	assert.Regexp(t, `(?m)^-?\d+\.\d+`, string(out), "xarray printed the mean")
	assert.False(t, isMounted(filepath.Join(home, "datamesh")))
}

// TestSystemdUnitsVerify checks the unit files in deploy/systemd with
// systemd's own parser, the binary path pointed at the test's.
func TestSystemdUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	requirePrereq(t, err == nil, "systemd-analyze (package systemd)")
	for unit, instance := range map[string]string{
		"../deploy/systemd/dmfs@.service":      "dmfs@mnt-datamesh.service",
		"../deploy/systemd/user/dmfs@.service": "dmfs@datamesh.service",
	} {
		b, err := os.ReadFile(unit)
		require.NoError(t, err)
		text := string(b)
		for _, want := range []string{"Type=notify", "dmfs mount --foreground", "ExecReload=/bin/kill -HUP $MAINPID", "KillMode=mixed"} {
			assert.Contains(t, text, want, unit)
		}
		text = strings.NewReplacer("/usr/local/bin/dmfs", dmfsBin, "%h/.local/bin/dmfs", dmfsBin).Replace(text)
		path := filepath.Join(t.TempDir(), instance)
		require.NoError(t, os.WriteFile(path, []byte(text), 0o644))
		out, err := exec.Command(analyze, "verify", "--man=no", path).CombinedOutput()
		assert.NoError(t, err, "%s: %s", unit, out)
		assert.Empty(t, strings.TrimSpace(string(out)), unit)
	}
}
