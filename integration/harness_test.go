// Package integration runs the built dmfs binary for real: a local gateway
// (`dmfs serve`) and mounts through the kernel, read with ls, cp, stat and
// xarray.
package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/oceanum-dmfs/dmfs/gateway"
	"github.com/oceanum-dmfs/dmfs/internal/mountinfo"
	"github.com/oceanum-dmfs/dmfs/internal/testenv"
	"github.com/stretchr/testify/require"
)

const testToken = "integration-secret-token"

var (
	dmfsBin  string // the binary under test
	workDir  string // everything the tests create
	demoDir  string // demo datasources, written once
	pythonOK bool   // Debian's python3 with xarray and zarr

	tracked struct {
		sync.Mutex
		pids   map[int]bool
		mounts map[string]bool
	}
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	tracked.pids, tracked.mounts = map[int]bool{}, map[string]bool{}
	var err error
	workDir, err = os.MkdirTemp("", "dmfs-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(workDir)
	defer cleanupAll()
	// A test binary killed by -timeout runs no deferred cleanup: do it
	// ourselves just before that deadline.
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > time.Minute {
			time.AfterFunc(d-30*time.Second, func() {
				fmt.Fprintln(os.Stderr, "integration: close to the test timeout; unmounting everything")
				cleanupAll()
			})
		}
	}
	dmfsBin = filepath.Join(workDir, "dmfs")
	buildArgs := []string{"build", "-o", dmfsBin}
	if raceEnabled {
		buildArgs = append(buildArgs, "-race")
	}
	build := exec.Command("go", append(buildArgs, "../cmd/dmfs")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building dmfs:", err)
		return 1
	}
	demoDir = filepath.Join(workDir, "demo")
	if err := gateway.WriteDemo(context.Background(), demoDir, gateway.DemoOptions{}); err != nil {
		fmt.Fprintln(os.Stderr, "writing demo data:", err)
		return 1
	}
	pythonOK = exec.Command("/usr/bin/python3", "-c", "import xarray, zarr, numpy").Run() == nil
	return m.Run()
}

// requirePrereq skips a test whose prerequisite is missing, except in CI,
// where a skipped suite must not read as green.
func requirePrereq(t *testing.T, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("prerequisite missing in CI: %s", what)
	}
	t.Skipf("prerequisite missing: %s", what)
}

func requireFUSE(t *testing.T) {
	t.Helper()
	_, err := os.Stat("/dev/fuse")
	ok := err == nil
	if os.Geteuid() != 0 {
		_, err := exec.LookPath("fusermount3")
		ok = ok && err == nil
	}
	requirePrereq(t, ok, "/dev/fuse (and fusermount3 when not root)")
}

func track(pid int) {
	tracked.Lock()
	tracked.pids[pid] = true
	tracked.Unlock()
}

func untrack(pid int) {
	tracked.Lock()
	delete(tracked.pids, pid)
	tracked.Unlock()
}

func trackMount(mp string, on bool) {
	tracked.Lock()
	if on {
		tracked.mounts[mp] = true
	} else {
		delete(tracked.mounts, mp)
	}
	tracked.Unlock()
}

// cleanupAll unmounts every mount and ends every process the tests started.
func cleanupAll() {
	tracked.Lock()
	defer tracked.Unlock()
	for mp := range tracked.mounts {
		if syscall.Unmount(mp, syscall.MNT_DETACH) != nil {
			exec.Command("fusermount3", "-u", "-z", mp).Run()
		}
	}
	for pid := range tracked.pids {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(5 * time.Second)
	for pid := range tracked.pids {
		for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// process is a dmfs subprocess with its combined output.
type process struct {
	cmd    *exec.Cmd
	out    *testenv.Buffer
	exited chan struct{}
}

// start runs dmfs with args; it dies with the test binary (Pdeathsig) and is
// ended by the test's cleanup.
func start(t *testing.T, env []string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(dmfsBin, args...)
	cmd.Env = append(os.Environ(), env...)
	p := &process{cmd: cmd, out: &testenv.Buffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	require.NoError(t, cmd.Start())
	track(cmd.Process.Pid)
	go func() {
		cmd.Wait()
		untrack(cmd.Process.Pid)
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("output of dmfs %s:\n%s", strings.Join(args, " "), p.out.String())
		}
	})
	return p
}

// stop sends SIGTERM and waits; SIGKILL after 10 s.
func (p *process) stop(t *testing.T) {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Errorf("dmfs pid %d ignored SIGTERM for 10 s; killing it", p.cmd.Process.Pid)
		p.cmd.Process.Kill()
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			// Stuck in the kernel (a request to its own mount): waiting
			// would hang the whole suite.
			t.Errorf("dmfs pid %d did not exit after SIGKILL", p.cmd.Process.Pid)
		}
	}
}

// wait waits for the process to exit and returns its exit code.
func (p *process) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(within):
		t.Fatalf("dmfs did not exit within %s; output:\n%s", within, p.out.String())
		return -1
	}
}

// gatewayProc is a running `dmfs serve`.
type gatewayProc struct {
	URL  string
	proc *process
}

// startGateway serves dir (the demo data when empty) with extra flags.
func startGateway(t *testing.T, dir string, extra ...string) *gatewayProc {
	t.Helper()
	if dir == "" {
		dir = demoDir
	}
	tokenFile := writeToken(t, testToken)
	addrFile := filepath.Join(t.TempDir(), "addr")
	args := append([]string{"serve", "--addr", "127.0.0.1:0", "--addr-file", addrFile, "--token-file", tokenFile, "--log-level", "warn"}, extra...)
	p := start(t, nil, append(args, dir)...)
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(addrFile)
		if err == nil && len(bytes.TrimSpace(b)) > 0 {
			return &gatewayProc{URL: "http://" + strings.TrimSpace(string(b)), proc: p}
		}
		select {
		case <-p.exited:
			t.Fatalf("dmfs serve exited: %s", p.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dmfs serve not ready after 30 s: %s", p.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func writeToken(t *testing.T, token string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(f, []byte(token+"\n"), 0o600))
	return f
}

// counters is the gateway's /_dmfs/counters document.
type counters = gateway.Counters

func (g *gatewayProc) counters(t *testing.T) counters {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, g.URL+"/_dmfs/counters", nil)
	require.NoError(t, err)
	req.Header.Set("X-DATAMESH-TOKEN", testToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	var c counters
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&c))
	return c
}

func (g *gatewayProc) resetCounters(t *testing.T) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, g.URL+"/_dmfs/counters/reset", nil)
	require.NoError(t, err)
	req.Header.Set("X-DATAMESH-TOKEN", testToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode/100*100)
}

// mount is a dmfs mount served by a foreground subprocess.
type mount struct {
	Dir  string
	proc *process
}

// mountForeground mounts the gateway with `dmfs mount --foreground` and waits
// until the mount serves.
func mountForeground(t *testing.T, g *gatewayProc, extra ...string) *mount {
	t.Helper()
	requireFUSE(t)
	return mountForegroundAt(t, g, newMountPoint(t), extra...)
}

// newMountPoint makes an empty folder to mount on.
func newMountPoint(t *testing.T) string {
	t.Helper()
	mp := filepath.Join(t.TempDir(), "mnt")
	require.NoError(t, os.Mkdir(mp, 0o755))
	return mp
}

// trackedMountPoint is newMountPoint for a mount made by a background
// `dmfs mount`: whatever happens, the test's cleanup unmounts it.
func trackedMountPoint(t *testing.T) string {
	t.Helper()
	mp := newMountPoint(t)
	trackMount(mp, true)
	t.Cleanup(func() { (&mount{Dir: mp}).unmountQuietly() })
	return mp
}

// mountForegroundAt is mountForeground on a given mount point.
func mountForegroundAt(t *testing.T, g *gatewayProc, mp string, extra ...string) *mount {
	t.Helper()
	return mountForegroundAtEnv(t, g, mp, nil, extra...)
}

// mountForegroundEnv is mountForeground with extra environment variables.
func mountForegroundEnv(t *testing.T, g *gatewayProc, env []string, extra ...string) *mount {
	t.Helper()
	return mountForegroundAtEnv(t, g, newMountPoint(t), env, extra...)
}

func mountForegroundAtEnv(t *testing.T, g *gatewayProc, mp string, moreEnv []string, extra ...string) *mount {
	t.Helper()
	requireFUSE(t)
	env := append([]string{"DATAMESH_TOKEN=" + testToken}, moreEnv...)
	args := append([]string{"mount", "--foreground", "--service", g.URL, "--log-level", "debug"}, extra...)
	trackMount(mp, true)
	p := start(t, env, append(args, mp)...)
	m := &mount{Dir: mp, proc: p}
	t.Cleanup(func() { m.unmountQuietly() })
	waitMounted(t, mp, p)
	return m
}

// waitLog waits until the mount's log holds one of the strings: the log
// reaches the test through a pipe, a moment after what caused it.
func (m *mount) waitLog(t *testing.T, anyOf ...string) {
	t.Helper()
	found := func() bool {
		out := m.proc.out.String()
		for _, w := range anyOf {
			if strings.Contains(out, w) {
				return true
			}
		}
		return false
	}
	require.Eventually(t, found, 10*time.Second, 20*time.Millisecond, "the log never said any of %q", anyOf)
}

// waitMounted waits until mp is a dmfs mount in the mount table.
func waitMounted(t *testing.T, mp string, p *process) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	// In the mount table is not yet ready: go-fuse still opens a file on the
	// new mount (its poll probe). A process killed then hangs for ever in
	// its own FLUSH, so foreground mounts also wait for "mounted" in the log.
	ready := func() bool {
		return isMounted(mp) && (p == nil || strings.Contains(p.out.String(), "msg=mounted"))
	}
	for !ready() {
		if p != nil {
			select {
			case <-p.exited:
				t.Fatalf("dmfs mount exited before mounting: %s", p.out.String())
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not mounted after 30 s", mp)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func isMounted(mp string) bool {
	_, ok, err := mountinfo.Find(mp)
	return err == nil && ok
}

func (m *mount) unmountQuietly() {
	if isMounted(m.Dir) {
		if syscall.Unmount(m.Dir, 0) != nil {
			syscall.Unmount(m.Dir, syscall.MNT_DETACH)
		}
	}
	trackMount(m.Dir, false)
}

// runCmd runs a command with a deadline and returns its stdout.
func runCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	require.NoError(t, err, "%s %s: %s", name, strings.Join(args, " "), stderr.String())
	return stdout.String()
}

// python runs a script with Debian's python3 and returns its stdout.
func python(t *testing.T, script string, args ...string) string {
	t.Helper()
	requirePrereq(t, pythonOK, "/usr/bin/python3 with xarray, zarr, numpy (apt-get install python3-xarray python3-zarr)")
	return runCmd(t, "/usr/bin/python3", append([]string{"-c", script}, args...)...)
}

// readAll returns every regular file under dir by relative path.
// infoFile is the read-only description every datasource directory of a
// mount holds beside its keys.
const infoFile = ".datasource.json"

// readAll reads every file under dir but a top-level infoFile.
func readAll(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	require.NoError(t, filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || !info.Mode().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == infoFile {
			return nil // the mount's description of a datasource, not a key
		}
		b, err := os.ReadFile(p)
		files[rel] = b
		return err
	}))
	return files
}
