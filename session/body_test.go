package session

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// untouched fails the test if it is read.
type untouched struct{ t *testing.T }

func (u untouched) Read([]byte) (int, error) {
	u.t.Error("body read although its Content-Length was refused")
	return 0, io.EOF
}

func TestReadBody(t *testing.T) {
	const limit = 3*firstBlock + 100
	data := bytes.Repeat([]byte("0123456789abcdef"), limit/16+1)
	tests := []struct {
		name      string
		size      int64 // announced; -1 none
		send      int   // bytes sent
		wantErr   string
		permanent bool
	}{
		{name: "announced", size: 1000, send: 1000},
		{name: "announced empty", size: 0, send: 0},
		{name: "announced at the limit", size: limit, send: limit},
		{name: "announced over the limit", size: limit + 1, wantErr: "Content-Length 98405 is more than the 98404 bytes allowed", permanent: true},
		{name: "shorter than announced", size: 100, send: 10, wantErr: "shorter than its Content-Length"},
		{name: "unannounced empty", size: -1, send: 0},
		{name: "unannounced small", size: -1, send: 7},
		{name: "unannounced one block", size: -1, send: firstBlock},
		{name: "unannounced just past one block", size: -1, send: firstBlock + 1},
		{name: "unannounced at the limit", size: -1, send: limit},
		{name: "unannounced past the limit", size: -1, send: limit + 1, wantErr: "body without Content-Length is more than the 98404 bytes allowed", permanent: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, wrap := range []func(io.Reader) io.Reader{
				func(r io.Reader) io.Reader { return r },
				iotest.HalfReader,
				iotest.DataErrReader,
			} {
				var body io.Reader = wrap(bytes.NewReader(data[:tt.send]))
				if tt.permanent && tt.size >= 0 {
					body = untouched{t}
				}
				got, err := readBody(body, tt.size, limit)
				if tt.wantErr != "" {
					require.Error(t, err)
					assert.Contains(t, err.Error(), tt.wantErr)
					assert.Equal(t, tt.permanent, isPermanent(err))
					assert.Equal(t, tt.permanent, errors.Is(err, ErrTooLarge))
					continue
				}
				require.NoError(t, err)
				assert.Equal(t, data[:tt.send], got)
				assert.Equal(t, len(got), cap(got), "no slack kept")
			}
		})
	}
}

// hugeServer answers every zarr key with size bytes, announced or not,
// generated as they are sent, and reports how many it could send.
func hugeServer(t *testing.T, size int64, announce bool) (string, *atomic.Int32, <-chan int64) {
	var gets atomic.Int32
	sent := make(chan int64, 1)
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/session/":
			writeJSON(w, 200, map[string]any{"id": "s1"})
			return
		case !strings.HasPrefix(r.URL.Path, "/zarr/"):
			w.WriteHeader(http.StatusNoContent)
			return
		}
		gets.Add(1)
		if announce {
			w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		}
		var n int64
		for n < size {
			m, err := w.Write(chunk[:min(int64(len(chunk)), size-n)])
			n += int64(m)
			if err != nil {
				break
			}
		}
		select {
		case sent <- n:
		default:
		}
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	t.Cleanup(srv.Close)
	return srv.URL, &gets, sent
}

func TestGetRefusesBodiesOverTheLimit(t *testing.T) {
	const limit = 64 << 20
	tests := []struct {
		name     string
		size     int64
		announce bool
		wantErr  string
	}{
		{name: "announced", size: 2 << 30, announce: true, wantErr: "Content-Length 2147483648 is more than the 67108864 bytes allowed"},
		{name: "unannounced", size: 3 << 30, wantErr: "body without Content-Length is more than the 67108864 bytes allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url, gets, sent := hugeServer(t, tt.size, tt.announce)
			cfg := testConfig(url, nil)
			cfg.MaxObjectSize = limit
			cfg.ChunkReadTimeout = time.Minute
			c := acquired(t, cfg)

			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			start := time.Now()
			_, err := c.Store("ds_1").Get(t.Context(), "u10/0.0")
			elapsed := time.Since(start)
			runtime.ReadMemStats(&after)

			require.ErrorIs(t, err, ErrTooLarge)
			assert.Contains(t, err.Error(), tt.wantErr)
			assert.Contains(t, err.Error(), "/zarr/ds_1/u10/0.0")
			assert.Equal(t, int32(1), gets.Load(), "not retried")
			assert.Less(t, elapsed, 30*time.Second)
			// Everything allocated meanwhile, the server's writes included:
			// about the limit once, not a buffer doubled past it.
			assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(limit+limit/4))
			if tt.announce {
				assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(limit/4), "nothing sized by the announced length")
			}
			// The connection was closed rather than drained: the server
			// could not send the rest.
			select {
			case n := <-sent:
				assert.Less(t, n, tt.size/2)
			case <-time.After(30 * time.Second):
				t.Fatal("the server is still sending")
			}
		})
	}
}

func TestGetLimitAndChunkedBodies(t *testing.T) {
	const limit = 1 << 20
	for _, size := range []int64{0, 1, 5000, limit} {
		t.Run(strconv.FormatInt(size, 10), func(t *testing.T) {
			url, gets, _ := hugeServer(t, size, false)
			cfg := testConfig(url, nil)
			cfg.MaxObjectSize = limit
			c := acquired(t, cfg)
			b, err := c.Store("ds_1").Get(t.Context(), "u10/0.0")
			require.NoError(t, err)
			assert.Equal(t, strings.Repeat("x", int(size)), string(b))
			assert.Equal(t, int32(1), gets.Load())
		})
	}
}

// Each error that another try cannot fix fails after one request (or none,
// when it is known before sending).
func TestPermanentErrorsAreNotRetried(t *testing.T) {
	tests := []struct {
		name string
		// handler of the gateway's zarr keys; the request count is of these
		handler  http.HandlerFunc
		setup    func(t *testing.T, c *Client, srv *httptest.Server)
		call     func(ctx context.Context, c *Client) error
		requests int32
		want     error  // errors.Is, if set
		wantAs   any    // errors.As target, if set
		wantMsg  string // in the message
		notInMsg string
	}{
		{
			name: "redirect to another origin",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "http://127.0.0.1:1/x", http.StatusFound)
			},
			want: ErrRedirect, requests: 1,
		},
		{
			name: "redirect loop",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, r.URL.Path, http.StatusMovedPermanently)
			},
			want: ErrRedirect, requests: maxRedirects + 1,
		},
		{
			name: "Content-Length over the limit",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "1048577")
				_, _ = w.Write(make([]byte, 1<<20+1))
			},
			want: ErrTooLarge, requests: 1,
		},
		{
			name: "unannounced body over the limit",
			handler: func(w http.ResponseWriter, r *http.Request) {
				for range 20 {
					if _, err := w.Write(make([]byte, 64<<10)); err != nil {
						return
					}
					w.(http.Flusher).Flush()
				}
			},
			want: ErrTooLarge, requests: 1,
		},
		{
			name: "session id that cannot be a header",
			setup: func(t *testing.T, c *Client, _ *httptest.Server) {
				c.mu.Lock()
				c.cur = &current{info: Info{ID: "s1\r\nX-Evil: yes"}}
				c.mu.Unlock()
			},
			wantMsg: "header X-Datamesh-Sessionid: invalid value", notInMsg: "Evil", requests: 0,
		},
		{
			name: "malformed URL",
			call: func(ctx context.Context, c *Client) error {
				_, err := c.do(ctx, request{op: "get", method: http.MethodGet, url: c.gateway + "/zarr/%zz", timeout: time.Second})
				return err
			},
			wantMsg: "build request", requests: 0,
		},
		{
			name: "certificate not trusted",
			setup: func(t *testing.T, c *Client, srv *httptest.Server) {
				srv.Config.ErrorLog = log.New(io.Discard, "", 0)
				srv.StartTLS()
				c.gateway = srv.URL // https, and a certificate c does not trust
			},
			wantAs: new(*tls.CertificateVerificationError), wantMsg: "certificate", requests: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var requests, conns atomic.Int32
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				requests.Add(1)
				if tt.handler == nil {
					w.WriteHeader(http.StatusInternalServerError)
					return
				}
				tt.handler(w, r)
			}))
			srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					conns.Add(1)
				}
			}
			var logs logBuffer
			cfg := testConfig("http://127.0.0.1:1", &logs)
			cfg.MaxObjectSize = 1 << 20
			c := newTestClient(t, cfg)
			c.cur = &current{info: Info{ID: "s1"}}
			if tt.setup != nil {
				tt.setup(t, c, srv)
			}
			if srv.URL == "" {
				srv.Start()
				c.gateway = srv.URL
			}
			t.Cleanup(srv.Close)
			call := tt.call
			if call == nil {
				call = func(ctx context.Context, c *Client) error {
					_, err := c.Store("ds_1").Get(ctx, "u10/0.0")
					return err
				}
			}
			err := call(t.Context(), c)
			require.Error(t, err)
			if tt.want != nil {
				assert.ErrorIs(t, err, tt.want)
			}
			if tt.wantAs != nil {
				assert.ErrorAs(t, err, tt.wantAs)
			}
			assert.Contains(t, err.Error(), tt.wantMsg)
			if tt.notInMsg != "" {
				assert.NotContains(t, err.Error(), tt.notInMsg)
				assert.NotContains(t, logs.String(), tt.notInMsg)
			}
			assert.Equal(t, tt.requests, requests.Load(), "requests")
			assert.LessOrEqual(t, conns.Load(), int32(1), "connections")
			assert.NotContains(t, logs.String(), "datamesh retry")
			assert.NotContains(t, err.Error(), testToken)
			c.mu.Lock()
			c.cur = nil // nothing to close on these servers
			c.mu.Unlock()
		})
	}
}
