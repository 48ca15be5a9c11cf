package gateway

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestClip(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		n        int
		want     string
	}{
		{"short", "abc", 5, "abc"},
		{"exact", "abcde", 5, "abcde"},
		{"cut", "abcdef", 5, "abcde…"},
		{"inside a rune", "abcdé", 5, "abcd…"}, // é is 2 bytes: never half a rune
		{"empty", "", 5, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, clip(tc.in, tc.n))
		})
	}
}

func TestCounterKeyBounds(t *testing.T) {
	long := "u10/" + strings.Repeat("9", MaxCounterKeyBytes)
	type req struct {
		key  string
		auth bool
	}
	tests := []struct {
		name      string
		max       int
		reqs      []req
		wantKeys  map[string]int64
		wantOther int64
		wantAnon  int64
	}{
		{"under the cap", 3, []req{{"u10/0.0.0", true}, {"u10/0.0.1", true}, {"u10/0.0.0", true}},
			map[string]int64{"demo_grid/u10/0.0.0 GET": 2, "demo_grid/u10/0.0.1 GET": 1}, 0, 0},
		{"full: new keys go to other, known keys still count", 2,
			[]req{{"u10/0.0.0", true}, {"u10/0.0.1", true}, {"u10/0.0.2", true}, {"u10/0.1.0", true}, {"u10/0.0.0", true}},
			map[string]int64{"demo_grid/u10/0.0.0 GET": 2, "demo_grid/u10/0.0.1 GET": 1}, 2, 0},
		{"too long", 3, []req{{long, true}, {long, true}, {"u10/0.0.0", true}},
			map[string]int64{"demo_grid/u10/0.0.0 GET": 1}, 2, 0},
		{"unauthenticated: no key at all", 3, []req{{long, false}, {"u10/0.0.0", false}},
			map[string]int64{}, 0, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, Config{Token: testToken, MaxCounterKeys: tc.max})
			sess := acquire(t, s, "")
			s.counters.reset()
			for _, r := range tc.reqs {
				hdr := []string{"X-DATAMESH-TOKEN", "wrong", "X-DATAMESH-SESSIONID", sess.ID}
				if r.auth {
					hdr = withSession(sess.ID)
				}
				call(t, s, http.MethodGet, "/zarr/demo_grid/"+r.key, nil, hdr...)
			}
			c := s.Counters()
			assert.Equal(t, tc.wantKeys, c.ZarrKeys)
			assert.Equal(t, tc.wantOther, c.ZarrKeysOther)
			assert.Equal(t, tc.wantAnon, c.Unauthenticated)
			assert.Equal(t, tc.max, c.ZarrKeysMax)
			assert.Equal(t, int64(len(tc.reqs))-tc.wantAnon, c.Requests)
		})
	}
}

// lineStats is an io.Writer for a logger that keeps only the number of
// lines and the longest one.
type lineStats struct {
	mu          sync.Mutex
	lines, max  int
	cur         int
	sawEllipsis bool
}

func (l *lineStats) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if bytes.Contains(p, []byte("…")) {
		l.sawEllipsis = true
	}
	for _, b := range p {
		if b == '\n' {
			l.lines++
			l.max = max(l.max, l.cur)
			l.cur = 0
			continue
		}
		l.cur++
	}
	return len(p), nil
}

func serveIn(t *testing.T, hs *http.Server, ln net.Listener) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = hs.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = hs.Close()
		<-done
	})
}

func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC() // the second cycle frees what the first one's finalizers released
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestFloodWithLongKeys sends thousands of requests with 50 KB paths,
// unauthenticated and authenticated, over real HTTP, and checks that the
// gateway keeps neither the paths (heap, counters) nor logs them whole.
// Before the bounds, 20k such requests kept 1.78 GB; the 1,200 here (sized
// for -race on a busy machine) would keep over 60 MB.
func TestFloodWithLongKeys(t *testing.T) {
	const (
		perKind = 300 // requests of each kind
		keyLen  = 50 << 10
		workers = 4
	)
	logs := &lineStats{}
	s := newServer(t, Config{Token: testToken, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	sess := acquire(t, s, "")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	serveIn(t, s.NewHTTPServer(nil), ln)
	s.counters.reset()

	kinds := []struct {
		name, hdr string
	}{
		{"no token", "X-DATAMESH-SESSIONID: " + sess.ID + "\r\n"},
		{"wrong token", "X-DATAMESH-TOKEN: wrong\r\nX-DATAMESH-SESSIONID: " + sess.ID + "\r\n"},
		{"token, no session", "X-DATAMESH-TOKEN: " + testToken + "\r\n"},
		{"token and session", "X-DATAMESH-TOKEN: " + testToken + "\r\nX-DATAMESH-SESSIONID: " + sess.ID + "\r\n"},
	}
	total := perKind * len(kinds)
	before := heapAfterGC()
	start := time.Now()
	var next atomic.Int64
	errs := make(chan error, workers)
	for range workers {
		// Raw requests on kept-alive connections: building 50 KB URLs with
		// net/url would cost the test more than the gateway.
		go func() {
			errs <- func() error {
				c, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					return err
				}
				defer c.Close()
				br := bufio.NewReader(c)
				pad := strings.Repeat("k", keyLen)
				for {
					i := int(next.Add(1) - 1)
					if i >= total {
						return nil
					}
					kind := kinds[i%len(kinds)]
					// Each key distinct, as an attacker would make them.
					if _, err := fmt.Fprintf(c, "GET /zarr/demo_grid/%d/%s HTTP/1.1\r\nHost: x\r\n%s\r\n", i, pad, kind.hdr); err != nil {
						return err
					}
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						return fmt.Errorf("%s: %w", kind.name, err)
					}
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err != nil {
						return err
					}
				}
			}()
		}()
	}
	for range workers {
		require.NoError(t, <-errs)
	}
	elapsed := time.Since(start)

	// Heap growth with the server and its counters still alive, against a
	// quarter of the path bytes sent (15 MB).
	after := heapAfterGC()
	growth := int64(after) - int64(before)
	t.Logf("%d requests with %d KB paths in %s; heap after GC %.1f MB -> %.1f MB (growth %+.1f MB)",
		total, keyLen>>10, elapsed.Round(time.Millisecond), float64(before)/(1<<20), float64(after)/(1<<20), float64(growth)/(1<<20))
	assert.Less(t, growth, int64(total*keyLen/4), "heap growth")

	w := call(t, s, http.MethodGet, "/_dmfs/counters", nil, auth...)
	require.Equal(t, 200, w.Code)
	var c Counters
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &c))
	assert.Less(t, w.Body.Len(), 4<<10, "counters document")
	assert.Equal(t, int64(2*perKind), c.Unauthenticated)
	assert.Equal(t, int64(2*perKind), c.Requests, "authenticated requests counted")
	assert.Equal(t, int64(2*perKind), c.ZarrKeysOther, "every long key went to other")
	assert.Empty(t, c.ZarrKeys)

	// One line per request, none with the whole path. A line is written
	// once its handler returns, which can be just after the client has
	// the answer.
	stats := func() (lines, longest int, ellipsis bool) {
		logs.mu.Lock()
		defer logs.mu.Unlock()
		return logs.lines, logs.max, logs.sawEllipsis
	}
	assert.Eventually(t, func() bool { n, _, _ := stats(); return n >= total }, 5*time.Second, 5*time.Millisecond)
	lines, longest, ellipsis := stats()
	t.Logf("counters document: %d bytes; log: %d lines, longest %d bytes", w.Body.Len(), lines, longest)
	assert.GreaterOrEqual(t, lines, total)
	assert.Less(t, longest, 1<<10, "longest log line")
	assert.True(t, ellipsis, "cut paths are marked")
}

// bigStore writes a store "big" whose key "blob" has size bytes.
func bigStore(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "big", ".zgroup"), `{"zarr_format":2}`)
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i * 7)
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "big", "blob"), b, 0o644))
	return dir
}

// smallSendBuffers makes the server's socket send buffers small, so that a
// client that stops reading blocks the server's writes after a few KB
// rather than after megabytes of kernel buffers.
type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(16 << 10)
	}
	return c, err
}

// smallReadDialer dials with a small receive buffer, set before connect so
// that the TCP window stays small.
var smallReadDialer = &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10)
	})
	if err != nil {
		return err
	}
	return serr
}}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(ents)
}

// TestStalledClientsAreCutOff opens 500 connections that stall in every
// way a client can (never send, send half the headers, send half a body,
// never read a large answer, never come back after a small one) and checks
// that the server closes every one within its timeouts. Before the
// timeouts, 2,000 clients that never read held 4,011 fds for minutes.
func TestStalledClientsAreCutOff(t *testing.T) {
	const perKind = 100
	dir := bigStore(t, 4<<20)
	s := newServer(t, Config{Dir: dir, Token: testToken,
		ReadHeaderTimeout: 300 * time.Millisecond, ReadTimeout: 500 * time.Millisecond,
		WriteTimeout: 500 * time.Millisecond, IdleTimeout: 500 * time.Millisecond})
	sess := acquire(t, s, "")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	hs := s.NewHTTPServer(nil)
	var opened, closed atomic.Int64
	hs.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			closed.Add(1)
		}
	}
	serveIn(t, hs, smallSendBuffers{ln})
	addr := ln.Addr().String()

	authHdr := "X-DATAMESH-TOKEN: " + testToken + "\r\nX-DATAMESH-SESSIONID: " + sess.ID + "\r\n"
	kinds := []struct{ name, send string }{
		{"sends nothing", ""},
		{"half the headers", "GET /datasource/ HTTP/1.1\r\nHost: x\r\n"},
		{"half a body", "DELETE /session/" + sess.ID + " HTTP/1.1\r\nHost: x\r\n" + authHdr +
			"Content-Length: 1000\r\n\r\n{\"finalise"},
		{"never reads a large answer", "GET /zarr/big/blob HTTP/1.1\r\nHost: x\r\n" + authHdr + "\r\n"},
		{"idle after a small answer", "GET /datasource/ HTTP/1.1\r\nHost: x\r\n" + authHdr + "\r\n"},
	}
	baseFDs := openFDs(t)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	for _, k := range kinds {
		for range perKind {
			c, err := smallReadDialer.Dial("tcp", addr)
			require.NoError(t, err, k.name)
			conns = append(conns, c)
			if k.send != "" {
				_, err = io.WriteString(c, k.send)
				require.NoError(t, err, k.name)
			}
		}
	}
	total := int64(len(kinds) * perKind)
	peakFDs := openFDs(t)
	// The timeouts are at most 500 ms (a large answer: one 256 KiB piece
	// stalls); 15 s leaves room for a loaded machine and is still far below
	// the minutes the connections were held before.
	deadline := time.Now().Add(15 * time.Second)
	for closed.Load() < total && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	closedAfter := time.Since(start)
	serverSideFDs := openFDs(t) - baseFDs - len(conns) // the test's own ends are still open
	t.Logf("%d stalled connections: %d accepted, %d closed by the server after %s; fds: %d before, %d at peak, %d server-side left",
		total, opened.Load(), closed.Load(), closedAfter.Round(time.Millisecond), baseFDs, peakFDs, serverSideFDs)
	require.Equal(t, total, closed.Load(), "connections the server closed")
	assert.LessOrEqual(t, serverSideFDs, 5, "server fds left (a few for the runtime)")

	// The client side sees each close: an EOF or a reset after whatever the
	// server had written (an answer, or the start of one).
	for i, c := range conns {
		require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
		_, err := io.Copy(io.Discard, c)
		if err != nil {
			assert.NotErrorIs(t, err, os.ErrDeadlineExceeded, "connection %d (%s) still open", i, kinds[i/perKind].name)
		}
	}
}

// TestSlowReaderGetsWholeChunk checks that WriteTimeout bounds a stall, not
// a whole answer: a client reading a 4 MiB chunk slowly, over more than
// twice WriteTimeout, gets every byte.
func TestSlowReaderGetsWholeChunk(t *testing.T) {
	const size = 4 << 20
	const writeTimeout = 400 * time.Millisecond
	dir := bigStore(t, size)
	s := newServer(t, Config{Dir: dir, Token: testToken, WriteTimeout: writeTimeout, ReadTimeout: writeTimeout})
	sess := acquire(t, s, "")
	s.counters.reset()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	serveIn(t, s.NewHTTPServer(nil), smallSendBuffers{ln})

	client := &http.Client{Transport: &http.Transport{DialContext: smallReadDialer.DialContext}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodGet, "http://"+ln.Addr().String()+"/zarr/big/blob", nil)
	require.NoError(t, err)
	for i, hdr := 0, withSession(sess.ID); i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	start := time.Now()
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	// 32 KiB every 10 ms: about 3 MB/s, so the whole answer takes over a
	// second while each 256 KiB piece takes about 80 ms.
	br := bufio.NewReaderSize(resp.Body, 32<<10)
	buf := make([]byte, 32<<10)
	var got int
	for {
		n, err := io.ReadFull(br, buf)
		got += n
		if err != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	elapsed := time.Since(start)
	t.Logf("%d bytes in %s with WriteTimeout %s", got, elapsed.Round(time.Millisecond), writeTimeout)
	assert.Equal(t, size, got)
	assert.Greater(t, elapsed, 2*writeTimeout, "the read was slow enough to outlast one WriteTimeout")
	// Bytes are counted once the handler returns, which can be just after
	// the client has them all.
	assert.Eventually(t, func() bool { return s.Counters().BytesSent == size }, 5*time.Second, 5*time.Millisecond,
		"bytes counted across the pieces: %d", s.Counters().BytesSent)
}

// TestLatencyOutlastsTimeouts checks that --latency longer than the read
// and write timeouts still gets its answer: the write deadline starts at
// the first byte written, and ReadTimeout ends with the request's body.
func TestLatencyOutlastsTimeouts(t *testing.T) {
	s := newServer(t, Config{Token: testToken, Latency: 700 * time.Millisecond,
		ReadTimeout: 200 * time.Millisecond, WriteTimeout: 200 * time.Millisecond})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	serveIn(t, s.NewHTTPServer(nil), ln)
	req, err := http.NewRequest(http.MethodGet, "http://"+ln.Addr().String()+"/datasource/demo_grid", nil)
	require.NoError(t, err)
	req.Header.Set("X-DATAMESH-TOKEN", testToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, 200, resp.StatusCode, string(body))
	assert.Contains(t, string(body), `"demo_grid"`)
}

func TestHTTPServerLimits(t *testing.T) {
	type limits struct {
		readHeader, read, write, idle time.Duration
		maxHeader                     int
	}
	tests := []struct {
		name string
		cfg  Config
		want limits
	}{
		{"defaults", Config{}, limits{DefaultReadHeaderTimeout, DefaultReadTimeout, DefaultWriteTimeout, DefaultIdleTimeout, DefaultMaxHeaderBytes}},
		{"configured", Config{ReadHeaderTimeout: 1, ReadTimeout: 2, WriteTimeout: 3, IdleTimeout: 4, MaxHeaderBytes: 5}, limits{1, 2, 3, 4, 5}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, tc.cfg)
			hs := s.NewHTTPServer(nil)
			assert.Equal(t, tc.want, limits{hs.ReadHeaderTimeout, hs.ReadTimeout, hs.WriteTimeout, hs.IdleTimeout, hs.MaxHeaderBytes})
			assert.Same(t, s, hs.Handler)
		})
	}
	for _, cfg := range []Config{{ReadTimeout: -1}, {WriteTimeout: -1}, {IdleTimeout: -1}, {ReadHeaderTimeout: -1},
		{MaxHeaderBytes: -1}, {MaxCounterKeys: -1}} {
		cfg.Dir = demoDir
		_, err := New(cfg)
		assert.Error(t, err, "%v", cfg)
	}
}

// TestMaxHeaderBytes checks that a request line over MaxHeaderBytes is
// refused before it reaches the handler.
func TestMaxHeaderBytes(t *testing.T) {
	s := newServer(t, Config{Token: testToken})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	serveIn(t, s.NewHTTPServer(nil), ln)
	for _, tc := range []struct {
		name   string
		keyLen int
		want   int
	}{
		{"under the limit", 50 << 10, 401},
		{"over the limit", 2 * DefaultMaxHeaderBytes, http.StatusRequestHeaderFieldsTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := http.Get("http://" + ln.Addr().String() + "/zarr/demo_grid/" + strings.Repeat("k", tc.keyLen))
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, tc.want, resp.StatusCode)
		})
	}
	assert.Equal(t, int64(1), s.Counters().Unauthenticated, "only the request under the limit reached the gateway")
}

// TestPiecewiseAnswersAreWhole checks the answers written piece by piece
// (sendfile in writeStep pieces, ranges, HEAD) against the file, and the
// bytes counted.
func TestPiecewiseAnswersAreWhole(t *testing.T) {
	const size = 3*writeStep + 1234
	dir := bigStore(t, size)
	blob, err := os.ReadFile(filepath.Join(dir, "big", "blob"))
	require.NoError(t, err)
	s := newServer(t, Config{Dir: dir, Token: testToken})
	sess := acquire(t, s, "")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	serveIn(t, s.NewHTTPServer(nil), ln)

	tests := []struct {
		name, method, rng string
		status            int
		want              []byte
	}{
		{"whole", http.MethodGet, "", 200, blob},
		{"range across pieces", http.MethodGet, "bytes=100-600000", 206, blob[100:600001]},
		{"range to the end", http.MethodGet, fmt.Sprintf("bytes=%d-", writeStep-10), 206, blob[writeStep-10:]},
		{"head", http.MethodHead, "", 200, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s.counters.reset()
			req, err := http.NewRequest(tc.method, "http://"+ln.Addr().String()+"/zarr/big/blob", nil)
			require.NoError(t, err)
			for i, hdr := 0, withSession(sess.ID); i+1 < len(hdr); i += 2 {
				req.Header.Set(hdr[i], hdr[i+1])
			}
			if tc.rng != "" {
				req.Header.Set("Range", tc.rng)
			}
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			assert.Equal(t, tc.status, resp.StatusCode)
			assert.True(t, bytes.Equal(tc.want, body), "got %d bytes, want %d", len(body), len(tc.want))
			// Counted as the answer started; its bytes once all were sent,
			// which can be just after the client has them all.
			assert.Equal(t, int64(1), s.Counters().Requests)
			assert.Eventually(t, func() bool { return s.Counters().BytesSent == int64(len(tc.want)) },
				5*time.Second, 5*time.Millisecond, "bytes counted: %d", s.Counters().BytesSent)
		})
	}
}
