package session

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// parquetish is a body that stands for a Parquet file.
var parquetish = append(append([]byte("PAR1"), bytes.Repeat([]byte("rows "), 2000)...), "PAR1"...)

// opener is one of the two downloads.
type opener struct {
	name string
	open func(ctx context.Context, c *Client) (*Download, error)
	path string // escaped path asked
}

var openers = []opener{
	{"table", func(ctx context.Context, c *Client) (*Download, error) { return c.OpenTable(ctx, "ds_1") }, "/data/ds_1"},
	{"query", func(ctx context.Context, c *Client) (*Download, error) { return c.OpenQueryTable(ctx, testQHash) },
		"/oceanql/" + testQHash},
}

func TestDownloadRequests(t *testing.T) {
	tests := []struct {
		name      string
		open      func(ctx context.Context, c *Client) (*Download, error)
		wantPath  string
		wantQuery string
	}{
		{name: "table", open: func(ctx context.Context, c *Client) (*Download, error) { return c.OpenTable(ctx, "ds_1") },
			wantPath: "/data/ds_1"},
		{name: "table id escaped", open: func(ctx context.Context, c *Client) (*Download, error) { return c.OpenTable(ctx, "a b?50%") },
			wantPath: "/data/a%20b%3F50%25"},
		{name: "query", open: func(ctx context.Context, c *Client) (*Download, error) { return c.OpenQueryTable(ctx, testQHash) },
			wantPath: "/oceanql/" + testQHash, wantQuery: "f=parquet"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGateway(t)
			var got *http.Request
			g.api = func(w http.ResponseWriter, r *http.Request) {
				got = r.Clone(r.Context())
				w.Header().Set("Content-Length", strconv.Itoa(len(parquetish)))
				_, _ = w.Write(parquetish)
			}
			c := acquired(t, testConfig(g.srv.URL, nil))
			d, err := tt.open(t.Context(), c)
			require.NoError(t, err)
			assert.Equal(t, int64(len(parquetish)), d.Size)
			b, err := io.ReadAll(d)
			require.NoError(t, err)
			require.NoError(t, d.Close())
			assert.Equal(t, parquetish, b)

			require.NotNil(t, got)
			assert.Equal(t, http.MethodGet, got.Method)
			assert.Equal(t, tt.wantPath, got.URL.EscapedPath())
			assert.Equal(t, tt.wantQuery, got.URL.RawQuery)
			assert.Equal(t, "application/parquet", got.Header.Get("Accept"))
			assert.Equal(t, "s1", got.Header.Get("X-DATAMESH-SESSIONID"))
			assert.Equal(t, testToken, got.Header.Get("X-DATAMESH-TOKEN"))
			assert.Equal(t, "Token "+testToken, got.Header.Get("Authorization"))
			assert.Equal(t, int32(1), g.apiReqs.Load())
		})
	}
}

func TestDownloadRefusedBeforeSending(t *testing.T) {
	g := newFakeGateway(t)
	c := newTestClient(t, testConfig(g.srv.URL, nil))
	for _, o := range openers {
		_, err := o.open(t.Context(), c)
		assert.ErrorIs(t, err, ErrNoSession, o.name)
	}
	_, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)
	for _, id := range []string{"", ".", "..", "a/b", "a\x00b"} {
		_, err := c.OpenTable(t.Context(), id)
		assert.ErrorContains(t, err, "datasource id", id)
	}
	for _, qhash := range []string{"", "..", "a/b", "a b", "x?f=nc"} {
		_, err := c.OpenQueryTable(t.Context(), qhash)
		assert.ErrorContains(t, err, "invalid query hash", qhash)
	}
	assert.Zero(t, g.apiReqs.Load())
}

func TestDownloadStatuses(t *testing.T) {
	tests := []struct {
		name       string
		first      func(w http.ResponseWriter, r *http.Request) // the first answer; then the table
		wantIs     error
		wantStatus int
		tries      int32
	}{
		{name: "404", first: status(404), wantIs: fs.ErrNotExist, wantStatus: 404, tries: 1},
		{name: "410", first: status(410), wantIs: ErrGone, wantStatus: 410, tries: 1},
		{name: "403", first: status(403), wantIs: fs.ErrPermission, wantStatus: 403, tries: 1},
		{name: "204 is not a table", first: status(204), wantStatus: 204, tries: 1},
		{name: "503 then the table", first: status(503), tries: 2},
		{name: "dropped before the answer, then the table", first: func(w http.ResponseWriter, r *http.Request) {
			conn, _, _ := w.(http.Hijacker).Hijack()
			_ = conn.Close()
		}, tries: 2},
	}
	for _, tt := range tests {
		for _, o := range openers {
			t.Run(tt.name+"/"+o.name, func(t *testing.T) {
				g := newFakeGateway(t)
				var n atomic.Int32
				g.api = func(w http.ResponseWriter, r *http.Request) {
					if n.Add(1) == 1 {
						tt.first(w, r)
						return
					}
					_, _ = w.Write(parquetish)
				}
				var logs logBuffer
				c := acquired(t, testConfig(g.srv.URL, &logs))
				instantRetries(c)
				d, err := o.open(t.Context(), c)
				assert.Equal(t, tt.tries, g.apiReqs.Load())
				assert.NotContains(t, logs.String(), testToken)
				if tt.wantStatus == 0 {
					require.NoError(t, err)
					b, err := io.ReadAll(d)
					require.NoError(t, err)
					assert.Equal(t, parquetish, b)
					assert.Equal(t, int64(-1), d.Size, "chunked: unknown")
					require.NoError(t, d.Close())
					return
				}
				require.Error(t, err)
				assert.Nil(t, d)
				var e *Error
				require.ErrorAs(t, err, &e)
				assert.Equal(t, tt.wantStatus, e.Status)
				if tt.wantIs != nil {
					assert.ErrorIs(t, err, tt.wantIs)
				}
				assert.Contains(t, err.Error(), o.path)
				assert.NotContains(t, err.Error(), "f=parquet", "no query in errors")
				assert.NotContains(t, err.Error(), testToken)
			})
		}
	}
}

func status(code int) func(w http.ResponseWriter, r *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		if code == http.StatusNoContent {
			w.WriteHeader(code)
			return
		}
		writeJSON(w, code, map[string]string{"detail": "answer " + strconv.Itoa(code)})
	}
}

func TestDownloadRenewsSessionOn401(t *testing.T) {
	for _, o := range openers {
		t.Run(o.name, func(t *testing.T) {
			g := newFakeGateway(t)
			g.zarrAuth = func(sid string) int {
				if sid == "s1" {
					return http.StatusUnauthorized
				}
				return 0
			}
			g.api = func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(parquetish) }
			clk := newFakeClock(time.Now().Truncate(time.Second))
			g.now = clk.Now
			c := newClockClient(t, testConfig(g.srv.URL, nil), clk)
			_, err := c.Acquire(t.Context(), time.Hour)
			require.NoError(t, err)
			advanceWhenArmed(t, clk, minRenewInterval)
			d, err := o.open(t.Context(), c)
			require.NoError(t, err)
			defer d.Close()
			b, err := io.ReadAll(d)
			require.NoError(t, err)
			assert.Equal(t, parquetish, b)
			assert.Equal(t, int32(2), g.acquires.Load())
			assert.Equal(t, int32(2), g.apiReqs.Load())
		})
	}
}

// A large table is streamed: the download is handed over while the gateway
// is still sending (it waits for the reader to have the first bytes), and
// reading all of it allocates a small fraction of its size.
func TestDownloadStreams(t *testing.T) {
	const size = 64 << 20
	const head = 1 << 20
	block := make([]byte, 1<<20)
	for i := range block {
		block[i] = byte(i*7 + i/251)
	}
	want := sha256.New()
	for range size / len(block) {
		_, _ = want.Write(block)
	}
	headRead := make(chan struct{})
	g := newFakeGateway(t)
	g.api = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		_, _ = w.Write(block[:head])
		w.(http.Flusher).Flush()
		select { // the rest only once the client has read the head
		case <-headRead:
		case <-time.After(20 * time.Second):
			return
		}
		_, _ = w.Write(block[head:])
		for range size/len(block) - 1 {
			if _, err := w.Write(block); err != nil {
				return
			}
		}
	}
	cfg := testConfig(g.srv.URL, nil)
	cfg.DownloadTimeout = 30 * time.Second
	c := acquired(t, cfg)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	d, err := c.OpenTable(t.Context(), "big_table")
	require.NoError(t, err)
	defer d.Close()
	assert.Equal(t, int64(size), d.Size)
	h := sha256.New()
	buf := make([]byte, 32<<10)
	n, err := io.CopyBuffer(h, io.LimitReader(d, head), buf)
	require.NoError(t, err)
	require.Equal(t, int64(head), n, "the head arrived before the gateway sent the rest")
	close(headRead)
	m, err := io.CopyBuffer(h, d, buf)
	require.NoError(t, err)
	runtime.ReadMemStats(&after)

	assert.Equal(t, int64(size), n+m)
	assert.Equal(t, want.Sum(nil), h.Sum(nil))
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d bytes receiving %d", alloc, size)
	assert.Less(t, alloc, uint64(size/16), "the body must be streamed, not held")
	assert.Equal(t, int32(1), g.apiReqs.Load())
}

// DATAMESH_DOWNLOAD_TIMEOUT bounds each wait for bytes: a body dripping for
// longer than it, but with shorter gaps, arrives whole; a reader's own
// pauses do not count; a stall longer than it fails the read, without
// another request once the body has started.
func TestDownloadTimeoutBetweenBytes(t *testing.T) {
	const timeout = 300 * time.Millisecond
	body := bytes.Repeat([]byte("0123456789"), 1000)
	tests := []struct {
		name    string
		serve   func(w http.ResponseWriter, r *http.Request)
		pause   time.Duration // the reader's, after its first Read
		wantErr bool
		tries   int32
	}{
		{name: "drips for longer than the timeout", serve: func(w http.ResponseWriter, r *http.Request) {
			drip(w, r, body, 20, 25*time.Millisecond) // 475 ms in all
		}, tries: 1},
		{name: "reader pauses longer than the timeout", serve: func(w http.ResponseWriter, r *http.Request) {
			drip(w, r, body, 2, 10*time.Millisecond)
		}, pause: 2 * timeout, tries: 1},
		{name: "stalls mid-body", serve: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			_, _ = w.Write(body[:100])
			w.(http.Flusher).Flush()
			stall(r)
		}, wantErr: true, tries: 1},
		{name: "stalls mid-body, no length", serve: func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write(body[:100])
			w.(http.Flusher).Flush()
			stall(r)
		}, wantErr: true, tries: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGateway(t)
			g.api = tt.serve
			var logs logBuffer
			cfg := testConfig(g.srv.URL, &logs)
			cfg.ReadTimeout = 50 * time.Millisecond // the download timeout must be the one applied
			cfg.ChunkReadTimeout = 50 * time.Millisecond
			cfg.DownloadTimeout = timeout
			c := acquired(t, cfg)
			// A bound of the test's own, should the timeout not fire.
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			d, err := c.OpenTable(ctx, "ds_1")
			require.NoError(t, err)
			defer d.Close()
			start := time.Now()
			first := make([]byte, 10)
			_, err = io.ReadFull(d, first)
			require.NoError(t, err)
			time.Sleep(tt.pause)
			rest, err := io.ReadAll(d)
			assert.Equal(t, tt.tries, g.apiReqs.Load(), "no retry once the body started")
			if !tt.wantErr {
				require.NoError(t, err)
				assert.Equal(t, body, append(first, rest...))
				if tt.pause == 0 {
					assert.Greater(t, time.Since(start), timeout, "the transfer outlasted the timeout")
				}
				return
			}
			require.Error(t, err)
			assert.ErrorIs(t, err, context.DeadlineExceeded)
			assert.Contains(t, err.Error(), "read timeout")
			assert.Contains(t, err.Error(), "/data/ds_1")
			assert.Less(t, time.Since(start), 5*timeout)
			assert.NotContains(t, err.Error(), testToken)
			assert.NotContains(t, logs.String(), testToken)
			_, again := d.Read(make([]byte, 1))
			assert.Equal(t, err, again, "the failure sticks")
		})
	}
}

// No answer within the timeout is retried, as any timeout before the body.
func TestDownloadTimeoutBeforeAnswerRetried(t *testing.T) {
	g := newFakeGateway(t)
	var n atomic.Int32
	g.api = func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			stall(r)
			return
		}
		_, _ = w.Write(parquetish)
	}
	cfg := testConfig(g.srv.URL, nil)
	cfg.DownloadTimeout = 150 * time.Millisecond
	c := acquired(t, cfg)
	d, err := c.OpenQueryTable(t.Context(), testQHash)
	require.NoError(t, err)
	defer d.Close()
	b, err := io.ReadAll(d)
	require.NoError(t, err)
	assert.Equal(t, parquetish, b)
	assert.Equal(t, int32(2), g.apiReqs.Load())
}

// A body cut short is a read error, not the end of the table, and is not
// retried.
func TestDownloadCutShort(t *testing.T) {
	g := newFakeGateway(t)
	g.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	g.api = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		_, _ = w.Write(make([]byte, 100))
		w.(http.Flusher).Flush()
		conn, _, _ := w.(http.Hijacker).Hijack()
		_ = conn.Close()
	}
	c := acquired(t, testConfig(g.srv.URL, nil))
	d, err := c.OpenTable(t.Context(), "ds_1")
	require.NoError(t, err)
	defer d.Close()
	b, err := io.ReadAll(d)
	require.Error(t, err)
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
	assert.NotErrorIs(t, err, fs.ErrNotExist)
	assert.Len(t, b, 100)
	assert.Equal(t, int32(1), g.apiReqs.Load())
}

// Bytes past Content-Length never reach the reader.
func TestDownloadLongerThanContentLength(t *testing.T) {
	srv := rawServer(t, func(string) string {
		return "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789 and more that does not belong"
	})
	c := acquired(t, testConfig(srv, nil))
	for _, o := range openers {
		d, err := o.open(t.Context(), c)
		require.NoError(t, err, o.name)
		assert.Equal(t, int64(10), d.Size)
		b, err := io.ReadAll(d)
		require.NoError(t, err, o.name)
		assert.Equal(t, "0123456789", string(b), o.name)
		require.NoError(t, d.Close())
	}
}

// Closing a download part-read releases its connection: the gateway stops
// sending. A Read blocked on the network returns once Close is called, and
// later Reads fail.
func TestDownloadCloseReleases(t *testing.T) {
	g := newFakeGateway(t)
	done := make(chan struct{})
	g.api = func(w http.ResponseWriter, r *http.Request) {
		defer close(done)
		chunk := make([]byte, 64<<10)
		w.Header().Set("Content-Length", strconv.Itoa(1<<40))
		for {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}
	c := acquired(t, testConfig(g.srv.URL, nil))
	d, err := c.OpenTable(t.Context(), "ds_1")
	require.NoError(t, err)
	_, err = io.ReadFull(d, make([]byte, 1<<20))
	require.NoError(t, err)
	require.NoError(t, d.Close())
	require.NoError(t, d.Close(), "idempotent")
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the gateway is still sending after Close")
	}
	_, err = d.Read(make([]byte, 1))
	assert.ErrorContains(t, err, "download closed")

	// A Read waiting for bytes.
	release := make(chan struct{})
	defer close(release)
	g.api = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}
	d, err = c.OpenTable(t.Context(), "ds_1")
	require.NoError(t, err)
	readErr := make(chan error, 1)
	go func() {
		_, err := d.Read(make([]byte, 10))
		readErr <- err
	}()
	time.Sleep(50 * time.Millisecond)
	require.NoError(t, d.Close())
	select {
	case err := <-readErr:
		assert.ErrorContains(t, err, "download closed")
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked after Close")
	}
}

// The caller's context covers the body too.
func TestDownloadCancelled(t *testing.T) {
	g := newFakeGateway(t)
	g.api = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		_, _ = w.Write(make([]byte, 10))
		w.(http.Flusher).Flush()
		stall(r)
	}
	c := acquired(t, testConfig(g.srv.URL, nil))
	ctx, cancel := context.WithCancel(t.Context())
	d, err := c.OpenQueryTable(ctx, testQHash)
	require.NoError(t, err)
	defer d.Close()
	_, err = io.ReadFull(d, make([]byte, 10))
	require.NoError(t, err)
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err = io.ReadAll(d)
	require.ErrorIs(t, err, context.Canceled)
	assert.False(t, errors.Is(err, context.DeadlineExceeded), "not a timeout")
}

// A table's download names its version, and a download made with that name
// costs no body while the table is unchanged.
func TestDownloadIfChanged(t *testing.T) {
	mod := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	body := []byte("PAR1 table PAR1")
	cases := []struct {
		name          string
		etag          string // "" sends none
		changed       bool   // the table changes after the first download
		wantValidator string
		wantHeader    string // the conditional header of the second request
	}{
		{"etag, unchanged", `"v1"`, false, `etag:"v1"`, "If-None-Match"},
		{"etag, changed", `"v1"`, true, `etag:"v1"`, "If-None-Match"},
		{"last-modified only, unchanged", "", false, "modified:" + mod.Format(http.TimeFormat), "If-Modified-Since"},
		{"last-modified only, changed", "", true, "modified:" + mod.Format(http.TimeFormat), "If-Modified-Since"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := newFakeGateway(t)
			var version atomic.Int32
			var conditional atomic.Value
			g.api = func(w http.ResponseWriter, r *http.Request) {
				conditional.Store(r.Header.Get(c.wantHeader))
				v, m := version.Load(), mod.Add(time.Duration(version.Load())*time.Hour)
				if c.etag != "" {
					w.Header().Set("ETag", fmt.Sprintf(`"v%d"`, v+1))
				}
				http.ServeContent(w, r, "", m, bytes.NewReader(body))
			}
			client := acquired(t, testConfig(g.srv.URL, nil))
			d, err := client.OpenTable(t.Context(), "ds_1")
			require.NoError(t, err)
			got, err := io.ReadAll(d)
			require.NoError(t, err)
			require.NoError(t, d.Close())
			assert.Equal(t, body, got)
			assert.Equal(t, c.wantValidator, d.Validator)

			if c.changed {
				version.Add(1)
			}
			d2, err := client.OpenTable(t.Context(), "ds_1", IfChanged(d.Validator))
			assert.NotEmpty(t, conditional.Load(), "the second request is conditional")
			if !c.changed {
				require.ErrorIs(t, err, ErrNotModified)
				return
			}
			require.NoError(t, err)
			got, err = io.ReadAll(d2)
			require.NoError(t, err)
			require.NoError(t, d2.Close())
			assert.Equal(t, body, got)
			assert.NotEqual(t, d.Validator, d2.Validator)
		})
	}
}

func TestIfChangedSendsOnlyWhatItCan(t *testing.T) {
	cases := []struct{ validator, header, value string }{
		{"", "", ""},
		{"etag:", "", ""},
		{"crc:123", "", ""},
		{"etag:\"a\nb\"", "", ""},
		{`etag:W/"x"`, "If-None-Match", `W/"x"`},
		{"modified:Wed, 04 Mar 2026 05:06:07 GMT", "If-Modified-Since", "Wed, 04 Mar 2026 05:06:07 GMT"},
	}
	for _, c := range cases {
		r := request{header: http.Header{}}
		IfChanged(c.validator)(&r)
		if c.header == "" {
			assert.Empty(t, r.header, c.validator)
			continue
		}
		assert.Equal(t, c.value, r.header.Get(c.header), c.validator)
	}
}
