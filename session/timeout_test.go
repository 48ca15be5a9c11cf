package session

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// drip writes body in pieces with gap between them, flushing each, so that
// the whole answer takes longer than one gap times the number of pieces.
func drip(w http.ResponseWriter, r *http.Request, body []byte, pieces int, gap time.Duration) {
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	step := (len(body) + pieces - 1) / pieces
	for off := 0; off < len(body); off += step {
		if off > 0 {
			select {
			case <-time.After(gap):
			case <-r.Context().Done():
				return
			}
		}
		_, _ = w.Write(body[off:min(off+step, len(body))])
		w.(http.Flusher).Flush()
	}
}

// stall waits until the client gives up on the request.
func stall(r *http.Request) { <-r.Context().Done() }

// A read timeout bounds each gap between bytes, not the transfer: a body
// that keeps arriving for longer than the timeout is read, with one request;
// every zarr key (.zmetadata included) and API call alike.
func TestReadTimeoutIsBetweenBytes(t *testing.T) {
	const timeout = 300 * time.Millisecond
	const pieces, gap = 20, 25 * time.Millisecond // 475 ms in all, each gap well under the timeout
	body := bytes.Repeat([]byte("0123456789"), 1000)
	tests := []struct {
		name string
		call func(c *Client) ([]byte, error)
	}{
		{"chunk", func(c *Client) ([]byte, error) { return c.Store("ds_1").Get(t.Context(), "u10/0.0") }},
		{".zmetadata", func(c *Client) ([]byte, error) { return c.Store("ds_1").Get(t.Context(), ".zmetadata") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGateway(t)
			g.zarr = func(w http.ResponseWriter, r *http.Request) { drip(w, r, body, pieces, gap) }
			cfg := testConfig(g.srv.URL, nil)
			cfg.ReadTimeout = 10 * time.Second // the chunk timeout must be the one applied
			cfg.ChunkReadTimeout = timeout
			c := acquired(t, cfg)
			start := time.Now()
			got, err := tt.call(c)
			require.NoError(t, err)
			assert.Equal(t, body, got)
			assert.Greater(t, time.Since(start), timeout, "the transfer outlasted the timeout")
			assert.Equal(t, int32(1), g.zarrReqs.Load())
		})
	}
	t.Run("catalog", func(t *testing.T) {
		catalog := []byte(`{"features":[` + string(bytes.Repeat([]byte(`{"id":"abc"},`), 500)) + `{"id":"xyz"}]}`)
		var n atomic.Int32
		srv := newHandlerServer(t, func(w http.ResponseWriter, r *http.Request) {
			n.Add(1)
			drip(w, r, catalog, pieces, gap)
		})
		cfg := testConfig(srv, nil)
		cfg.ReadTimeout = timeout
		c := newTestClient(t, cfg)
		list, err := c.Catalog(t.Context(), Query{})
		require.NoError(t, err)
		assert.Len(t, list, 501)
		assert.Equal(t, int32(1), n.Load())
	})
}

// A gap longer than the timeout, before the headers or inside the body, is
// a timeout error (never "not found"), retried as any timeout.
func TestReadTimeoutFires(t *testing.T) {
	const timeout = 150 * time.Millisecond
	tests := []struct {
		name  string
		serve func(w http.ResponseWriter, r *http.Request)
	}{
		{"no headers", func(w http.ResponseWriter, r *http.Request) { stall(r) }},
		{"stops mid-body", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "1000")
			_, _ = w.Write(make([]byte, 100))
			w.(http.Flusher).Flush()
			stall(r)
		}},
		{"stops mid-body, no length", func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write(make([]byte, 100))
			w.(http.Flusher).Flush()
			stall(r)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGateway(t)
			g.zarr = tt.serve
			var logs logBuffer
			cfg := testConfig(g.srv.URL, &logs)
			cfg.ChunkReadTimeout = timeout
			cfg.MaxRetries = 1
			c := acquired(t, cfg)
			_, err := c.Store("ds_1").Get(t.Context(), "u10/0.0")
			require.Error(t, err)
			assert.ErrorIs(t, err, context.DeadlineExceeded)
			assert.Contains(t, err.Error(), "read timeout")
			assert.False(t, errors.Is(err, fs.ErrNotExist))
			assert.Equal(t, int32(2), g.zarrReqs.Load(), "1 try + MaxRetries")
			assert.NotContains(t, err.Error(), testToken)
			assert.NotContains(t, logs.String(), testToken)
		})
	}
}

// With no read timeout (None) a request is bounded by its caller's context.
func TestNoTimeoutIsBoundedByCaller(t *testing.T) {
	g := newFakeGateway(t)
	g.zarr = func(w http.ResponseWriter, r *http.Request) { stall(r) }
	cfg := testConfig(g.srv.URL, nil)
	cfg.ConnectTimeout = NoTimeout
	cfg.ChunkReadTimeout = NoTimeout
	c := acquired(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, err := c.Store("ds_1").Get(ctx, "u10/0.0")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.NotContains(t, err.Error(), "read timeout", "the caller's deadline, not a read timeout")
	assert.Equal(t, int32(1), g.zarrReqs.Load(), "the caller's deadline ends retries")
}

// A restarting gateway (502, 503, 504) is waited out for RetryMaxElapsed,
// whatever MaxRetries, with Retry-After honoured (up to 30 s a wait).
func TestGatewayRestartWaitedOut(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		failures   int32 // answers before a 200; -1: never
		retryAfter string
		wantTries  int32
		wantOK     bool
		wantWaited time.Duration
	}{
		// 30 s waits within 5 min: tries at 0, 30, ... 300 s.
		{name: "502 for ever, Retry-After 30", status: 502, failures: -1, retryAfter: "30", wantTries: 11, wantWaited: 300 * time.Second},
		// Retry-After above the 30 s cap is capped.
		{name: "503 for ever, Retry-After 120", status: 503, failures: -1, retryAfter: "120", wantTries: 11, wantWaited: 300 * time.Second},
		// Backoff 100 ms doubling (0.1 ... 25.6 s: 51.1 s over 9 waits),
		// then 8 waits at the 30 s cap; one more would end past 5 min.
		{name: "504 for ever, backoff", status: 504, failures: -1, wantTries: 18, wantWaited: 291100 * time.Millisecond},
		// Far more restarts than MaxRetries (3), then an answer.
		{name: "502 then up", status: 502, failures: 9, retryAfter: "30", wantTries: 10, wantOK: true, wantWaited: 270 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var n atomic.Int32
			srv := newHandlerServer(t, func(w http.ResponseWriter, r *http.Request) {
				if k := n.Add(1); tt.failures < 0 || k <= tt.failures {
					if tt.retryAfter != "" {
						w.Header().Set("Retry-After", tt.retryAfter)
					}
					w.WriteHeader(tt.status)
					return
				}
				_, _ = w.Write([]byte(`{"features":[]}`))
			})
			cfg := testConfig(srv, nil)
			cfg.RetryBase = 100 * time.Millisecond
			cfg.RetryMaxElapsed = 5 * time.Minute
			c := newTestClient(t, cfg)
			clk := instantRetries(c)
			start := clk.Now()
			_, err := c.Catalog(t.Context(), Query{})
			if tt.wantOK {
				require.NoError(t, err)
			} else {
				var e *Error
				require.ErrorAs(t, err, &e)
				assert.Equal(t, tt.status, e.Status)
			}
			assert.Equal(t, tt.wantTries, n.Load())
			assert.Equal(t, tt.wantWaited, clk.Now().Sub(start))
		})
	}
}
