package session

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const testToken = "tok-S3CRET-value"

// fakeGateway answers /session/ and /zarr/ like the Datamesh gateway and
// records what it was asked.
type fakeGateway struct {
	t   *testing.T
	srv *httptest.Server

	lifetime time.Duration    // of each new session; default 1h
	now      func() time.Time // the gateway's clock; default time.Now
	// acquireStatus, when set, answers an acquire with that status (0: a
	// session) for the n-th acquire, from 1.
	acquireStatus func(n int32) int
	// zarrAuth decides the status for a zarr, /oceanql/ or /data/ request
	// with session id sid: 0 lets the request through to its handler.
	// Default: 401 unless sid is open.
	zarrAuth func(sid string) int
	zarr     http.HandlerFunc // serves authorised zarr requests
	// api serves authorised /oceanql/ and /data/ requests (stage, tables),
	// which zarrAuth decides too.
	api http.HandlerFunc
	// trace, when set, is called with each request once it is answered.
	trace   func(r *http.Request)
	catalog http.HandlerFunc // serves /datasource/...

	acquires atomic.Int32
	zarrReqs atomic.Int32
	apiReqs  atomic.Int32

	mu           sync.Mutex
	open         map[string]bool
	deletes      []string // session ids, in order
	deleteStatus []int    // answers to DELETE in order; then 204
	requests     []*http.Request
}

func newFakeGateway(t *testing.T) *fakeGateway {
	g := &fakeGateway{t: t, lifetime: time.Hour, open: map[string]bool{}}
	g.srv = httptest.NewServer(http.HandlerFunc(g.serve))
	t.Cleanup(g.srv.Close)
	return g
}

func (g *fakeGateway) serve(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	g.requests = append(g.requests, r.Clone(r.Context()))
	g.mu.Unlock()
	if g.trace != nil {
		defer g.trace(r)
	}
	switch {
	case r.URL.Path == "/session/" && r.Method == http.MethodGet:
		n := g.acquires.Add(1)
		if g.acquireStatus != nil {
			if status := g.acquireStatus(n); status != 0 {
				writeJSON(w, status, map[string]string{"detail": "no session for you"})
				return
			}
		}
		id := fmt.Sprintf("s%d", n)
		g.mu.Lock()
		g.open[id] = true
		life := g.lifetime
		g.mu.Unlock()
		now := time.Now().UTC()
		if g.now != nil {
			now = g.now().UTC()
		}
		writeJSON(w, http.StatusOK, map[string]any{
			"id": id, "user": "someone", "creation_time": now.Format("2006-01-02T15:04:05.000000"),
			"end_time": now.Add(life).Format(time.RFC3339Nano), "write": false,
			"allow_multiwrite": false, "verified": true,
		})
	case strings.HasPrefix(r.URL.Path, "/session/") && r.Method == http.MethodDelete:
		id := strings.TrimPrefix(r.URL.Path, "/session/")
		g.mu.Lock()
		g.deletes = append(g.deletes, id)
		status := http.StatusNoContent
		if len(g.deleteStatus) > 0 {
			status, g.deleteStatus = g.deleteStatus[0], g.deleteStatus[1:]
		}
		if status == http.StatusNoContent {
			delete(g.open, id)
		}
		g.mu.Unlock()
		w.WriteHeader(status)
	case strings.HasPrefix(r.URL.Path, "/zarr/") || strings.HasPrefix(r.URL.Path, "/oceanql/") ||
		strings.HasPrefix(r.URL.Path, "/data/"):
		handler := g.zarr
		if strings.HasPrefix(r.URL.Path, "/zarr/") {
			g.zarrReqs.Add(1)
		} else {
			g.apiReqs.Add(1)
			handler = g.api
		}
		sid := r.Header.Get("X-DATAMESH-SESSIONID")
		status := 0
		if g.zarrAuth != nil {
			status = g.zarrAuth(sid)
		} else {
			g.mu.Lock()
			ok := g.open[sid]
			g.mu.Unlock()
			if !ok {
				status = http.StatusUnauthorized
			}
		}
		if status != 0 {
			writeJSON(w, status, map[string]string{"detail": "Session ID required"})
			return
		}
		if handler == nil {
			http.NotFound(w, r)
			return
		}
		handler(w, r)
	case strings.HasPrefix(r.URL.Path, "/datasource/") && g.catalog != nil:
		g.catalog(w, r)
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"detail": "no route"})
	}
}

func (g *fakeGateway) deleted() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.deletes...)
}

func (g *fakeGateway) openSessions() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.open)
}

// lastRequest is the last request with method ("" = any) whose path starts
// with prefix.
func (g *fakeGateway) lastRequest(method, prefix string) *http.Request {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i := len(g.requests) - 1; i >= 0; i-- {
		r := g.requests[i]
		if (method == "" || r.Method == method) && strings.HasPrefix(r.URL.Path, prefix) {
			return g.requests[i]
		}
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// logBuffer collects a client's debug log, safely across goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// testConfig is a fast-retrying configuration for base that logs to logs.
func testConfig(base string, logs *logBuffer) Config {
	cfg := Config{
		Token:            testToken,
		Service:          base,
		ConnectTimeout:   time.Second,
		ReadTimeout:      2 * time.Second,
		ChunkReadTimeout: 2 * time.Second,
		MaxRetries:       3,
		RetryBase:        time.Millisecond,
		RetryMaxElapsed:  5 * time.Second,
		CloseBackoff:     []time.Duration{time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond},
	}
	if logs != nil {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return cfg
}

// newTestClient builds a client and closes it at the end of the test.
func newTestClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	return newClockClient(t, cfg, nil)
}

// newClockClient is newTestClient on clk (nil: the real clock).
func newClockClient(t *testing.T, cfg Config, clk clock) *Client {
	t.Helper()
	c, err := New(cfg)
	require.NoError(t, err)
	if clk != nil {
		c.clock = clk
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = c.Close(ctx)
	})
	return c
}
