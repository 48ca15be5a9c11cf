package session

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// writeConfig is testConfig for a write client.
func writeConfig(base string, logs *logBuffer) Config {
	cfg := testConfig(base, logs)
	cfg.Write = true
	return cfg
}

// seen is one request as the gateway saw it, body included.
type seen struct {
	method, path, rawPath, query, session string
	contentLength                         int64
	header                                http.Header
	body                                  []byte
}

// writeRecorder records zarr requests with their bodies, in arrival order.
type writeRecorder struct {
	mu   sync.Mutex
	reqs []seen
}

func (rc *writeRecorder) record(r *http.Request) seen {
	body, _ := io.ReadAll(r.Body)
	s := seen{method: r.Method, path: r.URL.Path, rawPath: r.URL.EscapedPath(), query: r.URL.RawQuery,
		session: r.Header.Get("X-DATAMESH-SESSIONID"), contentLength: r.ContentLength, header: r.Header.Clone(), body: body}
	rc.mu.Lock()
	rc.reqs = append(rc.reqs, s)
	rc.mu.Unlock()
	return s
}

func (rc *writeRecorder) all() []seen {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]seen(nil), rc.reqs...)
}

// spool writes b to a temporary file, as the fs layer spools a file.
func spool(t *testing.T, b []byte) *os.File {
	f, err := os.Create(filepath.Join(t.TempDir(), "spool"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = f.Close() })
	_, err = f.Write(b)
	require.NoError(t, err)
	return f
}

func TestAcquireSendsAllowMultiwrite(t *testing.T) {
	for _, multi := range []bool{false, true} {
		t.Run(strconv.FormatBool(multi), func(t *testing.T) {
			g := newFakeGateway(t)
			cfg := writeConfig(g.srv.URL, nil)
			cfg.AllowMultiwrite = multi
			c := newTestClient(t, cfg)
			_, err := c.Acquire(t.Context(), time.Hour)
			require.NoError(t, err)
			r := g.lastRequest(http.MethodGet, "/session/")
			require.NotNil(t, r)
			assert.Equal(t, strconv.FormatBool(multi), r.URL.Query().Get("allow_multiwrite"))
			assert.Equal(t, "3600", r.URL.Query().Get("duration"))
		})
	}
}

func TestPutRequest(t *testing.T) {
	tests := []struct {
		name, key, wantPath string
		body                []byte
	}{
		{"chunk", "u10/0.0", "/zarr/ds_1/u10/0.0", []byte("chunk bytes")},
		{"metadata", ".zmetadata", "/zarr/ds_1/.zmetadata", []byte(`{"zarr_consolidated_format":1}`)},
		{"escaped", "a b/c%d#e?f", "/zarr/ds_1/a%20b/c%25d%23e%3Ff", []byte{0, 1, 2, 255}},
		{"empty", "v3/c/0", "/zarr/ds_1/v3/c/0", []byte{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGateway(t)
			var rc writeRecorder
			g.zarr = func(w http.ResponseWriter, r *http.Request) { rc.record(r); w.WriteHeader(http.StatusOK) }
			c := newTestClient(t, writeConfig(g.srv.URL, nil))
			info, err := c.Acquire(t.Context(), time.Hour)
			require.NoError(t, err)

			require.NoError(t, c.Store("ds_1").Put(t.Context(), tt.key, spool(t, tt.body), int64(len(tt.body))))
			reqs := rc.all()
			require.Len(t, reqs, 1)
			r := reqs[0]
			assert.Equal(t, http.MethodPost, r.method)
			assert.Equal(t, tt.wantPath, r.rawPath)
			assert.Empty(t, r.query)
			assert.Equal(t, info.ID, r.session)
			assert.Equal(t, int64(len(tt.body)), r.contentLength)
			assert.Equal(t, strconv.Itoa(len(tt.body)), r.header.Get("Content-Length"))
			assert.Empty(t, r.header.Values("Transfer-Encoding"))
			assert.Equal(t, "Token "+testToken, r.header.Get("Authorization"))
			assert.Equal(t, testToken, r.header.Get("X-DATAMESH-TOKEN"))
			assert.Equal(t, tt.body, r.body)
			assert.Equal(t, WriteReport{Staged: []string{"ds_1/" + tt.key}}, c.WriteReport())
		})
	}
}

// A 64 MiB spool file goes out streamed: the bytes arrive intact and the
// process allocates a small fraction of them while sending.
func TestPutStreamsLargeFile(t *testing.T) {
	const size = 64 << 20
	f, err := os.Create(filepath.Join(t.TempDir(), "spool"))
	require.NoError(t, err)
	defer f.Close()
	want := sha256.New()
	block := make([]byte, 1<<20)
	for i := 0; i < size/len(block); i++ {
		for j := range block {
			block[j] = byte(i*31 + j*7)
		}
		_, _ = want.Write(block)
		_, err := f.Write(block)
		require.NoError(t, err)
	}
	block = nil

	g := newFakeGateway(t)
	var got []byte
	var gotLen int64
	g.zarr = func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, _ := io.CopyBuffer(h, r.Body, make([]byte, 32<<10))
		got, gotLen = h.Sum(nil), n
		w.WriteHeader(http.StatusCreated)
	}
	c := newTestClient(t, writeConfig(g.srv.URL, nil))
	_, err = c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	require.NoError(t, c.Store("ds_1").Put(t.Context(), "big/0", f, size))
	runtime.ReadMemStats(&after)

	assert.Equal(t, int64(size), gotLen)
	assert.Equal(t, want.Sum(nil), got)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d bytes sending %d", alloc, size)
	assert.Less(t, alloc, uint64(size/16), "the body must be streamed, not held")
}

// Retryable answers and a connection dropped mid-body are retried, each
// attempt sending the whole body again from its start.
func TestPutRetriesResendWholeBody(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	tests := []struct {
		name   string
		fail   []int // answers before success; -1 drops the connection after half the body
		header map[string]string
	}{
		{"503", []int{503}, nil},
		{"429 with Retry-After", []int{429}, map[string]string{"Retry-After": "2"}},
		{"502 then 504", []int{502, 504}, nil},
		{"connection dropped mid-body", []int{-1}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGateway(t)
			var mu sync.Mutex
			var bodies [][]byte
			n := 0
			g.zarr = func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				i := n
				n++
				mu.Unlock()
				if i < len(tt.fail) && tt.fail[i] == -1 {
					_, _ = io.ReadFull(r.Body, make([]byte, len(body)/2))
					conn, _, err := w.(http.Hijacker).Hijack()
					if err == nil {
						_ = conn.Close()
					}
					return
				}
				b, _ := io.ReadAll(r.Body)
				mu.Lock()
				bodies = append(bodies, b)
				mu.Unlock()
				if i < len(tt.fail) {
					for k, v := range tt.header {
						w.Header().Set(k, v)
					}
					writeJSON(w, tt.fail[i], map[string]string{"detail": "busy"})
					return
				}
				w.WriteHeader(http.StatusOK)
			}
			c := newTestClient(t, writeConfig(g.srv.URL, nil))
			clk := instantRetries(c)
			start := clk.Now()
			_, err := c.Acquire(t.Context(), time.Hour)
			require.NoError(t, err)

			require.NoError(t, c.Store("ds_1").Put(t.Context(), "a/0", spool(t, body), int64(len(body))))
			mu.Lock()
			defer mu.Unlock()
			assert.Equal(t, len(tt.fail)+1, n, "one try per failure, then success")
			for i, b := range bodies {
				assert.True(t, bytes.Equal(body, b), "attempt %d got %d bytes, not the whole body", i, len(b))
			}
			if tt.header != nil {
				assert.GreaterOrEqual(t, clk.Now().Sub(start), 2*time.Second, "Retry-After honoured")
			}
			assert.Empty(t, c.WriteReport().Failed)
		})
	}
}

func TestPutErrors(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		detail     string
		wantLocked bool
		wantPerm   bool
	}{
		{"409 locked", http.StatusConflict, "Datasource ds_1 is locked by session other", true, false},
		{"403 forbidden", http.StatusForbidden, "not yours", false, true},
		{"400 bad request", http.StatusBadRequest, "bad key", false, false},
		{"500 not retried", http.StatusInternalServerError, "boom", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGateway(t)
			var rc writeRecorder
			g.zarr = func(w http.ResponseWriter, r *http.Request) {
				rc.record(r)
				writeJSON(w, tt.status, map[string]string{"detail": tt.detail})
			}
			var logs logBuffer
			c := newTestClient(t, writeConfig(g.srv.URL, &logs))
			_, err := c.Acquire(t.Context(), time.Hour)
			require.NoError(t, err)

			err = c.Store("ds_1").Put(t.Context(), "x/0", spool(t, []byte("abc")), 3)
			var e *Error
			require.ErrorAs(t, err, &e)
			assert.Equal(t, tt.status, e.Status)
			assert.Equal(t, tt.detail, e.Detail)
			assert.Equal(t, tt.wantLocked, errors.Is(err, ErrLocked))
			assert.Equal(t, tt.wantPerm, errors.Is(err, fs.ErrPermission))
			assert.Len(t, rc.all(), 1, "not retried")
			rep := c.WriteReport()
			require.Len(t, rep.Failed, 1)
			assert.Equal(t, "ds_1/x/0", rep.Failed[0].Key)
			assert.Empty(t, rep.Staged)
			assert.False(t, rep.OK())
			assert.NotContains(t, err.Error(), testToken)
			assert.NotContains(t, logs.String(), testToken)
		})
	}
}

func TestWriteRefusedWithoutWriteMode(t *testing.T) {
	g := newFakeGateway(t)
	c := newTestClient(t, testConfig(g.srv.URL, nil))
	_, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)
	s := c.Store("ds_1")
	assert.ErrorIs(t, s.Put(t.Context(), "a", bytes.NewReader([]byte("x")), 1), ErrReadOnly)
	assert.ErrorIs(t, s.Delete(t.Context(), "a"), ErrReadOnly)
	assert.ErrorIs(t, s.Clear(t.Context()), ErrReadOnly)
	assert.Zero(t, g.zarrReqs.Load())
}

func TestDeleteAndClearRequests(t *testing.T) {
	g := newFakeGateway(t)
	var rc writeRecorder
	g.zarr = func(w http.ResponseWriter, r *http.Request) {
		s := rc.record(r)
		if s.path == "/zarr/ds_1/missing" {
			writeJSON(w, http.StatusNotFound, map[string]string{"detail": "no key"})
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
	c := newTestClient(t, writeConfig(g.srv.URL, nil))
	info, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)
	s := c.Store("ds_1")
	require.NoError(t, s.Put(t.Context(), "a/0", bytes.NewReader([]byte("x")), 1))
	require.NoError(t, s.Delete(t.Context(), "a b/0"))
	assert.ErrorIs(t, s.Delete(t.Context(), "missing"), fs.ErrNotExist)
	require.NoError(t, s.Clear(t.Context()))

	reqs := rc.all()
	require.Len(t, reqs, 4)
	for i, want := range []struct{ method, path, body string }{
		{http.MethodPost, "/zarr/ds_1/a/0", "x"},
		{http.MethodDelete, "/zarr/ds_1/a%20b/0", ""},
		{http.MethodDelete, "/zarr/ds_1/missing", ""},
		{http.MethodDelete, "/zarr/ds_1/", ""},
	} {
		assert.Equal(t, want.method, reqs[i].method, i)
		assert.Equal(t, want.path, reqs[i].rawPath, i)
		assert.Equal(t, info.ID, reqs[i].session, i)
		assert.Equal(t, want.body, string(reqs[i].body), i)
		assert.Empty(t, reqs[i].query, i)
	}
	rep := c.WriteReport()
	assert.Empty(t, rep.Failed, "a missing key is not a failed delete")
	assert.Empty(t, rep.Staged, "cleared")
}

func TestCloseFinal(t *testing.T) {
	tests := []struct {
		name          string
		finalise      bool
		statuses      []int
		wantErr       error // nil: success
		wantDeletes   int
		wantFinal     []string
		wantDiscarded []string
		wantFailed    bool
	}{
		{name: "finalise", finalise: true, wantDeletes: 1, wantFinal: []string{"ds_1/a/0", "ds_1/b/0"}},
		{name: "discard", finalise: false, wantDeletes: 1, wantDiscarded: []string{"ds_1/a/0", "ds_1/b/0"}},
		{name: "finalise retried", finalise: true, statuses: []int{503, 500, 204}, wantDeletes: 3,
			wantFinal: []string{"ds_1/a/0", "ds_1/b/0"}},
		{name: "finalise fails", finalise: true, statuses: []int{500, 500, 500, 500}, wantDeletes: 4,
			wantErr: &Error{}, wantFailed: true},
		{name: "finalise finds the session gone", finalise: true, statuses: []int{404}, wantDeletes: 1,
			wantErr: ErrNotFinalised, wantFailed: true},
		{name: "discard finds the session gone", finalise: false, statuses: []int{410}, wantDeletes: 1,
			wantDiscarded: []string{"ds_1/a/0", "ds_1/b/0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGateway(t)
			g.deleteStatus = tt.statuses
			g.zarr = func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }
			c := newTestClient(t, writeConfig(g.srv.URL, nil))
			info, err := c.Acquire(t.Context(), time.Hour)
			require.NoError(t, err)
			s := c.Store("ds_1")
			require.NoError(t, s.Put(t.Context(), "b/0", bytes.NewReader([]byte("b")), 1))
			require.NoError(t, s.Put(t.Context(), "a/0", bytes.NewReader([]byte("a")), 1))

			err = c.CloseFinal(t.Context(), tt.finalise)
			switch want := tt.wantErr.(type) {
			case nil:
				require.NoError(t, err)
			case *Error:
				require.ErrorAs(t, err, &want)
			default:
				require.ErrorIs(t, err, want)
			}
			require.Len(t, g.deleted(), tt.wantDeletes)
			r := g.lastRequest(http.MethodDelete, "/session/")
			require.NotNil(t, r)
			assert.Equal(t, "/session/"+info.ID, r.URL.Path)
			assert.Equal(t, "finalise_write="+strconv.FormatBool(tt.finalise), r.URL.RawQuery)
			assert.Equal(t, info.ID, r.Header.Get("X-DATAMESH-SESSIONID"))
			assert.Equal(t, "Token "+testToken, r.Header.Get("Authorization"))

			rep := c.WriteReport()
			assert.Equal(t, tt.wantFinal, rep.Final)
			assert.Equal(t, tt.wantDiscarded, rep.Discarded)
			assert.Empty(t, rep.Staged)
			if tt.wantFailed {
				require.Len(t, rep.Failed, 2)
				assert.Equal(t, "ds_1/a/0", rep.Failed[0].Key)
				assert.Equal(t, "ds_1/b/0", rep.Failed[1].Key)
			} else {
				assert.Empty(t, rep.Failed)
			}
			// Closed: writes fail at once, no request.
			before := g.zarrReqs.Load()
			assert.ErrorIs(t, s.Put(t.Context(), "c", bytes.NewReader([]byte("c")), 1), ErrClosed)
			assert.Equal(t, before, g.zarrReqs.Load())
		})
	}
}

// A write in flight when Close is called lands in the session before it is
// finalised.
func TestCloseFinalWaitsForWritesInFlight(t *testing.T) {
	g := newFakeGateway(t)
	var rc writeRecorder
	arrived, release := make(chan struct{}), make(chan struct{})
	g.zarr = func(w http.ResponseWriter, r *http.Request) {
		rc.record(r)
		close(arrived)
		<-release
		w.WriteHeader(http.StatusOK)
	}
	c := newTestClient(t, writeConfig(g.srv.URL, nil))
	_, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)
	put := make(chan error, 1)
	go func() { put <- c.Store("ds_1").Put(t.Context(), "a/0", bytes.NewReader([]byte("a")), 1) }()
	<-arrived
	closed := make(chan error, 1)
	go func() { closed <- c.CloseFinal(t.Context(), true) }()
	require.Eventually(t, func() bool { return c.isClosed() }, 5*time.Second, time.Millisecond)
	close(release)
	require.NoError(t, <-put)
	require.NoError(t, <-closed)
	assert.Equal(t, []string{"ds_1/a/0"}, c.WriteReport().Final)
	assert.Equal(t, "finalise_write=true", g.lastRequest(http.MethodDelete, "/session/").URL.RawQuery)
}

// event is one request in the order the gateway finished it.
type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (l *eventLog) add(s string) {
	l.mu.Lock()
	l.events = append(l.events, s)
	l.mu.Unlock()
}

func (l *eventLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.events...)
}

// At a planned renewal with writes staged: new writes are held, the one in
// flight finishes, the old session is finalised (a logged checkpoint), and
// the held write goes to the new session after it.
func TestCheckpointAtRenewal(t *testing.T) {
	clk := newFakeClock(time.Now().Truncate(time.Second))
	g := newFakeGateway(t)
	g.now = clk.Now
	var ev eventLog
	inFlight, release := make(chan struct{}), make(chan struct{})
	g.zarr = func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if string(b) == "slow" {
			close(inFlight)
			<-release
		}
		ev.add(r.Method + " " + r.URL.Path + " " + r.Header.Get("X-DATAMESH-SESSIONID"))
		w.WriteHeader(http.StatusOK)
	}
	g.trace = func(r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/session/") {
			ev.add(r.Method + " " + r.URL.Path + " " + r.URL.RawQuery)
		}
	}
	var logs logBuffer
	c := newClockClient(t, writeConfig(g.srv.URL, &logs), clk)
	first, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)
	s := c.Store("ds_1")
	require.NoError(t, s.Put(t.Context(), "a/0", bytes.NewReader([]byte("a")), 1))
	require.NoError(t, s.Put(t.Context(), "b/0", bytes.NewReader([]byte("b")), 1))

	slow := make(chan error, 1)
	go func() { slow <- s.Put(t.Context(), "slow/0", bytes.NewReader([]byte("slow")), 4) }()
	<-inFlight

	assert.Equal(t, 59*time.Minute, clk.waitArmed(t, func(time.Duration) bool { return true }))
	clk.Advance(59 * time.Minute)
	// The renewal holds new writes while the slow one is in flight.
	require.Eventually(t, func() bool {
		c.writes.mu.Lock()
		defer c.writes.mu.Unlock()
		return c.writes.hold != nil
	}, 5*time.Second, time.Millisecond)
	held := make(chan error, 1)
	go func() { held <- s.Put(t.Context(), "held/0", bytes.NewReader([]byte("h")), 1) }()
	close(release)
	require.NoError(t, <-slow)
	require.NoError(t, <-held)

	second := c.Info()
	require.NotEqual(t, first.ID, second.ID)
	assert.Equal(t, []string{
		"GET /session/ allow_multiwrite=false&duration=3600",
		"POST /zarr/ds_1/a/0 " + first.ID,
		"POST /zarr/ds_1/b/0 " + first.ID,
		"POST /zarr/ds_1/slow/0 " + first.ID,
		"GET /session/ allow_multiwrite=false&duration=3600",
		"DELETE /session/" + first.ID + " finalise_write=true",
		"POST /zarr/ds_1/held/0 " + second.ID,
	}, normaliseQueries(ev.all()))
	assert.Contains(t, logs.String(), "datamesh write checkpoint: previous session finalised")
	assert.Contains(t, logs.String(), "session="+first.ID+" next="+second.ID+" keys=3 deletes=0")

	rep := c.WriteReport()
	assert.Equal(t, []string{"ds_1/a/0", "ds_1/b/0", "ds_1/slow/0"}, rep.Final)
	assert.Equal(t, []string{"ds_1/held/0"}, rep.Staged)
	assert.Empty(t, rep.Failed)
}

// normaliseQueries sorts the query of each event, for stable comparison.
func normaliseQueries(events []string) []string {
	out := make([]string, len(events))
	for i, e := range events {
		parts := strings.SplitN(e, " ", 3)
		if len(parts) == 3 && strings.Contains(parts[2], "=") {
			q := strings.Split(parts[2], "&")
			sortStrings(q)
			parts[2] = strings.Join(q, "&")
		}
		out[i] = strings.Join(parts, " ")
	}
	return out
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// A session the gateway drops (401) with writes staged in it: every staged
// key fails, as does the write that saw the 401; none is redone in the new
// session. Writes that start afterwards go to the new session.
func TestUnauthorizedWithStagedWritesFails(t *testing.T) {
	tests := []struct {
		name   string
		notice func(t *testing.T, s *Store) // what meets the 401 first
		failed []string
	}{
		{"a write sees the 401", func(t *testing.T, s *Store) {
			err := s.Put(t.Context(), "c/0", bytes.NewReader([]byte("c")), 1)
			assert.ErrorIs(t, err, ErrSessionLost)
			assert.NotErrorIs(t, err, fs.ErrPermission)
		}, []string{"ds_1/a/0", "ds_1/b/0", "ds_1/c/0"}},
		{"a read sees the 401", func(t *testing.T, s *Store) {
			_, err := s.Get(t.Context(), ".zmetadata")
			assert.NoError(t, err, "reads go on in the new session")
		}, []string{"ds_1/a/0", "ds_1/b/0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock(time.Now().Truncate(time.Second))
			g := newFakeGateway(t)
			g.now = clk.Now
			var rc writeRecorder
			g.zarr = func(w http.ResponseWriter, r *http.Request) { rc.record(r); w.WriteHeader(http.StatusOK) }
			var logs logBuffer
			c := newClockClient(t, writeConfig(g.srv.URL, &logs), clk)
			// The renewal after a 401 soon after acquiring waits
			// minRenewInterval on the session clock: let it pass.
			advanceWhenArmed(t, clk, minRenewInterval)
			first, err := c.Acquire(t.Context(), time.Hour)
			require.NoError(t, err)
			s := c.Store("ds_1")
			require.NoError(t, s.Put(t.Context(), "a/0", bytes.NewReader([]byte("a")), 1))
			require.NoError(t, s.Put(t.Context(), "b/0", bytes.NewReader([]byte("b")), 1))

			// The gateway ends the session (idle, restart, ...).
			g.mu.Lock()
			delete(g.open, first.ID)
			g.mu.Unlock()
			tt.notice(t, s)
			second := c.Info()
			require.NotEqual(t, first.ID, second.ID, "renewed")

			require.NoError(t, s.Put(t.Context(), "d/0", bytes.NewReader([]byte("d")), 1))
			for _, r := range rc.all() {
				if r.session == second.ID && r.method == http.MethodPost {
					assert.Equal(t, "/zarr/ds_1/d/0", r.path, "only the new write goes to the new session")
				}
			}
			rep := c.WriteReport()
			var failed []string
			for _, f := range rep.Failed {
				failed = append(failed, f.Key)
				assert.ErrorIs(t, f.Err, ErrSessionLost)
			}
			assert.Equal(t, tt.failed, failed)
			assert.Equal(t, []string{"ds_1/d/0"}, rep.Staged)
			assert.Empty(t, rep.Final)
			assert.False(t, rep.OK())
			assert.Contains(t, logs.String(), "datamesh session lost with writes staged in it")
		})
	}
}

// Without writes staged, a 401 on a write renews the session and retries
// the write once in the new one, as reads do.
func TestUnauthorizedWithoutStagedWritesRetries(t *testing.T) {
	clk := newFakeClock(time.Now().Truncate(time.Second))
	g := newFakeGateway(t)
	g.now = clk.Now
	var rc writeRecorder
	g.zarr = func(w http.ResponseWriter, r *http.Request) { rc.record(r); w.WriteHeader(http.StatusOK) }
	c := newClockClient(t, writeConfig(g.srv.URL, nil), clk)
	// The renewal after a 401 soon after acquiring waits minRenewInterval
	// on the session clock: let it pass.
	advanceWhenArmed(t, clk, minRenewInterval)
	first, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)
	g.mu.Lock()
	delete(g.open, first.ID)
	g.mu.Unlock()

	require.NoError(t, c.Store("ds_1").Put(t.Context(), "a/0", bytes.NewReader([]byte("a")), 1))
	second := c.Info()
	require.NotEqual(t, first.ID, second.ID)
	reqs := rc.all()
	require.Len(t, reqs, 1, "the refused try never reached the handler")
	assert.Equal(t, second.ID, reqs[0].session)
	assert.Equal(t, []byte("a"), reqs[0].body)
	rep := c.WriteReport()
	assert.Equal(t, []string{"ds_1/a/0"}, rep.Staged)
	assert.Empty(t, rep.Failed)
}

// DATAMESH_CHUNK_WRITE_TIMEOUT bounds each stall of a write, not the
// transfer: an upload the gateway keeps reading for longer than the timeout
// succeeds; a gateway that stops answering fails the write after it.
func TestPutWriteTimeoutIsBetweenBytes(t *testing.T) {
	// 64 MiB read at about 50 MiB/s: well over twice the timeout in all,
	// while what the socket buffers hold after the client has sent its
	// last byte (a few MiB) drains well within it.
	const timeout = 500 * time.Millisecond
	body := bytes.Repeat([]byte{7}, 64<<20)
	tests := []struct {
		name    string
		handler func(w http.ResponseWriter, r *http.Request)
		wantErr bool
	}{
		{"slow reader, steady progress", func(w http.ResponseWriter, r *http.Request) {
			buf := make([]byte, 512<<10)
			start := time.Now()
			for {
				if _, err := io.ReadFull(r.Body, buf); err != nil {
					break
				}
				time.Sleep(10 * time.Millisecond) // pacing the reads, not proving an absence
			}
			if time.Since(start) < 2*timeout {
				t.Errorf("upload took %s: too fast to test the timeout", time.Since(start))
			}
			w.WriteHeader(http.StatusOK)
		}, false},
		{"no answer", func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			stall(r)
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGateway(t)
			g.zarr = tt.handler
			cfg := writeConfig(g.srv.URL, nil)
			cfg.ChunkReadTimeout = time.Minute // the write timeout must be the one applied
			cfg.ChunkWriteTimeout = timeout
			cfg.MaxRetries = -1
			c := newTestClient(t, cfg)
			_, err := c.Acquire(t.Context(), time.Hour)
			require.NoError(t, err)
			err = c.Store("ds_1").Put(t.Context(), "a/0", bytes.NewReader(body), int64(len(body)))
			if !tt.wantErr {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, context.DeadlineExceeded)
			assert.Len(t, c.WriteReport().Failed, 1)
		})
	}
}
