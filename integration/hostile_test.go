package integration

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/oceanum-dmfs/dmfs/internal/statedir"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// proxy stands between dmfs and a real `dmfs serve`, and misbehaves on
// demand: it is the hostile or failing gateway of these tests.
type proxy struct {
	URL string
	// hook answers a request itself when it returns true.
	mu   sync.Mutex
	hook func(w http.ResponseWriter, r *http.Request) bool
}

func newProxy(t *testing.T, g *gatewayProc) *proxy {
	t.Helper()
	target, err := url.Parse(g.URL)
	require.NoError(t, err)
	rp := httputil.NewSingleHostReverseProxy(target)
	p := &proxy{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		hook := p.hook
		p.mu.Unlock()
		if hook != nil && hook(w, r) {
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

func (p *proxy) setHook(h func(w http.ResponseWriter, r *http.Request) bool) {
	p.mu.Lock()
	p.hook = h
	p.mu.Unlock()
}

// mountThrough mounts the proxy as the service and gateway.
func mountThrough(t *testing.T, p *proxy, extra ...string) *mount {
	t.Helper()
	return mountForeground(t, &gatewayProc{URL: p.URL}, extra...)
}

// recorder is another origin that notes what reaches it.
type recorder struct {
	URL      string
	requests atomic.Int64
	leaked   atomic.Int64 // requests carrying the token or a session id
}

func newRecorder(t *testing.T) *recorder {
	rec := &recorder{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.requests.Add(1)
		for _, v := range []string{r.Header.Get("X-DATAMESH-TOKEN"), r.Header.Get("Authorization"), r.Header.Get("X-DATAMESH-SESSIONID")} {
			if v != "" {
				rec.leaked.Add(1)
			}
		}
		w.Write([]byte("stolen"))
	}))
	t.Cleanup(srv.Close)
	rec.URL = srv.URL
	return rec
}

func TestRedirectingGatewayNeverSendsTheTokenElsewhere(t *testing.T) {
	g := startGateway(t, "")
	p := newProxy(t, g)
	other := newRecorder(t)
	m := mountThrough(t, p)
	ds := filepath.Join(m.Dir, "demo_grid")
	_, err := os.ReadFile(filepath.Join(ds, ".zgroup"))
	require.NoError(t, err)

	for _, code := range []int{301, 302, 307, 308} {
		p.setHook(func(w http.ResponseWriter, r *http.Request) bool {
			if !strings.HasPrefix(r.URL.Path, "/zarr/") {
				return false
			}
			http.Redirect(w, r, other.URL+r.URL.Path, code)
			return true
		})
		// A chunk nobody read yet: its lookup asks the gateway.
		name := filepath.Join(ds, "u10", "0.0.0")
		_, err := os.ReadFile(name)
		require.Error(t, err, "a cross-origin redirect is an error, not data")
		require.True(t, errors.Is(err, syscall.EIO), "redirect %d: want EIO, got %v", code, err)
	}
	assert.Zero(t, other.leaked.Load(), "the token or session id reached another origin")
	assert.Zero(t, other.requests.Load(), "dmfs followed a redirect to another origin")
	m.waitLog(t, "redirect")
	require.NotContains(t, m.proc.out.String(), testToken)
}

func TestCatalogOutageLeavesTheTreeReadable(t *testing.T) {
	g := startGateway(t, "")
	p := newProxy(t, g)
	m := mountThrough(t, p, "--metadata-ttl", "1s")
	ds := filepath.Join(m.Dir, "demo_grid")
	_, err := os.ReadDir(m.Dir) // the catalog read at startup answers this one
	require.NoError(t, err)
	before, err := os.ReadFile(filepath.Join(ds, "u10", ".zarray"))
	require.NoError(t, err)
	chunk := filepath.Join(ds, "u10", "0.0.0")
	cached, err := os.ReadFile(chunk)
	require.NoError(t, err)

	var catalogCalls atomic.Int64
	p.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/datasource") {
			catalogCalls.Add(1)
			http.Error(w, `{"detail": "catalog down"}`, http.StatusInternalServerError)
			return true
		}
		return false
	})
	time.Sleep(1500 * time.Millisecond) // past the TTL: the next listing asks again
	entries, err := os.ReadDir(m.Dir)
	require.NoError(t, err, "the root listing survives the outage")
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	require.Contains(t, names, "demo_grid")
	after, err := os.ReadFile(filepath.Join(ds, "u10", ".zarray"))
	require.NoError(t, err)
	require.Equal(t, before, after)
	again, err := os.ReadFile(chunk)
	require.NoError(t, err)
	require.Equal(t, cached, again)
	other, err := os.ReadFile(filepath.Join(ds, "v10", "0.0.0"))
	require.NoError(t, err, "a chunk never read before is fetched: the zarr endpoint works")
	require.NotEmpty(t, other)
	require.Positive(t, catalogCalls.Load(), "the catalog was asked again (and failed)")
	m.waitLog(t, "catalog refresh failed")
}

// vmHWM is a process's peak resident memory in bytes.
func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// plainBinary is dmfs built without the race detector, whose memory use is
// what users see (the race detector multiplies it).
var plainBinary = sync.OnceValues(func() (string, error) {
	if !raceEnabled {
		return dmfsBin, nil
	}
	bin := filepath.Join(workDir, "dmfs-norace")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/dmfs").CombinedOutput()
	if err != nil {
		return "", errors.New(string(out))
	}
	return bin, nil
})

// endless writes n bytes of zeros without a Content-Length (chunked).
func endless(w http.ResponseWriter, n int64) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	buf := make([]byte, 1<<20)
	for sent := int64(0); sent < n; sent += int64(len(buf)) {
		if _, err := w.Write(buf); err != nil {
			return
		}
	}
}

func TestHugeAnswersDoNotDriveMemory(t *testing.T) {
	bin, err := plainBinary()
	require.NoError(t, err)
	g := startGateway(t, "")
	p := newProxy(t, g)
	var hugeSent atomic.Int64
	p.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		switch {
		case r.URL.Path == "/zarr/demo_stations/.zmetadata" && r.Method == http.MethodGet:
			hugeSent.Add(1)
			endless(w, 200<<20)
			return true
		case r.URL.Path == "/zarr/demo_grid/u10/0.0.0" && r.Method == http.MethodGet:
			hugeSent.Add(1)
			endless(w, 3<<30)
			return true
		}
		return false
	})
	old := dmfsBin
	dmfsBin = bin
	m := mountThrough(t, p, "--cache-size", "64MiB")
	dmfsBin = old

	_, err = os.ReadFile(filepath.Join(m.Dir, "demo_grid", "u10", "0.0.0"))
	require.Error(t, err, "a 3 GB chunk answer cannot be served with a 64 MiB cache")
	_, err = os.ReadDir(filepath.Join(m.Dir, "demo_stations"))
	require.Error(t, err, "a 200 MB .zmetadata is refused")
	// The rest of the mount still works.
	b, err := os.ReadFile(filepath.Join(m.Dir, "demo_grid", "v10", "0.0.0"))
	require.NoError(t, err)
	require.NotEmpty(t, b)
	require.Positive(t, hugeSent.Load())
	peak := vmHWM(t, m.proc.cmd.Process.Pid)
	t.Logf("peak RSS %d MiB with a 64 MiB cache", peak>>20)
	require.LessOrEqual(t, peak, int64(64<<20+64<<20), "peak RSS beyond cache + 64 MiB")
	m.waitLog(t, "larger than", "more than")
}

func TestConcurrentMountsOfOnePathOneWins(t *testing.T) {
	requireFUSE(t)
	g := startGateway(t, "")
	runtime := t.TempDir()
	mp := trackedMountPoint(t)
	env := append(os.Environ(), "DATAMESH_TOKEN="+testToken, "XDG_RUNTIME_DIR="+runtime)

	const n = 3
	type result struct {
		code int
		out  string
	}
	results := make(chan result, n)
	startGate := make(chan struct{})
	for range n {
		go func() {
			<-startGate
			cmd := exec.Command(dmfsBin, "mount", "--service", g.URL, mp)
			cmd.Env = env
			out, _ := cmd.CombinedOutput()
			results <- result{cmd.ProcessState.ExitCode(), string(out)}
		}()
	}
	close(startGate)
	var wins, fives int
	for range n {
		r := <-results
		switch r.code {
		case 0:
			wins++
		case 5:
			fives++
			assert.Contains(t, r.out, mp, "the loser's message names the mount point")
		default:
			t.Errorf("unexpected exit %d: %s", r.code, r.out)
		}
	}
	assert.Equal(t, 1, wins, "exactly one mount succeeds")
	assert.Equal(t, n-1, fives, "the others exit 5")
	// One mount in the table, one session open at the gateway.
	assert.True(t, isMounted(mp))
	var stacked int
	b, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == mp {
			stacked++
		}
	}
	assert.Equal(t, 1, stacked, "no stacked mounts")
	require.Eventually(t, func() bool { return g.counters(t).Sessions.Open == 1 }, 10*time.Second, 100*time.Millisecond,
		"the losers closed any session they acquired")

	un := exec.Command(dmfsBin, "unmount", mp)
	un.Env = env
	out, err := un.CombinedOutput()
	require.NoError(t, err, string(out))
	assert.Zero(t, g.counters(t).Sessions.Open)
}

func TestSecondUserCannotPlantTheStateFolder(t *testing.T) {
	requireFUSE(t)
	requirePrereq(t, os.Geteuid() == 0, "root, to act as a second local user")
	const other = 65534 // nobody: the second local user
	g := startGateway(t, "")
	thief := newRecorder(t)
	tmp := t.TempDir()
	require.NoError(t, os.Chmod(tmp, 0o1777|os.ModeSticky))
	require.NoError(t, os.Chmod(filepath.Dir(tmp), 0o755))
	mp := trackedMountPoint(t)
	victimFile := filepath.Join(t.TempDir(), "notes.txt")
	require.NoError(t, os.WriteFile(victimFile, []byte("root's notes\n"), 0o600))

	// As the other user, before the victim ever ran dmfs: the state folder
	// the victim will use, with a session record pointing at the thief and
	// symlinks where the log and pid files go.
	stateDir := filepath.Join(tmp, "dmfs-0")
	record := fmt.Sprintf(`{"gateway": %q, "id": "planted", "end_time": %q, "pid": 1}`,
		thief.URL, time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	script := fmt.Sprintf("set -e; mkdir -m 0777 %[1]s; ln -s %[2]s %[1]s/%[3]s; ln -s %[2]s %[1]s/%[4]s; printf '%%s' '%[5]s' > %[1]s/%[6]s; chmod 0666 %[1]s/%[6]s",
		stateDir, victimFile, statedir.NameFor(mp, ".log"), statedir.NameFor(mp, ".pid"), record, statedir.NameFor(mp, ".session"))
	plant := exec.Command("/bin/sh", "-c", script)
	plant.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: other, Gid: other}}
	out, err := plant.CombinedOutput()
	require.NoError(t, err, "planting as uid %d: %s", other, out)

	env := append(os.Environ(), "DATAMESH_TOKEN="+testToken, "TMPDIR="+tmp, "DATAMESH_SERVICE="+g.URL)
	env = slices.DeleteFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "XDG_RUNTIME_DIR=") })
	for _, args := range [][]string{{"mount", mp}, {"mount", "--foreground", mp}, {"unmount", mp}} {
		cmd := exec.Command(dmfsBin, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		var exitErr *exec.ExitError
		require.True(t, errors.As(err, &exitErr), "dmfs %v must refuse a state folder another user owns: %s", args, out)
		if args[0] == "mount" {
			assert.Equal(t, 1, exitErr.ExitCode(), "dmfs %v: %s", args, out)
			assert.Contains(t, string(out), stateDir, "the message names the folder")
		}
		assert.False(t, isMounted(mp))
	}
	assert.Zero(t, thief.requests.Load(), "the planted record's gateway was contacted")
	b, err := os.ReadFile(victimFile)
	require.NoError(t, err)
	assert.Equal(t, "root's notes\n", string(b), "a planted symlink was followed")
	assert.Zero(t, g.counters(t).Sessions.Acquired, "no session is acquired with an unsafe state folder")
}

// openFDs counts a process's open file descriptors.
func openFDs(t *testing.T, pid int) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	require.NoError(t, err)
	return len(entries)
}

func TestServeSurvivesAFloodOfUnauthenticatedClients(t *testing.T) {
	g := startGateway(t, "")
	pid := g.proc.cmd.Process.Pid
	baseFDs := openFDs(t, pid)
	long := strings.Repeat("k", 50<<10)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 30 * time.Second}
	var wg sync.WaitGroup
	work := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				req, _ := http.NewRequest(http.MethodGet, g.URL+"/zarr/demo_grid/"+long+strconv.Itoa(i), nil)
				if i%2 == 1 {
					req.Header.Set("X-DATAMESH-TOKEN", "wrong-token")
				}
				resp, err := client.Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	for i := range 5000 {
		work <- i
	}
	close(work)
	wg.Wait()
	client.CloseIdleConnections()

	// Unauthenticated requests leave nothing behind, and the counters
	// themselves need the token.
	resp, err := http.Get(g.URL + "/_dmfs/counters")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	c := g.counters(t)
	assert.Len(t, c.ZarrKeys, 0, "refused requests add no per-key counters")
	peak := vmHWM(t, pid)
	t.Logf("dmfs serve after 5000 refused 50 KB-path requests: peak RSS %d MiB, fds %d (baseline %d)", peak>>20, openFDs(t, pid), baseFDs)
	assert.Less(t, peak, int64(256<<20), "peak RSS of dmfs serve")
	require.Eventually(t, func() bool { return openFDs(t, pid) <= baseFDs+2 }, 60*time.Second, 200*time.Millisecond,
		"dmfs serve still holds the flood's connections")
}
