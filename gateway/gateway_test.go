package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAuth(t *testing.T) {
	strict := newServer(t, Config{Token: testToken})
	open := newServer(t, Config{})
	tests := []struct {
		name   string
		srv    *Server
		hdr    []string
		status int
	}{
		{"no token", strict, nil, 401},
		{"both headers", strict, auth, 200},
		{"x header only", strict, []string{"X-DATAMESH-TOKEN", testToken}, 200},
		{"authorization token", strict, []string{"Authorization", "Token " + testToken}, 200},
		{"authorization bearer", strict, []string{"Authorization", "Bearer " + testToken}, 200},
		{"wrong x header", strict, []string{"X-DATAMESH-TOKEN", "nope"}, 401},
		// X-DATAMESH-TOKEN, when sent, decides alone: a proxy sets it and
		// leaves the client's Authorization behind.
		{"x right, proxy's authorization", strict, []string{"X-DATAMESH-TOKEN", testToken, "Authorization", "Token proxy"}, 200},
		{"x right, other bearer", strict, []string{"X-DATAMESH-TOKEN", testToken, "Authorization", "Bearer nope"}, 200},
		{"x right, garbage authorization", strict, []string{"X-DATAMESH-TOKEN", testToken, "Authorization", "Basic Zm9vOmJhcg=="}, 200},
		{"x wrong, authorization right", strict, []string{"X-DATAMESH-TOKEN", "nope", "Authorization", "Token " + testToken}, 401},
		{"x wrong, bearer right", strict, []string{"X-DATAMESH-TOKEN", "nope", "Authorization", "Bearer " + testToken}, 401},
		{"x empty, authorization right", strict, []string{"X-DATAMESH-TOKEN", "", "Authorization", "Token " + testToken}, 200},
		{"authorization wrong alone", strict, []string{"Authorization", "Token nope"}, 401},
		{"authorization without scheme", strict, []string{"Authorization", testToken}, 200},
		{"empty token scheme", strict, []string{"Authorization", "Token "}, 401},
		{"any token accepted", open, []string{"X-DATAMESH-TOKEN", "whatever"}, 200},
		{"any token, bearer", open, []string{"Authorization", "Bearer abc"}, 200},
		{"any token, still none", open, nil, 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, target := range []string{"/session/", "/datasource/", "/datasource/demo_grid", "/nowhere"} {
				w := call(t, tc.srv, http.MethodGet, target, nil, tc.hdr...)
				if tc.status == 200 && target == "/nowhere" {
					assert.Equal(t, 404, w.Code)
					continue
				}
				assert.Equal(t, tc.status, w.Code, target)
				if tc.status == 401 {
					assert.NotEmpty(t, detail(t, w))
				}
			}
		})
	}
}

func TestSessionAcquire(t *testing.T) {
	s := newServer(t, Config{Token: testToken, SessionTTL: 10 * time.Second})
	tests := []struct {
		query  string
		status int
		want   time.Duration
		multi  bool
	}{
		{"", 200, 10 * time.Second, false}, // default 3600, capped by the TTL
		{"?duration=5", 200, 5 * time.Second, false},
		{"?duration=2.5&allow_multiwrite=false", 200, 2500 * time.Millisecond, false},
		{"?duration=3&allow_multiwrite=true", 200, 3 * time.Second, true},
		{"?duration=abc", 400, 0, false},
		{"?duration=-1", 400, 0, false},
		{"?duration=0", 400, 0, false},
		{"?duration=5&allow_multiwrite=maybe", 400, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.query, func(t *testing.T) {
			w := call(t, s, http.MethodGet, "/session/"+tc.query, nil, append(auth, "Cache-Control", "no-store")...)
			require.Equal(t, tc.status, w.Code, w.Body.String())
			if tc.status != 200 {
				assert.Contains(t, detail(t, w), "")
				return
			}
			var raw map[string]any
			require.NoError(t, json.Unmarshal(w.Body.Bytes(), &raw))
			for _, k := range []string{"id", "user", "creation_time", "end_time", "write", "allow_multiwrite", "verified"} {
				assert.Contains(t, raw, k)
			}
			assert.Len(t, raw, 7)
			created, err := time.Parse(time.RFC3339Nano, raw["creation_time"].(string))
			require.NoError(t, err)
			end, err := time.Parse(time.RFC3339Nano, raw["end_time"].(string))
			require.NoError(t, err)
			assert.Equal(t, tc.want, end.Sub(created))
			assert.Equal(t, tc.multi, raw["allow_multiwrite"])
			assert.Equal(t, false, raw["write"])
			assert.True(t, strings.HasSuffix(raw["end_time"].(string), "Z"))
		})
	}
	// Without a TTL the default is an hour.
	s2 := newServer(t, Config{})
	sess := acquire(t, s2, "")
	c, _ := time.Parse(time.RFC3339Nano, sess.CreationTime)
	e, _ := time.Parse(time.RFC3339Nano, sess.EndTime)
	assert.Equal(t, time.Hour, e.Sub(c))
}

func TestSessionGetAndDelete(t *testing.T) {
	s := newServer(t, Config{Token: testToken})
	sess := acquire(t, s, "?duration=60")

	w := call(t, s, http.MethodGet, "/session/"+sess.ID, nil, auth...)
	require.Equal(t, 200, w.Code)
	var got sessionJSON
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &got))
	assert.Equal(t, sess, got)

	w = call(t, s, http.MethodGet, "/session/unknown-id", nil, auth...)
	assert.Equal(t, 404, w.Code)
	assert.Equal(t, "Session not found", detail(t, w))

	// Without a token and with another session's id: refused.
	other := acquire(t, s, "")
	w = call(t, s, http.MethodDelete, "/session/"+sess.ID, strings.NewReader(`{"finalise_write": false}`),
		"X-DATAMESH-SESSIONID", other.ID)
	assert.Equal(t, 401, w.Code)

	// Query-parameter form with auth.
	w = call(t, s, http.MethodDelete, "/session/"+sess.ID+"?finalise_write=false", nil, withSession(sess.ID)...)
	assert.Equal(t, 204, w.Code)
	assert.Empty(t, w.Body.Bytes())
	for _, method := range []string{http.MethodGet, http.MethodDelete} {
		w = call(t, s, method, "/session/"+sess.ID, nil, auth...)
		assert.Equal(t, 404, w.Code, method)
		assert.Equal(t, "Session not found", detail(t, w))
	}

	// JSON-body form, without a token but with its own live session id.
	w = call(t, s, http.MethodDelete, "/session/"+other.ID, strings.NewReader(`{"finalise_write": false}`),
		"X-DATAMESH-SESSIONID", other.ID, "Content-Type", "application/json")
	assert.Equal(t, 204, w.Code)
	// Closed now: the session id no longer authenticates.
	w = call(t, s, http.MethodDelete, "/session/"+other.ID, nil, "X-DATAMESH-SESSIONID", other.ID)
	assert.Equal(t, 401, w.Code)

	third := acquire(t, s, "")
	w = call(t, s, http.MethodDelete, "/session/"+third.ID, strings.NewReader(`not json`), auth...)
	assert.Equal(t, 400, w.Code)
	w = call(t, s, http.MethodDelete, "/session/"+third.ID+"?finalise_write=perhaps", nil, auth...)
	assert.Equal(t, 400, w.Code)

	c := s.Counters()
	assert.Equal(t, SessionCounters{Acquired: 3, Closed: 2, Open: 1}, c.Sessions)
}

func TestMaxSessions(t *testing.T) {
	s := newServer(t, Config{Token: testToken, MaxSessions: 2})
	a := acquire(t, s, "")
	acquire(t, s, "")
	w := call(t, s, http.MethodGet, "/session/", nil, auth...)
	require.Equal(t, http.StatusTooManyRequests, w.Code)
	assert.Contains(t, detail(t, w), "Too many open sessions")
	w = call(t, s, http.MethodDelete, "/session/"+a.ID+"?finalise_write=false", nil, withSession(a.ID)...)
	require.Equal(t, 204, w.Code)
	acquire(t, s, "")
}

func TestSessionExpiryAndClose(t *testing.T) {
	s := newServer(t, Config{Token: testToken, SessionTTL: 10 * time.Second})
	now := time.Now()
	s.sessions.now = func() time.Time { return now }
	sess := acquire(t, s, "?duration=3600")
	key := "/zarr/demo_grid/.zmetadata"

	w := call(t, s, http.MethodGet, key, nil, withSession(sess.ID)...)
	require.Equal(t, 200, w.Code)
	now = now.Add(11 * time.Second)
	w = call(t, s, http.MethodGet, key, nil, withSession(sess.ID)...)
	require.Equal(t, 401, w.Code)
	assert.Equal(t, "Session expired", detail(t, w))
	assert.Equal(t, int64(0), s.Counters().Sessions.Open)

	// An expired session no longer counts against --max-sessions either.
	fresh := acquire(t, s, "")
	w = call(t, s, http.MethodDelete, "/session/"+fresh.ID, nil, auth...)
	require.Equal(t, 204, w.Code)
	w = call(t, s, http.MethodGet, key, nil, withSession(fresh.ID)...)
	require.Equal(t, 401, w.Code)
	assert.Equal(t, "Session closed", detail(t, w))

	w = call(t, s, http.MethodGet, key, nil, withSession("no-such-session")...)
	require.Equal(t, 401, w.Code)
	assert.Equal(t, "Session not found", detail(t, w))

	w = call(t, s, http.MethodGet, key, nil, auth...)
	require.Equal(t, 401, w.Code)
	assert.Equal(t, "Session ID required", detail(t, w))
	assert.Equal(t, int64(1), s.Counters().ZarrWithoutSession)
}

func TestZarrServesKeysWrittenAfterStartup(t *testing.T) {
	// A pipeline writing into a store while it is served: a new chunk is
	// answered at once, a removed one is 404, as Datamesh would.
	dir := fixtureDir(t)
	s := newServer(t, Config{Dir: dir, Token: testToken})
	hdr := withSession(acquire(t, s, "").ID)
	const key = "/zarr/v3store/lat/c/2"
	require.Equal(t, 404, call(t, s, http.MethodHead, key, nil, hdr...).Code)

	body := f32le(10, 15)
	writeFile(t, filepath.Join(dir, "v3store", "lat", "c", "2"), string(body))
	h := call(t, s, http.MethodHead, key, nil, hdr...)
	require.Equal(t, 200, h.Code)
	assert.Equal(t, strconv.Itoa(len(body)), h.Header().Get("Content-Length"))
	w := call(t, s, http.MethodGet, key, nil, hdr...)
	require.Equal(t, 200, w.Code)
	assert.Equal(t, body, w.Body.Bytes())
	w = call(t, s, http.MethodGet, "/zarr/v3store/lat/c/", nil, hdr...)
	require.Equal(t, 200, w.Code)
	assert.Contains(t, w.Body.String(), `<a href="2">2</a>`, "the listing shows the new key")

	require.NoError(t, os.Remove(filepath.Join(dir, "v3store", "lat", "c", "0")))
	assert.Equal(t, 404, call(t, s, http.MethodGet, "/zarr/v3store/lat/c/0", nil, hdr...).Code)
}

func TestZarrGetHead(t *testing.T) {
	s := newServer(t, Config{Token: testToken})
	sess := acquire(t, s, "")
	hdr := withSession(sess.ID)
	for _, key := range []string{".zmetadata", ".zgroup", "u10/.zarray", "u10/0.1.2", "time/0"} {
		t.Run(key, func(t *testing.T) {
			want, err := os.ReadFile(filepath.Join(demoDir, "demo_grid", filepath.FromSlash(key)))
			require.NoError(t, err)
			w := call(t, s, http.MethodGet, "/zarr/demo_grid/"+key, nil, hdr...)
			require.Equal(t, 200, w.Code, w.Body.String())
			assert.Equal(t, want, w.Body.Bytes())
			assert.Equal(t, strconv.Itoa(len(want)), w.Header().Get("Content-Length"))
			assert.Equal(t, "application/octet-stream", w.Header().Get("Content-Type"))

			h := call(t, s, http.MethodHead, "/zarr/demo_grid/"+key, nil, hdr...)
			require.Equal(t, 200, h.Code)
			assert.Empty(t, h.Body.Bytes())
			assert.Equal(t, strconv.Itoa(len(want)), h.Header().Get("Content-Length"))
			assert.Equal(t, "application/octet-stream", h.Header().Get("Content-Type"))
		})
	}
	// Percent-encoded keys are decoded, "/" kept.
	want, err := os.ReadFile(filepath.Join(demoDir, "demo_sparse", "field", "0", "0"))
	require.NoError(t, err)
	w := call(t, s, http.MethodGet, "/zarr/demo_sparse/field%2F0%2F0", nil, hdr...)
	require.Equal(t, 200, w.Code)
	assert.Equal(t, want, w.Body.Bytes())
	w = call(t, s, http.MethodGet, "/zarr/demo_sparse/%66ield/0/0", nil, hdr...)
	require.Equal(t, 200, w.Code)

	notFound := []string{
		"/zarr/demo_grid/u10/99.0.0",    // chunk beyond the grid
		"/zarr/demo_sparse/field/0/1",   // absent chunk: fill_value
		"/zarr/demo_grid/u10",           // a folder is not a key
		"/zarr/demo_grid/.zmetadata/x",  // below a file
		"/zarr/no_such_ds/.zgroup",      // unknown datasource
		"/zarr/demo_grid",               // no key at all
		"/zarr/Bad.Name/.zgroup",        // not an id
		"/zarr/demo_grid/nope/",         // missing folder
		"/zarr/demo_grid/u10/0.0.0.zip", // near miss
	}
	for _, target := range notFound {
		w := call(t, s, http.MethodGet, target, nil, hdr...)
		assert.Equal(t, 404, w.Code, target)
		assert.NotEmpty(t, detail(t, w), target)
		h := call(t, s, http.MethodHead, target, nil, hdr...)
		assert.Equal(t, 404, h.Code, target)
	}
	// POST, PUT and DELETE are the write protocol (write_test.go).
	w = call(t, s, http.MethodPatch, "/zarr/demo_grid/.zgroup", nil, hdr...)
	assert.Equal(t, 405, w.Code)
}

func TestZarrRefusesEscapes(t *testing.T) {
	dir := fixtureDir(t)
	s := newServer(t, Config{Dir: dir, Token: testToken})
	sess := acquire(t, s, "")
	hdr := withSession(sess.ID)
	tests := []struct {
		target string
		status int
	}{
		{"/zarr/links/../query/.zgroup", 400},
		{"/zarr/links/%2e%2e/query/.zgroup", 400},
		{"/zarr/links/%2E%2E%2Fquery%2F.zgroup", 400},
		{"/zarr/links/sub/../../query/.zgroup", 400},
		{"/zarr/links/./real", 400},
		{"/zarr/links//etc/passwd", 400},
		{"/zarr/links/%2Fetc%2Fpasswd", 400},
		{"/zarr/links/real%00", 400},
		{"/zarr/links/a//b", 400},
		{"/zarr/links/..%5Cx", 400},
		{"/zarr/links/escape", 400},
		{"/zarr/links/escapedir/secret", 400}, // through a symlinked folder that leads outside: os.Root refuses it
		{"/zarr/links/inner", 200},
		{"/zarr/links/real", 200},
		{"/zarr/links/a%20b%23c%3Fd", 200},
		{"/zarr/linked/.zgroup", 404}, // symlinked store skipped
	}
	for _, tc := range tests {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			w := call(t, s, method, tc.target, nil, hdr...)
			assert.Equal(t, tc.status, w.Code, "%s %s: %s", method, tc.target, w.Body.String())
			assert.NotContains(t, w.Body.String(), "outside bytes")
		}
	}
	w := call(t, s, http.MethodGet, "/zarr/links/inner", nil, hdr...)
	assert.Equal(t, "inside bytes", w.Body.String())

	// A symlink planted after startup is not served either.
	require.NoError(t, os.Remove(filepath.Join(dir, "links", "real")))
	require.NoError(t, os.Symlink("/etc/passwd", filepath.Join(dir, "links", "real")))
	w = call(t, s, http.MethodGet, "/zarr/links/real", nil, hdr...)
	assert.Contains(t, []int{400, 404}, w.Code)
	assert.NotContains(t, w.Body.String(), "root:")
}

func TestDatasourceGone(t *testing.T) {
	dir := fixtureDir(t)
	s := newServer(t, Config{Dir: dir, Token: testToken})
	sess := acquire(t, s, "")
	hdr := withSession(sess.ID)
	require.Equal(t, 200, call(t, s, http.MethodGet, "/zarr/links/real", nil, hdr...).Code)
	require.NoError(t, os.RemoveAll(filepath.Join(dir, "links")))

	for _, target := range []string{"/zarr/links/real", "/zarr/links/", "/datasource/links"} {
		w := call(t, s, http.MethodGet, target, nil, hdr...)
		assert.Equal(t, http.StatusGone, w.Code, target)
		assert.Contains(t, detail(t, w), "links")
	}
	w := call(t, s, http.MethodGet, "/datasource/", nil, auth...)
	require.Equal(t, 200, w.Code)
	assert.NotContains(t, w.Body.String(), `"id":"links"`)
}

func TestListing(t *testing.T) {
	s := newServer(t, Config{Dir: fixtureDir(t), Token: testToken})
	demo := newServer(t, Config{Token: testToken})
	sess := acquire(t, s, "")
	dsess := acquire(t, demo, "")
	tests := []struct {
		srv     *Server
		sess    string
		target  string
		want    []string
		notWant []string
	}{
		{demo, dsess.ID, "/zarr/demo_grid/",
			[]string{`<a href=".zmetadata">.zmetadata</a>`, `<a href=".zgroup">`, `<a href="u10/">u10/</a>`, `<a href="time/">time/</a>`},
			[]string{`href="u10/.zarray"`, `0.0.0`}},
		{demo, dsess.ID, "/zarr/demo_grid/u10/",
			[]string{`<a href=".zarray">.zarray</a>`, `<a href="0.0.0">0.0.0</a>`, `<a href="3.2.3">3.2.3</a>`},
			[]string{`href="u10/`, `.zmetadata`}},
		{demo, dsess.ID, "/zarr/demo_sparse/field/",
			[]string{`<a href="0/">0/</a>`, `<a href=".zarray">`},
			nil},
		{demo, dsess.ID, "/zarr/demo_sparse/field/0/",
			[]string{`<a href="0">0</a>`, `<a href="2">2</a>`},
			[]string{`<a href="1">1</a>`}}, // (0+1)%3==1: absent
		{s, sess.ID, "/zarr/links/",
			[]string{`<a href="a%20b%23c%3Fd">a b#c?d</a>`, `<a href="sub/">sub/</a>`, `<a href="inner">`, `<a href="real">`},
			[]string{`escape`}},
		{s, sess.ID, "/zarr/links/sub/", []string{`<a href="./x:y">x:y</a>`}, nil},
		{s, sess.ID, "/zarr/links/a%20b%23c%3Fd/", nil, nil}, // a file, not a folder
		{demo, dsess.ID, "/zarr/demo_grid/nothing/", nil, nil},
		{s, sess.ID, "/zarr/links/escapedir/", nil, nil}, // a symlinked folder leading outside
	}
	for _, tc := range tests {
		t.Run(tc.target, func(t *testing.T) {
			w := call(t, tc.srv, http.MethodGet, tc.target, nil, withSession(tc.sess)...)
			if tc.want == nil {
				assert.Equal(t, 404, w.Code)
				return
			}
			require.Equal(t, 200, w.Code)
			assert.True(t, strings.HasPrefix(w.Header().Get("Content-Type"), "text/html"))
			body := w.Body.String()
			for _, s := range tc.want {
				assert.Contains(t, body, s)
			}
			for _, s := range tc.notWant {
				assert.NotContains(t, body, s)
			}
			h := call(t, tc.srv, http.MethodHead, tc.target, nil, withSession(tc.sess)...)
			assert.Equal(t, 200, h.Code)
			assert.Empty(t, h.Body.Bytes())
			assert.Equal(t, strconv.Itoa(len(body)), h.Header().Get("Content-Length"))
		})
	}
	// Listings need a session like keys.
	w := call(t, demo, http.MethodGet, "/zarr/demo_grid/", nil, auth...)
	assert.Equal(t, 401, w.Code)
}

func TestQueryRoutedBeforeDatasource(t *testing.T) {
	s := newServer(t, Config{Dir: fixtureDir(t), Token: testToken})
	sess := acquire(t, s, "")
	// "query" is also a datasource here; /zarr/query/ must still mean queries.
	w := call(t, s, http.MethodGet, "/zarr/query/.zgroup", nil, withSession(sess.ID)...)
	assert.Equal(t, 404, w.Code)
	assert.Equal(t, "Query not found", detail(t, w))
	w = call(t, s, http.MethodGet, "/zarr/query/abc123/.zmetadata", nil, withSession(sess.ID)...)
	assert.Equal(t, "Query not found", detail(t, w))
	w = call(t, s, http.MethodGet, "/zarr/query/abc123/.zmetadata", nil, auth...)
	assert.Equal(t, 401, w.Code)
	// The datasource itself is still described in the catalog.
	w = call(t, s, http.MethodGet, "/datasource/query", nil, auth...)
	assert.Equal(t, 200, w.Code)

	c := s.Counters()
	assert.Equal(t, int64(1), c.ByRoute[routeQuery], "no qhash/key in the path")
	assert.Equal(t, int64(2), c.ByRoute[routeQueryZarrGet])
	assert.Equal(t, int64(0), c.ByRoute[routeZarrGet])
	assert.Empty(t, c.ZarrKeys)
	assert.Equal(t, map[string]int64{"abc123/.zmetadata GET": 2}, c.QueryKeys)
}

func TestFaultInjection(t *testing.T) {
	statuses := func(seed int64, rate float64) []int {
		s := newServer(t, Config{Token: testToken, FailRate: rate, Seed: seed})
		sess := acquire(t, s, "")
		var out []int
		for range 200 {
			w := call(t, s, http.MethodGet, "/zarr/demo_grid/.zgroup", nil, withSession(sess.ID)...)
			if w.Code == 503 {
				require.Equal(t, "injected failure", detail(t, w))
			}
			out = append(out, w.Code)
		}
		// Other endpoints never fail.
		require.Equal(t, 200, call(t, s, http.MethodGet, "/datasource/", nil, auth...).Code)
		return out
	}
	count := func(codes []int, code int) (n int) {
		for _, c := range codes {
			if c == code {
				n++
			}
		}
		return n
	}
	a, b, c := statuses(7, 0.3), statuses(7, 0.3), statuses(8, 0.3)
	assert.Equal(t, a, b, "same seed, same sequence")
	assert.NotEqual(t, a, c, "another seed, another sequence")
	assert.InDelta(t, 60, count(a, 503), 25)
	assert.Equal(t, 200, count(a, 503)+count(a, 200))
	assert.Equal(t, 200, count(statuses(1, 1), 503))
	assert.Equal(t, 0, count(statuses(1, 0), 503))
}

func TestLatency(t *testing.T) {
	s := newServer(t, Config{Token: testToken, Latency: 80 * time.Millisecond})
	start := time.Now()
	w := call(t, s, http.MethodGet, "/datasource/demo_grid", nil, auth...)
	require.Equal(t, 200, w.Code)
	assert.GreaterOrEqual(t, time.Since(start), 80*time.Millisecond)

	// The counters endpoint is not delayed.
	start = time.Now()
	require.Equal(t, 200, call(t, s, http.MethodGet, "/_dmfs/counters", nil, auth...).Code)
	assert.Less(t, time.Since(start), 80*time.Millisecond)

	// A cancelled request stops waiting.
	slow := newServer(t, Config{Token: testToken, Latency: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	r := httptestRequest(ctx, "/datasource/")
	done := make(chan struct{})
	go func() {
		slow.ServeHTTP(newDiscardWriter(), r)
		close(done)
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("latency ignored the cancelled request")
	}
}

func TestCounters(t *testing.T) {
	s := newServer(t, Config{Token: testToken})
	sess := acquire(t, s, "")
	hdr := withSession(sess.ID)
	call(t, s, http.MethodGet, "/datasource/", nil, auth...)
	call(t, s, http.MethodGet, "/datasource/demo_grid", nil, auth...)
	zm := call(t, s, http.MethodGet, "/zarr/demo_grid/.zmetadata", nil, hdr...)
	call(t, s, http.MethodGet, "/zarr/demo_grid/u10/0.0.0", nil, hdr...)
	call(t, s, http.MethodHead, "/zarr/demo_grid/u10/0.0.0", nil, hdr...)
	call(t, s, http.MethodHead, "/zarr/demo_grid/u10/0.0.1", nil, hdr...)
	call(t, s, http.MethodGet, "/zarr/demo_sparse/field/0/1", nil, hdr...)
	call(t, s, http.MethodGet, "/zarr/demo_grid/", nil, hdr...)
	call(t, s, http.MethodGet, "/zarr/demo_grid/.zgroup", nil, auth...)
	call(t, s, http.MethodGet, "/session/"+sess.ID, nil, auth...)

	// Refused for their token: counted apart, and only there.
	call(t, s, http.MethodGet, "/zarr/demo_grid/u10/0.0.0", nil, "X-DATAMESH-TOKEN", "wrong", "X-DATAMESH-SESSIONID", sess.ID)
	call(t, s, http.MethodGet, "/datasource/", nil)
	for _, path := range []string{"/_dmfs/counters", "/_dmfs/counters/reset"} {
		for _, hdr := range [][]string{nil, {"X-DATAMESH-TOKEN", "wrong"}} {
			assert.Equal(t, 401, call(t, s, http.MethodGet, path, nil, hdr...).Code, "%s %v", path, hdr)
		}
	}

	w := call(t, s, http.MethodGet, "/_dmfs/counters", nil, auth...)
	require.Equal(t, 200, w.Code)
	var raw map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &raw))
	for _, k := range []string{"requests", "by_route", "by_status", "by_route_status", "zarr_keys", "zarr_keys_other",
		"zarr_keys_max", "sessions", "zarr_without_session", "bytes_sent", "unauthenticated",
		"query_keys", "query_keys_other", "stages", "stages_other", "zarr_in_flight"} {
		assert.Contains(t, raw, k)
	}
	var c Counters
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &c))
	assert.Equal(t, int64(11), c.Requests)
	assert.Equal(t, map[string]int64{
		"session_acquire": 1, "session_get": 1, "session_delete": 0, "catalog": 1, "datasource": 1,
		"zarr_get": 4, "zarr_head": 2, "zarr_list": 1, "zarr_write": 0, "zarr_delete": 0, "query": 0,
		"stage": 0, "query_zarr_get": 0, "query_zarr_head": 0, "query_zarr_list": 0, "data": 0, "oceanql": 0,
	}, c.ByRoute)
	assert.Equal(t, map[string]int64{"200": 9, "404": 1, "401": 1}, c.ByStatus)
	assert.Equal(t, int64(2), c.ByRouteStatus["zarr_get 200"])
	assert.Equal(t, int64(1), c.ByRouteStatus["zarr_get 404"])
	assert.Equal(t, int64(1), c.ByRouteStatus["zarr_get 401"])
	assert.Equal(t, int64(2), c.ByRouteStatus["zarr_head 200"])
	assert.Equal(t, map[string]int64{
		"demo_grid/.zmetadata GET": 1, "demo_grid/u10/0.0.0 GET": 1, "demo_grid/u10/0.0.0 HEAD": 1,
		"demo_grid/u10/0.0.1 HEAD": 1, "demo_sparse/field/0/1 GET": 1, "demo_grid/.zgroup GET": 1,
	}, c.ZarrKeys)
	assert.Equal(t, SessionCounters{Acquired: 1, Closed: 0, Open: 1}, c.Sessions)
	assert.Equal(t, int64(1), c.ZarrWithoutSession)
	assert.Equal(t, int64(6), c.Unauthenticated)
	assert.Zero(t, c.ZarrKeysOther)
	assert.Equal(t, DefaultMaxCounterKeys, c.ZarrKeysMax)
	assert.Greater(t, c.BytesSent, int64(zm.Body.Len()))
	assert.Equal(t, c, s.Counters())

	w = call(t, s, http.MethodPost, "/_dmfs/counters/reset", nil, auth...)
	require.Equal(t, 204, w.Code)
	c = s.Counters()
	assert.Equal(t, int64(0), c.Requests)
	assert.Equal(t, int64(0), c.Unauthenticated)
	assert.Equal(t, int64(0), c.BytesSent)
	assert.Empty(t, c.ZarrKeys)
	assert.Equal(t, int64(0), c.ByRoute["zarr_get"])
	assert.Equal(t, int64(1), c.Sessions.Open, "reset keeps the open-session count")
	assert.Equal(t, 405, call(t, s, http.MethodGet, "/_dmfs/counters/reset", nil, auth...).Code)
}

func TestCatalog(t *testing.T) {
	dir := fixtureDir(t)
	for _, id := range []string{demoGridID, demoStationsID, demoSparseID} {
		require.NoError(t, os.Symlink(filepath.Join(demoDir, id), filepath.Join(dir, id+"_link")))
	}
	// Copy the demo stores in (symlinked stores are refused).
	require.NoError(t, os.CopyFS(filepath.Join(dir, demoGridID), os.DirFS(filepath.Join(demoDir, demoGridID))))
	require.NoError(t, os.CopyFS(filepath.Join(dir, demoSparseID), os.DirFS(filepath.Join(demoDir, demoSparseID))))
	s := newServer(t, Config{Dir: dir, Token: testToken})

	fc := getCollection(t, s, "")
	var ids []string
	for _, f := range fc.Features {
		ids = append(ids, f.ID)
	}
	assert.Equal(t, []string{"Bad.Name", "demo_grid", "demo_sparse", "links", "query", "v3store"}, ids)

	tests := []struct {
		query string
		want  []string
	}{
		{"?search=DEMO", []string{"demo_grid", "demo_sparse"}},
		{"?search=wind", []string{"demo_grid"}},              // name
		{"?search=%27%2F%27+chunk", []string{"demo_sparse"}}, // description
		{"?search=version+THREE", []string{"v3store"}},
		{"?search=nothing-matches", nil},
		{"?limit=2", []string{"Bad.Name", "demo_grid"}},
		{"?search=bad.NAME", []string{"Bad.Name"}}, // ids match whatever their case
		{"?search=demo&limit=1", []string{"demo_grid"}},
		{"?limit=0", nil},
		{"?in_trange=2020-01-01,2021-01-01", []string{"Bad.Name", "demo_grid", "demo_sparse", "links", "query", "v3store"}},
	}
	for _, tc := range tests {
		t.Run(tc.query, func(t *testing.T) {
			var got []string
			for _, f := range getCollection(t, s, tc.query).Features {
				got = append(got, f.ID)
			}
			assert.Equal(t, tc.want, got)
		})
	}
	w := call(t, s, http.MethodGet, "/datasource/?limit=x", nil, auth...)
	assert.Equal(t, 400, w.Code)

	grid := getFeature(t, s, "demo_grid")
	assert.Equal(t, "Feature", grid.Type)
	assert.Equal(t, "zarr", grid.Properties["driver"])
	assert.Equal(t, "Demo global wind and temperature", grid.Properties["name"])
	assert.Equal(t, "2020-01-01T00:00:00Z", grid.Properties["tstart"])
	assert.Equal(t, "2020-01-01T23:00:00Z", grid.Properties["tend"])
	assert.JSONEq(t, `{"type":"Polygon","coordinates":[[[-180,-90],[180,-90],[180,90],[-180,90],[-180,-90]]]}`, string(grid.Geometry))
	schema := grid.Properties["schema"].(map[string]any)
	assert.Equal(t, map[string]any{"time": 24.0, "lat": 91.0, "lon": 180.0}, schema["dims"])
	assert.ElementsMatch(t, []string{"time", "lat", "lon"}, keys(schema["coords"]))
	assert.ElementsMatch(t, []string{"u10", "v10", "t2m"}, keys(schema["data_vars"]))
	u10 := schema["data_vars"].(map[string]any)["u10"].(map[string]any)
	assert.Equal(t, "float32", u10["dtype"])
	assert.Equal(t, []any{"time", "lat", "lon"}, u10["dims"])
	assert.Equal(t, "m s-1", u10["attrs"].(map[string]any)["units"])
	assert.Equal(t, "CF-1.8", schema["attrs"].(map[string]any)["Conventions"])

	sparse := getFeature(t, s, "demo_sparse")
	assert.Equal(t, "null", string(sparse.Geometry))
	assert.Nil(t, sparse.Properties["tstart"])
	assert.Contains(t, sparse.Properties, "tend")

	v3 := getFeature(t, s, "v3store")
	assert.Equal(t, "Version three", v3.Properties["name"])
	assert.Equal(t, "hand-made v3", v3.Properties["description"])
	v3schema := v3.Properties["schema"].(map[string]any)
	assert.Equal(t, map[string]any{"lat": 4.0}, v3schema["dims"])
	assert.Equal(t, "float32", v3schema["coords"].(map[string]any)["lat"].(map[string]any)["dtype"])

	w = call(t, s, http.MethodGet, "/datasource/nothere", nil, auth...)
	assert.Equal(t, 404, w.Code)
	assert.NotEmpty(t, detail(t, w))
	w = call(t, s, http.MethodGet, "/datasource/Bad.Name", nil, auth...)
	assert.Equal(t, 200, w.Code, "an existing id outside the rule for new ids is served")
}

func TestLoadSkipsNonDatasources(t *testing.T) {
	var logs bytes.Buffer
	s := newServer(t, Config{Dir: fixtureDir(t), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	assert.Equal(t, []string{"Bad.Name", "links", "query", "v3store"}, s.datasourceIDs())
	assert.Contains(t, logs.String(), "symlinked")
	assert.Contains(t, logs.String(), "neither a Zarr store nor a table")

	_, err := New(Config{Dir: filepath.Join(t.TempDir(), "missing")})
	assert.ErrorContains(t, err, "missing")
	_, err = New(Config{})
	assert.Error(t, err)
	_, err = New(Config{Dir: demoDir, FailRate: 2})
	assert.ErrorContains(t, err, "fail rate")
}

func TestTokenNeverShown(t *testing.T) {
	var logs bytes.Buffer
	cfg := Config{Dir: demoDir, Token: testToken, Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	s := newServer(t, cfg)
	sess := acquire(t, s, "")
	call(t, s, http.MethodGet, "/zarr/demo_grid/.zgroup", nil, withSession(sess.ID)...)
	call(t, s, http.MethodGet, "/datasource/", nil, "X-DATAMESH-TOKEN", "wrong-"+testToken)
	for _, text := range []string{
		fmt.Sprintf("%v", cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg), fmt.Sprintf("%s", cfg),
		fmt.Sprintf("%v", s), fmt.Sprintf("%+v", s), fmt.Sprintf("%#v", s), fmt.Sprintf("%v", &cfg),
		logs.String(),
	} {
		assert.NotContains(t, text, testToken)
	}
	// The log has one line per request with the fields that matter.
	assert.Contains(t, logs.String(), `"route":"zarr_get"`)
	assert.Contains(t, logs.String(), `"session":"`+sess.ID+`"`)
	assert.Contains(t, logs.String(), `"status":401`)
}

type featureJSON struct {
	Type       string          `json:"type"`
	ID         string          `json:"id"`
	Geometry   json.RawMessage `json:"geometry"`
	Properties map[string]any  `json:"properties"`
}

func getCollection(t *testing.T, s http.Handler, query string) (fc struct {
	Type     string        `json:"type"`
	Features []featureJSON `json:"features"`
}) {
	t.Helper()
	w := call(t, s, http.MethodGet, "/datasource/"+query, nil, auth...)
	require.Equal(t, 200, w.Code, w.Body.String())
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &fc))
	require.Equal(t, "FeatureCollection", fc.Type)
	return fc
}

func getFeature(t *testing.T, s http.Handler, id string) featureJSON {
	t.Helper()
	w := call(t, s, http.MethodGet, "/datasource/"+id, nil, auth...)
	require.Equal(t, 200, w.Code, w.Body.String())
	var f featureJSON
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &f))
	require.Equal(t, id, f.ID)
	return f
}

func keys(m any) []string {
	var out []string
	for k := range m.(map[string]any) {
		out = append(out, k)
	}
	return out
}

func TestNonFiniteAsNull(t *testing.T) {
	cases := map[string]string{
		`{"a": NaN, "b": [Infinity, -Infinity, 1.5]}`: `{"a": null, "b": [null, null, 1.5]}`,
		`{"s": "NaN and \"Infinity\"", "n": NaN}`:     `{"s": "NaN and \"Infinity\"", "n": null}`,
		`{"plain": 1}`: `{"plain": 1}`,
	}
	for in, want := range cases {
		assert.Equal(t, want, string(nonFiniteAsNull([]byte(in))), in)
	}
}
