package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/zarr"
)

// write is one WriteAt a sink's writer received.
type write struct{ off, n int64 }

// recordedWriter is the writer of one sink call: a buffer of the announced
// size, with the writes it received, in order. failAfter > 0 fails every
// write once that many bytes were written.
type recordedWriter struct {
	mu        sync.Mutex
	buf       []byte
	writes    []write
	written   int64
	failAfter int64
}

var errWrite = errors.New("disk on fire")

func (w *recordedWriter) WriteAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failAfter > 0 && w.written >= w.failAfter {
		return 0, errWrite
	}
	if off < 0 || off+int64(len(p)) > int64(len(w.buf)) {
		return 0, fmt.Errorf("write [%d, %d) outside %d bytes", off, off+int64(len(p)), len(w.buf))
	}
	copy(w.buf[off:], p)
	w.writes = append(w.writes, write{off, int64(len(p))})
	w.written += int64(len(p))
	return len(p), nil
}

// recordingSink records each call's size and writer; err, when set, is
// what every call returns.
type recordingSink struct {
	mu        sync.Mutex
	sizes     []int64
	writers   []*recordedWriter
	err       error
	failAfter int64
}

var errSink = errors.New("no room for it")

func (s *recordingSink) sink(size int64) (io.WriterAt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sizes = append(s.sizes, size)
	if s.err != nil {
		return nil, s.err
	}
	w := &recordedWriter{buf: make([]byte, size), failAfter: s.failAfter}
	s.writers = append(s.writers, w)
	return w, nil
}

// last is the writer of the last call.
func (s *recordingSink) last(t *testing.T) *recordedWriter {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	require.NotEmpty(t, s.writers, "sink never called")
	return s.writers[len(s.writers)-1]
}

// sequential asserts that w got its bytes in order from 0, each write no
// larger than the copy buffer: bodies go through the reused buffers.
func sequential(t *testing.T, w *recordedWriter) {
	t.Helper()
	var next int64
	for _, wr := range w.writes {
		assert.Equal(t, next, wr.off, "writes at increasing offsets from 0")
		assert.LessOrEqual(t, wr.n, int64(copyBufferSize))
		next += wr.n
	}
	assert.Equal(t, int64(len(w.buf)), next, "every byte written once")
}

func TestGetToWritesSizedBodiesToTheSink(t *testing.T) {
	value := bytes.Repeat([]byte("0123456789abcdef"), (3*copyBufferSize+17)/16+1)
	tests := []struct {
		name  string
		value []byte
		sized bool // a Content-Length, else a chunked answer
	}{
		{name: "small", value: value[:1000], sized: true},
		{name: "empty", value: []byte{}, sized: true},
		{name: "several copy buffers", value: value, sized: true},
		{name: "chunked small: bytes returned", value: value[:1000]},
		{name: "chunked large: bytes returned", value: value},
		{name: "chunked empty: bytes returned", value: []byte{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGateway(t)
			g.zarr = func(w http.ResponseWriter, r *http.Request) {
				if tt.sized {
					w.Header().Set("Content-Length", strconv.Itoa(len(tt.value)))
				} else {
					w.(http.Flusher).Flush() // headers out without a length
				}
				_, _ = w.Write(tt.value)
			}
			logs := &logBuffer{}
			c := acquired(t, testConfig(g.srv.URL, logs))
			var s recordingSink
			got, err := c.Store("ds_1").GetTo(t.Context(), "a/0", s.sink)
			require.NoError(t, err)
			assert.Equal(t, int32(1), g.zarrReqs.Load(), "requests")
			assert.Contains(t, logs.String(), "bytes="+strconv.Itoa(len(tt.value)), "the debug log counts the body")
			if !tt.sized {
				assert.Equal(t, tt.value, got)
				assert.Empty(t, s.sizes, "sink not called without a Content-Length")
				return
			}
			assert.True(t, got == nil, "nil bytes: the value is in the sink (got %d)", len(got))
			assert.Equal(t, []int64{int64(len(tt.value))}, s.sizes)
			w := s.last(t)
			assert.True(t, bytes.Equal(tt.value, w.buf), "bytes in the sink differ")
			sequential(t, w)
		})
	}
}

// A short body is retried as by Get: the retry calls sink again and writes
// the value again from offset 0.
func TestGetToRewritesAfterAShortBody(t *testing.T) {
	const value = "0123456789abcdefghijklmnopqrstuvwxyz"
	var hits atomic.Int32
	srv := rawServer(t, func(string) string {
		body := value
		if hits.Add(1) == 1 {
			body = value[:10]
		}
		return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(value), body)
	})
	c := acquired(t, testConfig(srv, nil))
	var s recordingSink
	got, err := c.Store("ds_1").GetTo(t.Context(), "a/0", s.sink)
	require.NoError(t, err)
	assert.True(t, got == nil, "nil bytes (got %d)", len(got))
	assert.Equal(t, int32(2), hits.Load(), "one retry")
	assert.Equal(t, []int64{int64(len(value)), int64(len(value))}, s.sizes, "sink called once per attempt")
	require.Len(t, s.writers, 2)
	assert.Equal(t, value[:10], string(s.writers[0].buf[:s.writers[0].written]), "the short attempt wrote what it got")
	assert.Equal(t, value, string(s.writers[1].buf))
	sequential(t, s.writers[1])
}

func TestGetToRefusesLengthsOverTheLimitBeforeTheSink(t *testing.T) {
	const size = 2 << 20
	tests := []struct {
		name     string
		maxSize  int64
		ctxLimit int64 // zarr.WithSizeLimit, if > 0
	}{
		{name: "MaxObjectSize", maxSize: size - 1},
		{name: "the caller's limit", maxSize: 64 << 20, ctxLimit: 1 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url, gets, _ := hugeServer(t, size, true)
			cfg := testConfig(url, nil)
			cfg.MaxObjectSize = tt.maxSize
			c := acquired(t, cfg)
			ctx := t.Context()
			if tt.ctxLimit > 0 {
				ctx = zarr.WithSizeLimit(ctx, tt.ctxLimit)
			}
			var s recordingSink
			got, err := c.Store("ds_1").GetTo(ctx, "a/0", s.sink)
			require.ErrorIs(t, err, ErrTooLarge)
			assert.True(t, got == nil, "nil bytes (got %d)", len(got))
			assert.Contains(t, err.Error(), "Content-Length 2097152 is more than the")
			assert.Empty(t, s.sizes, "sink never called")
			assert.Equal(t, int32(1), gets.Load(), "not retried")
		})
	}
}

// A sink that cannot take the value fails the read at once: another try
// would write to the same place.
func TestGetToSinkFailureIsNotRetried(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), (3*rangePart+12345)/16)
	tests := []struct {
		name      string
		value     []byte
		hint      int64 // zarr.WithSizeHint: > 0 fetches big in parts
		sinkErr   error
		failAfter int64
		want      error
		wantMsg   string
		// most requests of each Range ("" for none): 1 means no retry
		requests int32
	}{
		{name: "sink refuses", value: big[:5000], sinkErr: errSink, want: errSink,
			wantMsg: "sink for 5000 bytes: no room for it", requests: 1},
		{name: "writer fails", value: big[:3*copyBufferSize], failAfter: copyBufferSize, want: errWrite,
			wantMsg: fmt.Sprintf("write %d body bytes at offset %d: disk on fire", copyBufferSize, copyBufferSize), requests: 1},
		{name: "parts: sink refuses the total", value: big, hint: int64(len(big)), sinkErr: errSink, want: errSink,
			wantMsg: fmt.Sprintf("sink for %d bytes: no room for it", len(big)), requests: 1},
		{name: "parts: writer fails", value: big, hint: int64(len(big)), failAfter: rangePart + 1, want: errWrite,
			wantMsg: "disk on fire", requests: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGateway(t)
			var mu sync.Mutex
			hits := map[string]int32{}
			g.zarr = func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				hits[r.Header.Get("Range")]++
				mu.Unlock()
				serveContent(w, r, 0, tt.value)
			}
			cfg := testConfig(g.srv.URL, nil)
			cfg.ChunkReadTimeout = 30 * time.Second // as in TestGetInParts
			c := acquired(t, cfg)
			ctx := t.Context()
			if tt.hint > 0 {
				ctx = zarr.WithSizeHint(ctx, tt.hint)
			}
			s := recordingSink{err: tt.sinkErr, failAfter: tt.failAfter}
			got, err := c.Store("ds_1").GetTo(ctx, "a/0", s.sink)
			require.Error(t, err)
			assert.True(t, got == nil, "nil bytes (got %d)", len(got))
			assert.ErrorIs(t, err, tt.want)
			assert.Contains(t, err.Error(), tt.wantMsg)
			assert.Contains(t, err.Error(), "/zarr/ds_1/a/0")
			assert.Len(t, s.sizes, 1, "sink called once")
			mu.Lock()
			defer mu.Unlock()
			require.NotEmpty(t, hits)
			for rng, n := range hits {
				assert.LessOrEqual(t, n, tt.requests, "requests of Range %q", rng)
			}
		})
	}
}

func TestGetToInParts(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), (3*rangePart+12345)/16) // 3 full parts and a bit
	mod := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	n := int64(len(big))
	cases := []struct {
		name  string
		value []byte
		serve func(w http.ResponseWriter, r *http.Request, n int32, value []byte)
		// requests expected, how many carried a Range, and the sink's sizes
		requests, ranged int32
		sizes            []int64
	}{
		{"large value in parallel parts", big, serveContent, 4, 4, []int64{n}},
		{"hinted large but small: one ranged GET", []byte("tiny"), serveContent, 1, 1, []int64{4}},
		{"Range not honoured: the first answer is the whole value", big,
			func(w http.ResponseWriter, r *http.Request, _ int32, v []byte) {
				w.Header().Set("Content-Length", strconv.Itoa(len(v)))
				_, _ = w.Write(v)
			}, 1, 1, []int64{n}},
		{"Range not honoured, no Content-Length: bytes returned", big,
			func(w http.ResponseWriter, r *http.Request, _ int32, v []byte) { _, _ = w.Write(v) }, 1, 1, nil},
		{"changed between parts: fetched again whole", big,
			func(w http.ResponseWriter, r *http.Request, n int32, v []byte) {
				// As in TestGetInParts: only the last part to arrive (and
				// the refetch) sees the change.
				m := mod
				if n > 3 {
					m = mod.Add(time.Hour)
				}
				http.ServeContent(w, r, "", m, bytes.NewReader(v))
			}, 5, 4, []int64{n, n}},
		{"empty value: one ranged GET", []byte{}, serveContent, 1, 1, []int64{0}},
		{"416 to the first part: one plain GET", []byte("v"),
			func(w http.ResponseWriter, r *http.Request, _ int32, v []byte) {
				if r.Header.Get("Range") != "" {
					w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
					return
				}
				_, _ = w.Write(v)
			}, 2, 1, []int64{1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			client, requests, ranged := partsClient(t, func(w http.ResponseWriter, r *http.Request, n int32) {
				c.serve(w, r, n, c.value)
			})
			var s recordingSink
			ctx := zarr.WithSizeHint(context.Background(), rangeThreshold)
			got, err := client.Store("ds_1").GetTo(ctx, "a/0.0", s.sink)
			require.NoError(t, err)
			assert.Equal(t, c.sizes, s.sizes, "sink calls")
			assert.Equal(t, c.requests, requests.Load(), "requests")
			assert.Equal(t, c.ranged, ranged.Load(), "ranged requests")
			if c.sizes == nil {
				assert.True(t, bytes.Equal(c.value, got), "bytes differ (got %d, want %d)", len(got), len(c.value))
				return
			}
			assert.True(t, got == nil, "nil bytes: the value is in the sink (got %d)", len(got))
			w := s.last(t)
			assert.True(t, bytes.Equal(c.value, w.buf), "bytes in the sink differ")
			assert.Equal(t, int64(len(c.value)), w.written, "each byte written once")
			// Every part, the first included, arrives through the copy
			// buffers, never through a buffer of its own.
			for _, wr := range w.writes {
				assert.LessOrEqual(t, wr.n, int64(copyBufferSize), "write at %d", wr.off)
			}
		})
	}
}

// Writing to a sink costs no fresh memory per body: many values of 1 MiB
// allocate far less than one of them each.
func TestGetToAllocatesNoBodies(t *testing.T) {
	value := bytes.Repeat([]byte("x"), 1<<20)
	g := newFakeGateway(t)
	g.zarr = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(value)))
		_, _ = w.Write(value)
	}
	c := acquired(t, testConfig(g.srv.URL, nil))
	st := c.Store("ds_1")
	dst := make(bytesAt, len(value))
	sink := func(int64) (io.WriterAt, error) { return dst, nil }
	_, err := st.GetTo(t.Context(), "a/0", sink) // warm: connection, pool
	require.NoError(t, err)

	const rounds = 16
	measure := func(get func() error) uint64 {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range rounds {
			require.NoError(t, get())
		}
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	sunk := measure(func() error {
		b, err := st.GetTo(t.Context(), "a/0", sink)
		assert.True(t, b == nil, "nil bytes (got %d)", len(b))
		return err
	})
	plain := measure(func() error {
		b, err := st.Get(t.Context(), "a/0")
		assert.Len(t, b, len(value))
		return err
	})
	assert.Equal(t, value, []byte(dst))
	assert.GreaterOrEqual(t, plain, uint64(rounds*len(value)), "Get: a buffer per body")
	assert.Less(t, sunk, uint64(rounds*len(value)/8), "GetTo: no buffer per body")
}

func BenchmarkGetTo(b *testing.B) {
	value := bytes.Repeat([]byte("0123456789abcdef"), (512<<10)/16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/session/":
			writeJSON(w, 200, map[string]any{"id": "s1"})
		case strings.HasPrefix(r.URL.Path, "/zarr/"):
			w.Header().Set("Content-Length", strconv.Itoa(len(value)))
			_, _ = w.Write(value)
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	b.Cleanup(srv.Close)
	c, err := New(testConfig(srv.URL, nil))
	require.NoError(b, err)
	b.Cleanup(func() { _ = c.Close(context.Background()) })
	_, err = c.Acquire(b.Context(), time.Hour)
	require.NoError(b, err)
	st := c.Store("ds_1")
	dst := make(bytesAt, len(value))
	sink := func(int64) (io.WriterAt, error) { return dst, nil }
	for _, bc := range []struct {
		name string
		get  func() ([]byte, error)
	}{
		{"Get", func() ([]byte, error) { return st.Get(b.Context(), "a/0") }},
		{"GetTo", func() ([]byte, error) { return st.GetTo(b.Context(), "a/0", sink) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(value)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bc.get(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
