package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The zarr package's interfaces, restated so that session does not import it.
var (
	_ interface {
		Get(ctx context.Context, key string) ([]byte, error)
		Head(ctx context.Context, key string) (int64, error)
	} = (*Store)(nil)
	_ interface {
		List(ctx context.Context, prefix string) ([]string, error)
	} = (*Store)(nil)
)

// newHandlerServer serves h and returns its URL.
func newHandlerServer(t *testing.T, h http.HandlerFunc) string {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

// acquired is a client of g holding session s1.
func acquired(t *testing.T, cfg Config) *Client {
	t.Helper()
	c := newTestClient(t, cfg)
	_, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)
	return c
}

func TestStoreRequests(t *testing.T) {
	tests := []struct {
		name     string
		call     func(ctx context.Context, s *Store) (any, error)
		method   string
		wantPath string // escaped
		want     any
	}{
		{
			name: "get chunk",
			call: func(ctx context.Context, s *Store) (any, error) {
				b, err := s.Get(ctx, "u10/0.1.2")
				return string(b), err
			},
			method: "GET", wantPath: "/zarr/ds_1/u10/0.1.2", want: "body of /zarr/ds_1/u10/0.1.2",
		},
		{
			name: "get escapes each segment and keeps slashes",
			call: func(ctx context.Context, s *Store) (any, error) {
				b, err := s.Get(ctx, "a b/c%d/e?f#g")
				return string(b), err
			},
			method: "GET", wantPath: "/zarr/ds_1/a%20b/c%25d/e%3Ff%23g", want: "body of /zarr/ds_1/a b/c%d/e?f#g",
		},
		{
			name:   "head",
			call:   func(ctx context.Context, s *Store) (any, error) { return s.Head(ctx, "time/.zarray") },
			method: "HEAD", wantPath: "/zarr/ds_1/time/.zarray", want: int64(len("body of /zarr/ds_1/time/.zarray")),
		},
		{
			name:   "list root",
			call:   func(ctx context.Context, s *Store) (any, error) { return s.List(ctx, "") },
			method: "GET", wantPath: "/zarr/ds_1/", want: []string{".zgroup", "u10/"},
		},
		{
			name:   "list folder",
			call:   func(ctx context.Context, s *Store) (any, error) { return s.List(ctx, "u10/") },
			method: "GET", wantPath: "/zarr/ds_1/u10/", want: []string{".zgroup", "u10/"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGateway(t)
			var got *http.Request
			g.zarr = func(w http.ResponseWriter, r *http.Request) {
				got = r.Clone(r.Context())
				if r.URL.Path == "/zarr/ds_1/" || r.URL.Path == "/zarr/ds_1/u10/" {
					_, _ = w.Write([]byte(`<html><a href="../">up</a><a href=".zgroup">.zgroup</a><a href="u10/">u10/</a></html>`))
					return
				}
				body := "body of " + r.URL.Path
				w.Header().Set("Content-Length", strconv.Itoa(len(body)))
				_, _ = w.Write([]byte(body))
			}
			c := acquired(t, testConfig(g.srv.URL, nil))
			v, err := tt.call(t.Context(), c.Store("ds_1"))
			require.NoError(t, err)
			assert.Equal(t, tt.want, v)
			require.NotNil(t, got)
			assert.Equal(t, tt.method, got.Method)
			assert.Equal(t, tt.wantPath, got.URL.EscapedPath())
			assert.Empty(t, got.URL.RawQuery)
			assert.Equal(t, "s1", got.Header.Get("X-DATAMESH-SESSIONID"))
			assert.Equal(t, testToken, got.Header.Get("X-DATAMESH-TOKEN"))
			assert.Equal(t, "Token "+testToken, got.Header.Get("Authorization"))
		})
	}
}

func TestStoreRejectsBadInput(t *testing.T) {
	g := newFakeGateway(t)
	c := acquired(t, testConfig(g.srv.URL, nil))
	tests := []struct {
		name, id, key, want string
	}{
		{"bad id", "Bad/ID", "a/0", "datasource id"},
		{"parent id", "..", "a/0", "datasource id"},
		{"dot id", ".", "a/0", "datasource id"},
		{"NUL in id", "a\x00b", "a/0", "datasource id"},
		{"256-byte id", strings.Repeat("a", 256), "a/0", "datasource id"},
		{"empty key", "ds_1", "", "empty key"},
		{"parent segment", "ds_1", "../other/.zmetadata", `".." segment`},
		{"dot segment", "ds_1", "a/./0", `"." segment`},
		{"leading slash", "ds_1", "/a/0", "empty path segment"},
		{"double slash", "ds_1", "a//0", "empty path segment"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := g.zarrReqs.Load()
			_, err := c.Store(tt.id).Get(t.Context(), tt.key)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			_, err = c.Store(tt.id).Head(t.Context(), tt.key)
			require.Error(t, err)
			assert.Equal(t, before, g.zarrReqs.Load(), "nothing sent")
		})
	}
}

func TestStoreBeforeAcquire(t *testing.T) {
	g := newFakeGateway(t)
	c := newTestClient(t, testConfig(g.srv.URL, nil))
	_, err := c.Store("ds_1").Get(t.Context(), ".zmetadata")
	assert.ErrorIs(t, err, ErrNoSession)
	_, err = c.Store("ds_1").List(t.Context(), "")
	assert.ErrorIs(t, err, ErrNoSession)
	assert.Zero(t, g.zarrReqs.Load())
}

func TestStoreErrorStatuses(t *testing.T) {
	tests := []struct {
		status         int
		detail         string
		notExist, gone bool
		denied         bool
		wantTries      int32
	}{
		{status: 404, detail: "Key not found", notExist: true, wantTries: 1},
		{status: 410, detail: "Datasource removed", gone: true, wantTries: 1},
		{status: 403, detail: "Not yours", denied: true, wantTries: 1},
		{status: 400, detail: "bad key", wantTries: 1},
		{status: 500, detail: "oops", wantTries: 1},
		// A restart is waited out for RetryMaxElapsed (5s), whatever
		// MaxRetries (3): waits of 1, 2, 4, ... 2048 ms, then 4096 would
		// pass the budget.
		{status: 503, detail: "busy", wantTries: 13},
		{status: 502, wantTries: 13},
		{status: 504, wantTries: 13},
		{status: 429, detail: "slow down", wantTries: 4},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.status), func(t *testing.T) {
			g := newFakeGateway(t)
			g.zarr = func(w http.ResponseWriter, r *http.Request) {
				writeJSON(w, tt.status, map[string]string{"detail": tt.detail})
			}
			var logs logBuffer
			c := acquired(t, testConfig(g.srv.URL, &logs))
			instantRetries(c)
			_, err := c.Store("ds_1").Get(t.Context(), "u10/0.0")
			require.Error(t, err)
			var e *Error
			require.ErrorAs(t, err, &e)
			assert.Equal(t, tt.status, e.Status)
			assert.Equal(t, "get", e.Op)
			assert.Equal(t, g.srv.URL+"/zarr/ds_1/u10/0.0", e.URL)
			assert.Equal(t, tt.notExist, errors.Is(err, fs.ErrNotExist), "ErrNotExist")
			assert.Equal(t, tt.gone, errors.Is(err, ErrGone), "ErrGone")
			assert.Equal(t, tt.denied, errors.Is(err, fs.ErrPermission), "ErrPermission")
			if tt.detail != "" {
				assert.Contains(t, err.Error(), tt.detail)
			}
			assert.Equal(t, tt.wantTries, g.zarrReqs.Load())
			assert.NotContains(t, err.Error(), testToken)
			assert.NotContains(t, logs.String(), testToken)
			assert.Contains(t, logs.String(), "path=/zarr/ds_1/u10/0.0", "debug line per request")
		})
	}
}

func TestRetryThenSuccess(t *testing.T) {
	g := newFakeGateway(t)
	var n atomic.Int32
	g.zarr = func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) <= 2 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("data"))
	}
	c := acquired(t, testConfig(g.srv.URL, nil))
	b, err := c.Store("ds_1").Get(t.Context(), "a/0")
	require.NoError(t, err)
	assert.Equal(t, "data", string(b))
	assert.Equal(t, int32(3), n.Load())
}

func TestRetryTransportErrors(t *testing.T) {
	// A server that drops every connection: retried, bounded, then neither
	// not-exist nor permission.
	ln := httptest.NewUnstartedServer(nil)
	var conns atomic.Int32
	ln.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conns.Add(1)
		hj, ok := w.(http.Hijacker)
		require.True(t, ok)
		conn, _, err := hj.Hijack()
		require.NoError(t, err)
		_ = conn.Close()
	})
	ln.Start()
	t.Cleanup(ln.Close)
	c := newTestClient(t, testConfig(ln.URL, nil))
	_, err := c.Catalog(t.Context(), Query{})
	require.Error(t, err)
	assert.Equal(t, int32(4), conns.Load(), "1 try + MaxRetries")
	assert.False(t, errors.Is(err, fs.ErrNotExist))
	assert.False(t, errors.Is(err, fs.ErrPermission))
}

func TestRetryBoundedByElapsed(t *testing.T) {
	var n atomic.Int32
	srv := newHandlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.WriteHeader(http.StatusBadGateway)
	})
	cfg := testConfig(srv, nil)
	cfg.MaxRetries = 100
	cfg.RetryBase = 20 * time.Millisecond
	cfg.RetryMaxElapsed = 300 * time.Millisecond
	c := newTestClient(t, cfg)
	start := time.Now()
	_, err := c.Catalog(t.Context(), Query{})
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, 502, e.Status)
	assert.Less(t, time.Since(start), time.Second)
	assert.Less(t, n.Load(), int32(10))
	assert.Greater(t, n.Load(), int32(1))
}

func TestRetryAfterHonoured(t *testing.T) {
	var n atomic.Int32
	var first, second time.Time
	srv := newHandlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			first = time.Now()
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		second = time.Now()
		writeJSON(w, 200, map[string]any{"features": []any{}})
	})
	c := newTestClient(t, testConfig(srv, nil))
	_, err := c.Catalog(t.Context(), Query{})
	require.NoError(t, err)
	assert.GreaterOrEqual(t, second.Sub(first), 950*time.Millisecond)
}

func TestCancelStopsRetries(t *testing.T) {
	var n atomic.Int32
	srv := newHandlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	cfg := testConfig(srv, nil)
	cfg.RetryBase = 10 * time.Second
	cfg.RetryMaxElapsed = time.Minute
	c := newTestClient(t, cfg)
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err := c.Catalog(ctx, Query{})
	assert.ErrorIs(t, err, context.Canceled)
	assert.Less(t, time.Since(start), time.Second)
	assert.Equal(t, int32(1), n.Load())
}

func TestCancelDuringRequest(t *testing.T) {
	g := newFakeGateway(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	g.zarr = func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}
	c := acquired(t, testConfig(g.srv.URL, nil))
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err := c.Store("ds_1").Get(ctx, "a/0")
	assert.ErrorIs(t, err, context.Canceled)
	assert.Less(t, time.Since(start), time.Second)
	assert.Equal(t, int32(1), g.zarrReqs.Load())
}

// rawServer answers every request with the raw HTTP response resp.
func rawServer(t *testing.T, resp func(path string) string) string {
	return newHandlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/session/" {
			writeJSON(w, 200, map[string]any{"id": "s1"})
			return
		}
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = buf.WriteString(resp(r.URL.Path))
		_ = buf.Flush()
	})
}

func TestBodyLengthMismatch(t *testing.T) {
	tests := []struct {
		name, raw string
		wantErr   string
	}{
		{name: "shorter than Content-Length", raw: "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", wantErr: "shorter"},
		{name: "exact", raw: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"},
		{name: "no Content-Length, close-delimited", raw: "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n0123456789"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := rawServer(t, func(string) string { return tt.raw })
			c := acquired(t, testConfig(srv, nil))
			b, err := c.Store("ds_1").Get(t.Context(), "a/0")
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Nil(t, b)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.False(t, errors.Is(err, fs.ErrNotExist))
				return
			}
			require.NoError(t, err)
			assert.Equal(t, "0123456789", string(b))
		})
	}
}

func TestHeadNeedsContentLength(t *testing.T) {
	srv := rawServer(t, func(string) string { return "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" })
	c := acquired(t, testConfig(srv, nil))
	_, err := c.Store("ds_1").Head(t.Context(), "a/0")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no Content-Length")
}

func TestParseListing(t *testing.T) {
	tests := []struct {
		name, html string
		want       []string
	}{
		{
			name: "typical",
			html: `<html><body><a href="../">../</a>
<a href=".zattrs">.zattrs</a><a href='.zgroup'>x</a>
<A HREF="u10/">u10/</A> <a class="k" href=lat/>lat</a></body></html>`,
			want: []string{".zattrs", ".zgroup", "u10/", "lat/"},
		},
		{
			name: "decoded and unescaped",
			html: `<a href="a%20b">1</a><a href="x&amp;y">2</a><a href="./c.0">3</a>`,
			want: []string{"a b", "x&y", "c.0"},
		},
		{
			name: "absolute, query, fragment and parent links ignored",
			html: `<a href="http://elsewhere/x">1</a><a href="//cdn/x">2</a><a href="/zarr/other/">3</a>
<a href="?C=M;O=A">4</a><a href="#top">5</a><a href="..">6</a><a href="">7</a><a href="mailto:x@y">8</a><a href="ok">9</a>`,
			want: []string{"ok"},
		},
		{name: "duplicates once", html: `<a href="a">a</a><a href="a">a</a>`, want: []string{"a"}},
		{name: "empty", html: `<html></html>`, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, parseListing([]byte(tt.html)))
		})
	}
}

// Get reads into a buffer sized from Content-Length: one allocation of the
// body's size, whatever the size.
func BenchmarkGet(b *testing.B) {
	body := make([]byte, 1<<20)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/session/" {
			writeJSON(w, 200, map[string]any{"id": "s1"})
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	c, err := New(testConfig(srv.URL, nil))
	require.NoError(b, err)
	defer c.Close(context.Background())
	_, err = c.Acquire(context.Background(), time.Hour)
	require.NoError(b, err)
	st := c.Store("ds_1")
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			got, err := st.Get(context.Background(), "u10/0.0")
			if err != nil || len(got) != len(body) {
				b.Fatal(fmt.Sprint(len(got), err))
			}
		}
	})
}

func TestGoneDatasourceIsLoggedOnce(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/session/") {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"id":"s1","user":"u","creation_time":"2026-01-01T00:00:00Z","end_time":"2099-01-01T00:00:00Z"}`)
			return
		}
		w.WriteHeader(http.StatusGone)
		fmt.Fprint(w, `{"detail":"Datasource removed"}`)
	}))
	defer srv.Close()
	var logs bytes.Buffer
	c, err := New(Config{Token: "tok", Service: srv.URL, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.NoError(t, err)
	_, err = c.Acquire(context.Background(), time.Hour)
	require.NoError(t, err)
	defer c.Close(context.Background())
	st := c.Store("old_ds")
	for _, key := range []string{"a/0", "a/1", "b/0"} {
		_, err := st.Get(context.Background(), key)
		assert.NotErrorIs(t, err, fs.ErrNotExist, "a read error (EIO), never a fill value")
		assert.ErrorIs(t, err, ErrGone)
	}
	_, err = st.Head(context.Background(), "a/2")
	assert.ErrorIs(t, err, ErrGone)
	assert.Equal(t, 1, strings.Count(logs.String(), "gone (410)"), logs.String())
}

func TestRefusedConnectRetriesDependOnFirstContact(t *testing.T) {
	retries := func(logs *logBuffer) int { return strings.Count(logs.String(), "datamesh retry") }

	// An address that never answered: a wrong URL or a server not running.
	// `dmfs mount` must say so quickly, after firstContactRetries.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadURL := "http://" + ln.Addr().String()
	require.NoError(t, ln.Close())
	logs := &logBuffer{}
	cfg := testConfig(deadURL, logs)
	cfg.MaxRetries = 6
	c := newTestClient(t, cfg)
	_, err = c.Acquire(t.Context(), time.Hour)
	require.ErrorIs(t, err, syscall.ECONNREFUSED)
	assert.Equal(t, firstContactRetries, retries(logs))

	// Once the gateway has answered, a refused connection is a restart:
	// waited out for RetryMaxElapsed (5s) whatever MaxRetries: waits of 1,
	// 2, 4, ... 2048 ms.
	g := newFakeGateway(t)
	logs = &logBuffer{}
	cfg = testConfig(g.srv.URL, logs)
	cfg.MaxRetries = 6
	c = acquired(t, cfg)
	instantRetries(c)
	g.srv.Close()
	_, err = c.Catalog(t.Context(), Query{})
	require.ErrorIs(t, err, syscall.ECONNREFUSED)
	assert.Equal(t, 12, retries(logs))
}
