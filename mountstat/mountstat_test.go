package mountstat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/internal/testenv"
)

var quiet = slog.New(slog.DiscardHandler)

func sample() Snapshot {
	req := (&RequestCounter{}).Figures()
	req["chunk"] = Requests{Total: 40, Errors: 2, InFlight: 3}
	req["metadata"] = Requests{Total: 1}
	return Snapshot{
		Mountpoint: "/mnt/datamesh",
		PID:        4242,
		Service:    "https://datamesh.example",
		Gateway:    "https://gateway.example",
		Log:        "/run/user/1000/dmfs/mnt.log",
		Metrics:    "http://127.0.0.1:9100/metrics",
		Started:    time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Session:    Session{ID: "sess-secret-id", EndTime: time.Date(2026, 1, 2, 4, 4, 5, 0, time.UTC)},
		Cache: &Cache{Bytes: 3 << 20, MaxBytes: 1 << 30, Entries: 12, Hits: 100, Misses: 20, Fetches: 21,
			FetchErrors: 1, Heads: 5, Prefetches: 9, PrefetchDropped: 2, Evictions: 3},
		Requests: req,
	}
}

func TestKindOf(t *testing.T) {
	cases := []struct{ op, key, want string }{
		{"get", "u10/0.0", "chunk"},
		{"get", "c/0/1", "chunk"},
		{"get", ".zmetadata", "metadata"},
		{"get", "u10/.zarray", "metadata"},
		{"get", "g/.zattrs", "metadata"},
		{"get", ".zgroup", "metadata"},
		{"get", "a/zarr.json", "metadata"},
		{"head", "u10/0.0", "head"},
		{"list", "u10", "listing"},
		{"catalog", "", "catalog"},
		{"datasource", "", "catalog"},
		{"stage", "", "stage"},
		{"download table", "", "download"},
		{"download query", "", "download"},
		{"put", "x/0", "upload"},
		{"delete", "x/0", "delete"},
		{"clear", "", "delete"},
		{"acquire session", "", "session"},
		{"close session", "", "session"},
		{"something new", "", "other"},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, Kinds[kindOf(c.op, c.key)], "%s %s", c.op, c.key)
	}
}

func TestRequestCounterCountsOutcomes(t *testing.T) {
	var c RequestCounter
	done1 := c.Start("get", "a/0")
	done2 := c.Start("get", "a/1")
	done3 := c.Start("get", "a/2")
	done4 := c.Start("head", "a/3")
	f := c.Figures()
	assert.Equal(t, Requests{Total: 3, InFlight: 3}, f["chunk"])
	assert.Equal(t, Requests{Total: 1, InFlight: 1}, f["head"])
	assert.Len(t, f, len(Kinds), "every kind, zeros included")

	done1(200, nil)
	done2(404, nil)                          // a missing key is an answer
	done3(0, errors.New("connection reset")) // no answer
	done4(503, nil)
	f = c.Figures()
	assert.Equal(t, Requests{Total: 3, Errors: 1}, f["chunk"])
	assert.Equal(t, Requests{Total: 1, Errors: 1}, f["head"])
}

func TestRequestCounterIsSafeConcurrently(t *testing.T) {
	var c RequestCounter
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				c.Start("get", "k")(500, nil)
			}
		})
	}
	wg.Wait()
	assert.Equal(t, Requests{Total: 8000, Errors: 8000}, c.Figures()["chunk"])
}

// TestStatusDocumentFields pins the JSON names README documents: a
// rename breaks `dmfs status --json` users.
func TestStatusDocumentFields(t *testing.T) {
	s := sample()
	s.Write = true
	s.Uploads = &Uploads{Pending: 1, InFlight: 1, Uploaded: 2, Failed: 1, SpoolBytes: 10, SpoolMaxBytes: 20}
	b, err := json.Marshal(Status{Version: Version, Mounts: []Mount{{State: StateRunning, Snapshot: s}}})
	require.NoError(t, err)
	var doc struct {
		Version int              `json:"version"`
		Mounts  []map[string]any `json:"mounts"`
	}
	require.NoError(t, json.Unmarshal(b, &doc))
	assert.Equal(t, 1, doc.Version)
	m := doc.Mounts[0]
	assert.ElementsMatch(t, []string{"state", "mountpoint", "pid", "service", "gateway", "write", "log", "metrics",
		"started", "session", "cache", "requests", "uploads"}, keys(m))
	assert.ElementsMatch(t, []string{"id", "end_time"}, keys(m["session"].(map[string]any)))
	assert.ElementsMatch(t, []string{"bytes", "max_bytes", "entries", "hits", "misses", "fetches", "fetch_errors",
		"heads", "prefetches", "prefetch_dropped", "evictions", "memory_file_bytes", "memory_file_peak_bytes"}, keys(m["cache"].(map[string]any)))
	assert.ElementsMatch(t, Kinds[:], keys(m["requests"].(map[string]any)))
	assert.ElementsMatch(t, []string{"total", "errors", "in_flight"}, keys(m["requests"].(map[string]any)["chunk"].(map[string]any)))
	assert.ElementsMatch(t, []string{"pending", "in_flight", "uploaded", "failed", "spool_bytes", "spool_max_bytes"},
		keys(m["uploads"].(map[string]any)))

	// A dead mount has no figures, and says why.
	b, err = json.Marshal(Mount{State: StateDead, Problem: "gone", Snapshot: Snapshot{Mountpoint: "/m", PID: 7}})
	require.NoError(t, err)
	var dead map[string]any
	require.NoError(t, json.Unmarshal(b, &dead))
	assert.ElementsMatch(t, []string{"state", "problem", "mountpoint", "pid"}, keys(dead))
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestFetchReadsWhatHandlerServes(t *testing.T) {
	want := sample()
	calls := 0
	srv := httptest.NewServer(Handler(func() Snapshot { calls++; return want }))
	defer srv.Close()
	dial := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", srv.Listener.Addr().String())
	}
	got, err := Fetch(context.Background(), dial)
	require.NoError(t, err)
	assert.Equal(t, 1, calls, "one snapshot per request")
	assert.Equal(t, want.Session.EndTime.Unix(), got.Session.EndTime.Unix())
	got.Session.EndTime, got.Started = want.Session.EndTime, want.Started
	assert.Equal(t, want, got)

	resp, err := http.Post(srv.URL+statusPath, "text/plain", nil)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode, "GET only")
}

func TestFetchRefusesWhatIsNotASnapshot(t *testing.T) {
	cases := []struct {
		name    string
		handler http.HandlerFunc
		want    string
	}{
		{"error status", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "no", 500) }, "500"},
		{"not JSON", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "<html>") }, "not JSON"},
		{"broken JSON", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"mountpoint": `)
		}, "reading the answer"},
		{"endless JSON", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"mountpoint": "`)
			w.Write(bytes.Repeat([]byte("a"), 2*maxSnapshot))
		}, "reading the answer"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewServer(c.handler)
			defer srv.Close()
			_, err := Fetch(context.Background(), func(ctx context.Context) (net.Conn, error) {
				return net.Dial("tcp", srv.Listener.Addr().String())
			})
			require.Error(t, err)
			assert.Contains(t, err.Error(), c.want)
		})
	}
}

func TestFetchHonoursTheDeadline(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	go func() { // accepts, never answers
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = Fetch(ctx, func(ctx context.Context) (net.Conn, error) { return net.Dial("tcp", l.Addr().String()) })
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 2*time.Second)
}

func listenUnix(t *testing.T, dir string) (*net.UnixListener, string) {
	t.Helper()
	path := filepath.Join(dir, "s.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	require.NoError(t, err)
	return l, path
}

func TestServeOnAUnixSocketUntilClose(t *testing.T) {
	l, path := listenUnix(t, t.TempDir())
	srv := Serve(l, sample, quiet)
	dial := func(ctx context.Context) (net.Conn, error) { return net.Dial("unix", path) }
	got, err := Fetch(context.Background(), dial)
	require.NoError(t, err)
	assert.Equal(t, 4242, got.PID)
	assert.Equal(t, int64(40), got.Requests["chunk"].Total)

	require.NoError(t, srv.Close())
	_, err = Fetch(context.Background(), dial)
	assert.Error(t, err, "closed")
}

// TestServeRefusesOtherUsers connects as another user (nobody) through a
// socket that, unlike the state folder's, anyone could reach: the peer
// credentials still keep the snapshot to its owner.
func TestServeRefusesOtherUsers(t *testing.T) {
	testenv.Require(t, os.Geteuid() == 0, "root, to connect as another user")
	py := testenv.DebianPython
	_, err := os.Stat(py)
	testenv.Require(t, err == nil, py)
	// Not t.TempDir(): its parent is private.
	dir, err := os.MkdirTemp("", "mountstat-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	l, path := listenUnix(t, dir)
	require.NoError(t, os.Chmod(path, 0o777))
	srv := Serve(l, sample, quiet)
	defer srv.Close()

	script := `import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
data = b""
try:
    s.sendall(b"GET /v1/status HTTP/1.0\r\n\r\n")
    while True:
        b = s.recv(4096)
        if not b: break
        data += b
except (ConnectionResetError, BrokenPipeError):
    pass
sys.stdout.write(repr(data))`
	run := func(uid uint32) string {
		cmd := exec.Command(py, "-c", script, path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		return string(out)
	}
	assert.Contains(t, run(0), "sess-secret-id", "root is answered")
	assert.Equal(t, `b''`, run(65534), "another user gets nothing")
}

func TestWriteText(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 34, 5, 0, time.UTC)
	run := sample()
	run.PassthroughMinBytes = 1 << 20
	w := sample()
	w.Mountpoint, w.Write, w.Metrics = "/mnt/w\x1b[2J", true, ""
	w.Service, w.Gateway = "https://s.example", "https://s.example"
	w.Uploads = &Uploads{Pending: 3, InFlight: 2, Uploaded: 10, Failed: 1, SpoolBytes: 5 << 20, SpoolMaxBytes: 4 << 30}
	dead := Mount{State: StateDead, Problem: "its process is gone; run 'dmfs unmount /mnt/d'",
		Snapshot: Snapshot{Mountpoint: "/mnt/d", PID: 99, Gateway: "https://g.example",
			Session: Session{ID: "old", EndTime: now.Add(-time.Minute)}}}
	var b strings.Builder
	WriteText(&b, []Mount{{State: StateRunning, Snapshot: run}, {State: StateRunning, Snapshot: w}, dead}, now)
	want := `/mnt/datamesh  running (pid 4242, read-only, passthrough from 1.0 MiB)
  service   https://datamesh.example (gateway https://gateway.example)
  session   sess-secret-id until 2026-01-02 04:04:05 UTC (in 30m0s)
  log       /run/user/1000/dmfs/mnt.log
  cache     3.0 MiB of 1.0 GiB in 12 entries; 100 hits, 20 misses, 1 fetch errors
  requests  chunk 40, metadata 1; 3 in flight; 2 errors (chunk 2)
  metrics   http://127.0.0.1:9100/metrics

"/mnt/w\x1b[2J"  running (pid 4242, read-write)
  service   https://s.example
  session   sess-secret-id until 2026-01-02 04:04:05 UTC (in 30m0s)
  log       /run/user/1000/dmfs/mnt.log
  cache     3.0 MiB of 1.0 GiB in 12 entries; 100 hits, 20 misses, 1 fetch errors
  requests  chunk 40, metadata 1; 3 in flight; 2 errors (chunk 2)
  uploads   3 pending (2 sending), 10 uploaded, 1 failed; 5.0 MiB of 4.0 GiB spooled

/mnt/d  dead (pid 99): its process is gone; run 'dmfs unmount /mnt/d'
  gateway   https://g.example
  session   old until 2026-01-02 03:33:05 UTC (ended)
`
	assert.Equal(t, want, b.String())

	b.Reset()
	WriteText(&b, nil, now)
	assert.Equal(t, "no dmfs mounts\n", b.String())
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 3 << 30: "3.0 GiB"} {
		assert.Equal(t, want, humanBytes(n))
	}
	assert.Equal(t, "8.0 EiB", humanBytes(1<<63-1))
}
