package session

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAuthHeaders(t *testing.T) {
	tests := []struct {
		name      string
		token     string
		wantAuth  string
		wantToken string // X-DATAMESH-TOKEN, "" = absent
	}{
		{name: "token", token: testToken, wantAuth: "Token " + testToken, wantToken: testToken},
		{name: "bearer", token: "Bearer jwt.part.sig", wantAuth: "Bearer jwt.part.sig"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGateway(t)
			g.zarr = func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("x")) }
			g.catalog = func(w http.ResponseWriter, r *http.Request) {
				writeJSON(w, 200, map[string]any{"type": "FeatureCollection", "features": []any{}})
			}
			cfg := testConfig(g.srv.URL, nil)
			cfg.Token = tt.token
			c := newTestClient(t, cfg)
			ctx := t.Context()

			_, err := c.Acquire(ctx, 90*time.Minute)
			require.NoError(t, err)
			_, err = c.Store("ds_1").Get(ctx, ".zmetadata")
			require.NoError(t, err)
			_, err = c.Catalog(ctx, Query{})
			require.NoError(t, err)
			require.NoError(t, c.Close(ctx))

			for _, path := range []string{"/session/", "/zarr/", "/datasource/"} {
				r := g.lastRequest("", path)
				require.NotNil(t, r, path)
				assert.Equal(t, tt.wantAuth, r.Header.Get("Authorization"), path)
				assert.Equal(t, tt.wantToken, r.Header.Get("X-DATAMESH-TOKEN"), path)
				_, has := r.Header["X-Datamesh-Token"]
				assert.Equal(t, tt.wantToken != "", has, path)
			}
		})
	}
}

func TestAcquireRequestAndInfo(t *testing.T) {
	g := newFakeGateway(t)
	c := newTestClient(t, testConfig(g.srv.URL, nil))
	assert.Equal(t, Info{}, c.Info())

	info, err := c.Acquire(t.Context(), 90*time.Minute)
	require.NoError(t, err)

	r := g.lastRequest(http.MethodGet, "/session/")
	require.NotNil(t, r)
	assert.Equal(t, http.MethodGet, r.Method)
	assert.Equal(t, "/session/", r.URL.Path)
	assert.Equal(t, "5400", r.URL.Query().Get("duration"))
	assert.Equal(t, "false", r.URL.Query().Get("allow_multiwrite"))
	assert.Equal(t, "no-store", r.Header.Get("Cache-Control"))

	assert.Equal(t, "s1", info.ID)
	assert.Equal(t, "someone", info.User)
	assert.True(t, info.Verified)
	assert.WithinDuration(t, time.Now(), info.CreationTime, 5*time.Second)
	assert.WithinDuration(t, time.Now().Add(time.Hour), info.EndTime, 5*time.Second)
	assert.Equal(t, info, c.Info())
}

func TestParseInfo(t *testing.T) {
	c := newClockClient(t, testConfig("http://127.0.0.1:1", nil), newFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)))
	end := time.Date(2026, 11, 27, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name, endTime string
		want          time.Time
	}{
		{"naive is UTC", "2026-11-27T03:04:05", end},
		{"naive fractional", "2026-11-27T03:04:05.123456", end.Add(123456 * time.Microsecond)},
		{"Z", "2026-11-27T03:04:05Z", end},
		{"offset", "2026-11-27T05:04:05+02:00", end},
		{"offset fractional", "2026-11-27T03:04:05.5+00:00", end.Add(500 * time.Millisecond)},
		{"compact offset", "2026-11-27T03:04:05+0000", end},
		{"space separator", "2026-11-27 03:04:05", end},
		{"unreadable left zero", "tomorrow", time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := `{"id":"abc","user":42,"creation_time":null,"end_time":"` + tt.endTime +
				`","write":true,"allow_multiwrite":true,"verified":false,"extra":{"x":1}}`
			info, err := c.parseInfo([]byte(body))
			require.NoError(t, err)
			assert.Equal(t, Info{ID: "abc", User: "42", EndTime: tt.want, Write: true, AllowMultiwrite: true}, info)
		})
	}
	_, err := c.parseInfo([]byte(`{"user":"x"}`))
	assert.ErrorContains(t, err, "no id")
	_, err = c.parseInfo([]byte(`<html>`))
	assert.ErrorContains(t, err, "not the expected JSON")
}

func TestAcquireFailures(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		body       string
		denied     bool
		wantDetail string
	}{
		{name: "bad token", status: 401, body: `{"detail":"Invalid token."}`, denied: true, wantDetail: "Invalid token."},
		{name: "forbidden", status: 403, body: `{"detail":"nope"}`, denied: true, wantDetail: "nope"},
		{name: "201 is not success", status: 201, body: `{"id":"x"}`},
		{name: "server error", status: 500, body: `{"detail":"boom"}`, wantDetail: "boom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs logBuffer
			srv := newHandlerServer(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.status)
				_, _ = w.Write([]byte(tt.body))
			})
			c := newTestClient(t, testConfig(srv, &logs))
			_, err := c.Acquire(t.Context(), time.Hour)
			require.Error(t, err)
			var e *Error
			require.ErrorAs(t, err, &e)
			assert.Equal(t, tt.status, e.Status)
			assert.Equal(t, tt.denied, errors.Is(err, fs.ErrPermission))
			assert.False(t, errors.Is(err, fs.ErrNotExist))
			if tt.wantDetail != "" {
				assert.Contains(t, err.Error(), tt.wantDetail)
			}
			assert.NotContains(t, err.Error(), "duration=", "no query in errors")
			assert.NotContains(t, err.Error(), testToken)
			assert.NotContains(t, logs.String(), testToken)
			assert.Equal(t, Info{}, c.Info())
		})
	}
}

func TestRenewalWait(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		info     Info
		acquired time.Time
		now      time.Time
		want     time.Duration
	}{
		{"hour session renews a minute before its end", Info{CreationTime: t0, EndTime: t0.Add(time.Hour)}, t0, t0, 59 * time.Minute},
		{"counted from local acquire time", Info{CreationTime: t0.Add(-time.Hour), EndTime: t0}, t0.Add(time.Minute), t0.Add(2 * time.Minute), 58 * time.Minute},
		{"short session at half its life", Info{CreationTime: t0, EndTime: t0.Add(10 * time.Second)}, t0, t0, 5 * time.Second},
		{"no creation time uses local clock", Info{EndTime: t0.Add(time.Hour)}, t0, t0, 59 * time.Minute},
		{"already due is now", Info{CreationTime: t0, EndTime: t0.Add(time.Hour)}, t0, t0.Add(2 * time.Hour), 0},
		{"nonsense times are now", Info{CreationTime: t0, EndTime: t0.Add(-time.Hour)}, t0, t0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, renewalWait(tt.info, tt.acquired, tt.now))
		})
	}
}

func TestRenewalBeforeExpiry(t *testing.T) {
	clk := newFakeClock(time.Now().Truncate(time.Second))
	g := newFakeGateway(t)
	g.now = clk.Now
	var logs logBuffer
	c := newClockClient(t, testConfig(g.srv.URL, &logs), clk)
	first, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)

	// Renewed a minute before the end of the hour, and not sooner: the loop
	// waits on that timer and nothing else.
	assert.Equal(t, 59*time.Minute, clk.waitArmed(t, func(time.Duration) bool { return true }))
	clk.Advance(59*time.Minute - time.Second)
	assert.Equal(t, int32(1), g.acquires.Load())
	clk.Advance(time.Second)

	require.Eventually(t, func() bool { return c.Info().ID != first.ID }, 5*time.Second, time.Millisecond)
	assert.Equal(t, int32(2), g.acquires.Load())
	assert.Equal(t, "3600", g.lastRequest(http.MethodGet, "/session/").URL.Query().Get("duration"), "same duration")
	require.Eventually(t, func() bool {
		d := g.deleted()
		return len(d) >= 1 && d[0] == first.ID
	}, 5*time.Second, time.Millisecond, "the replaced session is closed")
	assert.Contains(t, logs.String(), "renewed before expiry")
	assert.Equal(t, 59*time.Minute, clk.waitArmed(t, func(time.Duration) bool { return true }), "the next renewal scheduled")

	require.NoError(t, c.Close(t.Context()))
	// Close waited for the loop to end: nothing is left to renew.
	select {
	case <-c.loopDone:
	default:
		t.Fatal("renewal loop still running after Close")
	}
	assert.Zero(t, clk.pending(), "no timer left armed")
	clk.Advance(24 * time.Hour)
	assert.Equal(t, int32(2), g.acquires.Load(), "no renewal after Close")
	assert.Zero(t, g.openSessions())
}

func TestRenewSwapsAndClosesOld(t *testing.T) {
	g := newFakeGateway(t)
	c := newTestClient(t, testConfig(g.srv.URL, nil))
	_, err := c.Renew(t.Context())
	assert.ErrorIs(t, err, ErrNoSession)

	first, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)
	second, err := c.Renew(t.Context())
	require.NoError(t, err)
	assert.NotEqual(t, first.ID, second.ID)
	assert.Equal(t, second, c.Info())
	require.Eventually(t, func() bool { return len(g.deleted()) == 1 }, time.Second, 5*time.Millisecond)
	assert.Equal(t, []string{first.ID}, g.deleted())
}

func TestClose(t *testing.T) {
	tests := []struct {
		name        string
		statuses    []int
		wantDeletes int
		wantErr     bool
	}{
		{name: "204", statuses: nil, wantDeletes: 1},
		{name: "retried after 500", statuses: []int{500, 204}, wantDeletes: 2},
		{name: "retried after 503 twice", statuses: []int{503, 502, 204}, wantDeletes: 3},
		{name: "404 already closed", statuses: []int{404}, wantDeletes: 1},
		{name: "410 already closed", statuses: []int{410}, wantDeletes: 1},
		{name: "gives up after the backoff schedule", statuses: []int{500, 500, 500, 500, 500}, wantDeletes: 4, wantErr: true},
		{name: "401 retried too", statuses: []int{401, 204}, wantDeletes: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGateway(t)
			g.deleteStatus = tt.statuses
			g.zarr = func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("x")) }
			c := newTestClient(t, testConfig(g.srv.URL, nil))
			info, err := c.Acquire(t.Context(), time.Hour)
			require.NoError(t, err)

			err = c.Close(t.Context())
			if tt.wantErr {
				var e *Error
				require.ErrorAs(t, err, &e)
				assert.Equal(t, 500, e.Status)
			} else {
				require.NoError(t, err)
			}
			deletes := g.deleted()
			require.Len(t, deletes, tt.wantDeletes)
			for _, id := range deletes {
				assert.Equal(t, info.ID, id)
			}
			r := g.lastRequest(http.MethodDelete, "/session/"+info.ID)
			require.NotNil(t, r)
			assert.Equal(t, http.MethodDelete, r.Method)
			assert.Equal(t, "false", r.URL.Query().Get("finalise_write"))
			assert.Equal(t, info.ID, r.Header.Get("X-DATAMESH-SESSIONID"))
			assert.Equal(t, "Token "+testToken, r.Header.Get("Authorization"))

			// Idempotent: the same answer, no new request.
			assert.Equal(t, err, c.Close(t.Context()))
			assert.Len(t, g.deleted(), tt.wantDeletes)

			// Closed: no zarr request leaves, no session is acquired.
			before := g.zarrReqs.Load()
			_, err = c.Store("ds_1").Get(t.Context(), ".zmetadata")
			assert.ErrorIs(t, err, ErrClosed)
			_, err = c.Store("ds_1").Head(t.Context(), "a/0.0")
			assert.ErrorIs(t, err, ErrClosed)
			_, err = c.Renew(t.Context())
			assert.ErrorIs(t, err, ErrClosed)
			_, err = c.Acquire(t.Context(), time.Hour)
			assert.ErrorIs(t, err, ErrClosed)
			assert.Equal(t, before, g.zarrReqs.Load())
			assert.Equal(t, int32(1), g.acquires.Load())
			assert.Equal(t, Info{}, c.Info())
		})
	}
}

func TestCloseConcurrentAndWithoutSession(t *testing.T) {
	g := newFakeGateway(t)
	c := newTestClient(t, testConfig(g.srv.URL, nil))
	_, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)

	var wg sync.WaitGroup
	errs := make([]error, 16)
	for i := range errs {
		wg.Go(func() { errs[i] = c.Close(t.Context()) })
	}
	wg.Wait()
	for _, err := range errs {
		assert.NoError(t, err)
	}
	assert.Equal(t, []string{"s1"}, g.deleted())

	idle := newTestClient(t, testConfig(g.srv.URL, nil))
	require.NoError(t, idle.Close(t.Context()))
	_, err = idle.Store("ds_1").Get(t.Context(), "a/0")
	assert.ErrorIs(t, err, ErrClosed)
	assert.Len(t, g.deleted(), 1, "nothing to delete without a session")
}

func TestCloseHonoursContext(t *testing.T) {
	g := newFakeGateway(t)
	g.deleteStatus = []int{500, 500, 500, 500}
	cfg := testConfig(g.srv.URL, nil)
	cfg.CloseBackoff = []time.Duration{time.Minute}
	c := newTestClient(t, cfg)
	_, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = c.Close(ctx)
	assert.Less(t, time.Since(start), 2*time.Second)
	require.Error(t, err)
	_, err = c.Store("ds_1").Get(t.Context(), "a/0")
	assert.ErrorIs(t, err, ErrClosed)
}

func TestUnauthorizedRenewsOnceForConcurrentCallers(t *testing.T) {
	const callers = 64
	g := newFakeGateway(t)
	var arrived atomic.Int32
	allIn := make(chan struct{})
	g.zarrAuth = func(sid string) int {
		if sid != "s1" {
			return 0
		}
		// Hold every first request until all callers sent theirs, so that all
		// of them see the 401 together.
		if arrived.Add(1) == callers {
			close(allIn)
		}
		select {
		case <-allIn:
		case <-time.After(5 * time.Second):
		}
		return http.StatusUnauthorized
	}
	g.zarr = func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("chunk " + r.URL.Path))
	}
	clk := newFakeClock(time.Now().Truncate(time.Second))
	g.now = clk.Now
	c := newClockClient(t, testConfig(g.srv.URL, nil), clk)
	_, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)
	// The session was refused at once: renewed minRenewInterval after it began.
	advanceWhenArmed(t, clk, minRenewInterval)

	st := c.Store("ds_1")
	var wg sync.WaitGroup
	errs := make([]error, callers)
	bodies := make([][]byte, callers)
	for i := range callers {
		wg.Go(func() { bodies[i], errs[i] = st.Get(t.Context(), "u10/0."+strconv.Itoa(i)) })
	}
	wg.Wait()
	for i := range callers {
		require.NoError(t, errs[i], i)
		assert.Equal(t, "chunk /zarr/ds_1/u10/0."+strconv.Itoa(i), string(bodies[i]))
	}
	assert.Equal(t, int32(2), g.acquires.Load(), "exactly one renewal")
	assert.Equal(t, "s2", c.Info().ID)
	assert.Equal(t, int32(2*callers), g.zarrReqs.Load(), "each request retried exactly once")
	require.Eventually(t, func() bool { return len(g.deleted()) == 1 }, time.Second, 5*time.Millisecond)
	assert.Equal(t, []string{"s1"}, g.deleted())

	// A late caller with the replaced id does not renew again.
	require.NoError(t, c.recoverUnauthorized(t.Context(), "s1"))
	assert.Equal(t, int32(2), g.acquires.Load())
}

func TestSecondUnauthorizedIsPermission(t *testing.T) {
	g := newFakeGateway(t)
	g.zarrAuth = func(string) int { return http.StatusUnauthorized }
	var logs logBuffer
	clk := newFakeClock(time.Now().Truncate(time.Second))
	g.now = clk.Now
	c := newClockClient(t, testConfig(g.srv.URL, &logs), clk)
	_, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)
	advanceWhenArmed(t, clk, minRenewInterval)

	_, err = c.Store("ds_1").Get(t.Context(), "a/0")
	require.Error(t, err)
	assert.ErrorIs(t, err, fs.ErrPermission)
	assert.False(t, errors.Is(err, fs.ErrNotExist))
	assert.Contains(t, err.Error(), "Session ID required")
	assert.Equal(t, int32(2), g.acquires.Load(), "one renewal, then the auth error")
	assert.Equal(t, int32(2), g.zarrReqs.Load())
	assert.NotContains(t, err.Error(), testToken)
	assert.NotContains(t, logs.String(), testToken)
}

func TestUnauthorizedAndRenewalRefused(t *testing.T) {
	var acquires atomic.Int32
	srv := newHandlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/session/" {
			if acquires.Add(1) == 1 {
				writeJSON(w, 200, map[string]any{"id": "s1", "end_time": time.Now().Add(time.Hour)})
				return
			}
			writeJSON(w, 403, map[string]string{"detail": "token revoked"})
			return
		}
		writeJSON(w, 401, map[string]string{"detail": "Session expired"})
	})
	clk := newFakeClock(time.Now().Truncate(time.Second))
	c := newClockClient(t, testConfig(srv, nil), clk)
	_, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)
	advanceWhenArmed(t, clk, minRenewInterval)
	_, err = c.Store("ds_1").Get(t.Context(), "a/0")
	assert.ErrorIs(t, err, fs.ErrPermission)
	assert.Contains(t, err.Error(), "token revoked")
	assert.Equal(t, int32(2), acquires.Load())
}

func TestOnSessionReportsEverySessionInUse(t *testing.T) {
	g := newFakeGateway(t)
	var mu sync.Mutex
	var seen []string
	cfg := testConfig(g.srv.URL, nil)
	cfg.OnSession = func(info Info) {
		mu.Lock()
		seen = append(seen, info.ID)
		mu.Unlock()
	}
	c := newTestClient(t, cfg)
	first, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)
	second, err := c.Renew(t.Context())
	require.NoError(t, err)
	mu.Lock()
	assert.Equal(t, []string{first.ID, second.ID}, seen)
	mu.Unlock()
}

func TestCloseSessionLeftByAnotherProcess(t *testing.T) {
	// A killed mount left session s1 open; the next run closes it with its
	// own client and keeps its own session.
	g := newFakeGateway(t)
	killed := newTestClient(t, testConfig(g.srv.URL, nil))
	left, err := killed.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)

	c := acquired(t, testConfig(g.srv.URL, nil))
	require.NoError(t, c.CloseSession(t.Context(), left.ID))
	assert.Equal(t, []string{left.ID}, g.deleted())
	assert.Equal(t, 1, g.openSessions(), "the closing client's own session stays open")

	g.mu.Lock()
	g.deleteStatus = []int{http.StatusNotFound, http.StatusGone}
	g.mu.Unlock()
	assert.NoError(t, c.CloseSession(t.Context(), "expired"), "404: already gone")
	assert.NoError(t, c.CloseSession(t.Context(), "expired"), "410: already gone")
	assert.Error(t, c.CloseSession(t.Context(), ""))
}

func TestAcquireRefusesUnusableSessions(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	iso := func(d time.Duration) string { return t0.Add(d).Format(time.RFC3339) }
	tests := []struct {
		name    string
		answer  map[string]any
		wantErr string
		rawID   string // must not appear in errors or logs
	}{
		{name: "ends when it begins", answer: map[string]any{"id": "s1", "creation_time": iso(0), "end_time": iso(0)},
			wantErr: "no later than it begins"},
		{name: "ends before it begins", answer: map[string]any{"id": "s1", "creation_time": iso(time.Hour), "end_time": iso(0)},
			wantErr: "no later than it begins"},
		{name: "ended already", answer: map[string]any{"id": "s1", "end_time": iso(-time.Second)},
			wantErr: "before now by this machine's clock"},
		{name: "ends now", answer: map[string]any{"id": "s1", "creation_time": iso(-time.Hour), "end_time": iso(0)},
			wantErr: "before now by this machine's clock"},
		{name: "id with CR LF", answer: map[string]any{"id": "s1\r\nX-Evil: yes", "end_time": iso(time.Hour)},
			wantErr: `invalid session id "s1\r\nX-Evil: yes" (15 bytes)`, rawID: "s1\r\nX-Evil: yes"},
		{name: "id with a space", answer: map[string]any{"id": "s 1", "end_time": iso(time.Hour)},
			wantErr: `invalid session id "s 1"`},
		{name: "id with a slash", answer: map[string]any{"id": "../s1", "end_time": iso(time.Hour)},
			wantErr: `invalid session id "../s1"`},
		{name: "id too long", answer: map[string]any{"id": strings.Repeat("a", maxSessionID+1), "end_time": iso(time.Hour)},
			wantErr: `invalid session id "aaaaaaaaaaaaaaaa..." (129 bytes)`, rawID: strings.Repeat("a", maxSessionID+1)},
		{name: "id not a string", answer: map[string]any{"id": map[string]any{"a": 1}, "end_time": iso(time.Hour)},
			wantErr: "invalid session id"},
		{name: "no id", answer: map[string]any{"end_time": iso(time.Hour)}, wantErr: "no id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var acquires atomic.Int32
			srv := newHandlerServer(t, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/session/" {
					acquires.Add(1)
					writeJSON(w, 200, tt.answer)
					return
				}
				w.WriteHeader(http.StatusNoContent)
			})
			var logs logBuffer
			c := newClockClient(t, testConfig(srv, &logs), newFakeClock(t0))
			_, err := c.Acquire(t.Context(), time.Hour)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
			assert.Equal(t, int32(1), acquires.Load(), "not retried")
			assert.Equal(t, Info{}, c.Info())
			if tt.rawID != "" {
				assert.NotContains(t, err.Error(), tt.rawID)
				assert.NotContains(t, logs.String(), tt.rawID)
			}
		})
	}

	// The longest id accepted, and a session ending after now.
	srv := newHandlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"id": strings.Repeat("A-z_0.", 21) + "xy", "creation_time": iso(-time.Hour), "end_time": iso(time.Second)})
	})
	c := newClockClient(t, testConfig(srv, nil), newFakeClock(t0))
	info, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)
	assert.Len(t, info.ID, maxSessionID)
}

func TestCloseSessionRefusesAnUnsafeID(t *testing.T) {
	g := newFakeGateway(t)
	c := newTestClient(t, testConfig(g.srv.URL, nil))
	for _, id := range []string{"a\r\nb", "a/b", strings.Repeat("x", 200)} {
		err := c.CloseSession(t.Context(), id)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "invalid session id")
		if id != "a/b" { // quoted as is: nothing in it to escape
			assert.NotContains(t, err.Error(), id, "not raw")
		}
	}
	assert.Empty(t, g.deleted(), "nothing sent")
}

// A gateway whose sessions last 2 s would have them renewed every second;
// the loop renews no more often than minRenewInterval.
func TestRenewLoopKeepsTheMinimumInterval(t *testing.T) {
	clk := newFakeClock(time.Now().Truncate(time.Second))
	g := newFakeGateway(t)
	g.now = clk.Now
	g.lifetime = time.Second
	c := newClockClient(t, testConfig(g.srv.URL, nil), clk)
	_, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)

	const rounds = 5
	for i := int32(1); i <= rounds; i++ {
		wait := clk.waitArmed(t, func(time.Duration) bool { return true })
		assert.Equal(t, minShortRenewInterval, wait, "round %d", i)
		// The loop waits on that timer and nothing else: just before it
		// fires, no session was asked for.
		clk.Advance(wait - time.Millisecond)
		assert.Equal(t, i, g.acquires.Load(), "round %d", i)
		clk.Advance(time.Millisecond)
		require.Eventually(t, func() bool { return c.Info().ID == fmt.Sprintf("s%d", i+1) },
			5*time.Second, time.Millisecond, "round %d", i)
	}
	assert.Equal(t, int32(rounds+1), g.acquires.Load(), "one session per minShortRenewInterval")
}

// A session shorter than twice minRenewInterval is renewed halfway
// through its life, before it ends (its writes are made final then).
func TestRenewSpacing(t *testing.T) {
	at := time.Unix(1_700_000_000, 0)
	for _, c := range []struct {
		lifetime, spacing, renewAt time.Duration
	}{
		{time.Hour, minRenewInterval, time.Hour - renewLead},
		{20 * time.Second, minRenewInterval, 10 * time.Second},
		{10 * time.Second, 5 * time.Second, 5 * time.Second},
		{time.Second, minShortRenewInterval, minShortRenewInterval}, // never faster
	} {
		info := Info{CreationTime: at, EndTime: at.Add(c.lifetime)}
		spacing := renewSpacing(info, at)
		assert.Equal(t, c.spacing, spacing, "lifetime %s", c.lifetime)
		assert.Equal(t, c.renewAt, max(renewalWait(info, at, at), spacingWait(at, time.Time{}, at, spacing)), "lifetime %s", c.lifetime)
	}
}

// A failing renewal, whether refused or answered with unusable times, is
// retried after minRenewInterval, doubling, never in a tight loop.
func TestRenewLoopBacksOffOnFailure(t *testing.T) {
	tests := []struct {
		name   string
		answer func(w http.ResponseWriter, now time.Time)
	}{
		{"refused", func(w http.ResponseWriter, _ time.Time) {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"detail": "no"})
		}},
		{"ends when it begins", func(w http.ResponseWriter, now time.Time) {
			ts := now.Format(time.RFC3339)
			writeJSON(w, 200, map[string]any{"id": "bad", "creation_time": ts, "end_time": ts})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock(time.Now().Truncate(time.Second))
			var acquires atomic.Int32
			var failing atomic.Bool
			srv := newHandlerServer(t, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/session/" {
					w.WriteHeader(http.StatusNoContent)
					return
				}
				n := acquires.Add(1)
				now := clk.Now()
				if failing.Load() {
					tt.answer(w, now)
					return
				}
				writeJSON(w, 200, map[string]any{"id": fmt.Sprintf("s%d", n),
					"creation_time": now.Format(time.RFC3339), "end_time": now.Add(time.Hour).Format(time.RFC3339)})
			})
			var logs logBuffer
			c := newClockClient(t, testConfig(srv, &logs), clk)
			_, err := c.Acquire(t.Context(), time.Hour)
			require.NoError(t, err)
			failing.Store(true)

			want := []time.Duration{59 * time.Minute, 10 * time.Second, 20 * time.Second, 40 * time.Second,
				80 * time.Second, 160 * time.Second, maxRenewBackoff, maxRenewBackoff}
			for i, w := range want {
				assert.Equal(t, w, clk.waitArmed(t, func(time.Duration) bool { return true }), "wait %d", i)
				assert.Equal(t, int32(1+i), acquires.Load(), "one try per wait")
				clk.Advance(w)
				require.Eventually(t, func() bool { return acquires.Load() == int32(2+i) }, 5*time.Second, time.Millisecond)
			}
			// Recovered: back to the normal schedule.
			failing.Store(false)
			assert.Equal(t, maxRenewBackoff, clk.waitArmed(t, func(time.Duration) bool { return true }))
			clk.Advance(maxRenewBackoff)
			require.Eventually(t, func() bool { return c.Info().ID == fmt.Sprintf("s%d", len(want)+2) }, 5*time.Second, time.Millisecond)
			assert.Equal(t, 59*time.Minute, clk.waitArmed(t, func(time.Duration) bool { return true }))
			assert.Contains(t, logs.String(), "renewal failed; will retry")
		})
	}
}

// A session refused right after it was acquired is renewed only
// minRenewInterval after it was: a gateway refusing every session cannot
// make dmfs ask for sessions faster than that.
func TestUnauthorizedRenewalWaitsTheMinimumInterval(t *testing.T) {
	clk := newFakeClock(time.Now().Truncate(time.Second))
	g := newFakeGateway(t)
	g.now = clk.Now
	g.zarrAuth = func(sid string) int { return http.StatusUnauthorized } // every session
	c := newClockClient(t, testConfig(g.srv.URL, nil), clk)
	_, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)
	st := c.Store("ds_1")

	for round := int32(1); round <= 3; round++ {
		done := make(chan error, 1)
		go func() {
			_, err := st.Get(t.Context(), "a/0")
			done <- err
		}()
		clk.waitArmed(t, is(minRenewInterval))
		// Waiting on the timer: nothing was asked for yet.
		assert.Equal(t, round, g.acquires.Load())
		clk.Advance(minRenewInterval)
		select {
		case err := <-done:
			assert.ErrorIs(t, err, fs.ErrPermission, "refused again after the renewal")
		case <-time.After(10 * time.Second):
			t.Fatal("Get did not end")
		}
		assert.Equal(t, round+1, g.acquires.Load())
	}
}
