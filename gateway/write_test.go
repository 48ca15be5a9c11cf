package gateway

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// writeFixture is a served folder with one store, "base": .zgroup, a/0,
// a/1 and b/0; and the folder staged writes go to.
func writeFixture(t *testing.T) (dir, staging string) {
	t.Helper()
	dir = t.TempDir()
	writeFile(t, filepath.Join(dir, "base", ".zgroup"), `{"zarr_format":2}`)
	writeFile(t, filepath.Join(dir, "base", "a", "0"), "a0")
	writeFile(t, filepath.Join(dir, "base", "a", "1"), "a1")
	writeFile(t, filepath.Join(dir, "base", "b", "0"), "b0")
	return dir, t.TempDir()
}

// writeServer serves a fresh writeFixture with a fake clock.
func writeServer(t *testing.T, cfg Config) (*Server, *time.Time) {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir, cfg.StagingDir = writeFixture(t)
	}
	cfg.Token = testToken
	s := newServer(t, cfg)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.sessions.now = func() time.Time { return now }
	return s, &now
}

func put(t *testing.T, s *Server, sess, target, body string) int {
	t.Helper()
	return call(t, s, http.MethodPost, target, strings.NewReader(body), withSession(sess)...).Code
}

// get returns the status and body of a GET in session sess.
func get(t *testing.T, s *Server, sess, target string) (int, string) {
	t.Helper()
	w := call(t, s, http.MethodGet, target, nil, withSession(sess)...)
	return w.Code, w.Body.String()
}

// listing returns the hrefs of a zarr folder listing.
func listing(t *testing.T, s *Server, sess, target string) []string {
	t.Helper()
	code, body := get(t, s, sess, target)
	if code != http.StatusOK {
		return nil
	}
	var out []string
	for _, part := range strings.Split(body, `<a href="`)[1:] {
		out = append(out, part[:strings.IndexByte(part, '"')])
	}
	return out
}

func closeSession(t *testing.T, s *Server, id, query, body string) int {
	t.Helper()
	var r *strings.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	if r == nil {
		return call(t, s, http.MethodDelete, "/session/"+id+query, nil, withSession(id)...).Code
	}
	return call(t, s, http.MethodDelete, "/session/"+id+query, r, withSession(id)...).Code
}

func counters(t *testing.T, s *Server) WriteCounters {
	t.Helper()
	w := call(t, s, http.MethodGet, "/_dmfs/counters", nil, auth...)
	require.Equal(t, http.StatusOK, w.Code)
	var c Counters
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &c))
	return c.Writes
}

// stagedFiles counts what is left in the staging folder.
func stagedFiles(t *testing.T, s *Server) int {
	t.Helper()
	n := 0
	require.NoError(t, filepath.WalkDir(s.writes.base, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return err
	}))
	return n
}

func TestWriteReadYourWrites(t *testing.T) {
	s, _ := writeServer(t, Config{})
	a, b := acquire(t, s, "").ID, acquire(t, s, "").ID
	require.Equal(t, 200, put(t, s, a, "/zarr/base/a/0", "new a0"))
	require.Equal(t, 200, call(t, s, http.MethodPut, "/zarr/base/c/0", strings.NewReader("c0"), withSession(a)...).Code)
	tests := []struct {
		sess, target string
		code         int
		body         string
	}{
		{a, "/zarr/base/a/0", 200, "new a0"},
		{a, "/zarr/base/c/0", 200, "c0"},
		{a, "/zarr/base/a/1", 200, "a1"}, // committed, seen through the overlay
		{b, "/zarr/base/a/0", 200, "a0"},
		{b, "/zarr/base/c/0", 404, ""},
	}
	for _, tc := range tests {
		code, body := get(t, s, tc.sess, tc.target)
		assert.Equal(t, tc.code, code, "%s %s", tc.sess, tc.target)
		if tc.code == 200 {
			assert.Equal(t, tc.body, body, tc.target)
		}
	}
	head := call(t, s, http.MethodHead, "/zarr/base/a/0", nil, withSession(a)...)
	assert.Equal(t, "6", head.Header().Get("Content-Length"))
	assert.Equal(t, []string{".zgroup", "a/", "b/", "c/"}, listing(t, s, a, "/zarr/base/"))
	assert.Equal(t, []string{".zgroup", "a/", "b/"}, listing(t, s, b, "/zarr/base/"))
	assert.Equal(t, []string{"0"}, listing(t, s, a, "/zarr/base/c/"))
	assert.Equal(t, 404, call(t, s, http.MethodGet, "/zarr/base/c/", nil, withSession(b)...).Code)
	// Nothing reached the served folder.
	got, err := os.ReadFile(filepath.Join(s.cfg.Dir, "base", "a", "0"))
	require.NoError(t, err)
	assert.Equal(t, "a0", string(got))
	assert.NoFileExists(t, filepath.Join(s.cfg.Dir, "base", "c", "0"))
}

func TestWriteFinalise(t *testing.T) {
	for _, tc := range []struct{ name, query, body string }{
		{"query parameter", "?finalise_write=true", ""},
		{"JSON body", "", `{"finalise_write": true}`},
		{"query True", "?finalise_write=True", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := writeServer(t, Config{})
			a := acquire(t, s, "").ID
			require.Equal(t, 200, put(t, s, a, "/zarr/base/a/0", "new a0"))
			require.Equal(t, 200, put(t, s, a, "/zarr/base/c/d/0", "cd0"))
			require.Equal(t, 204, call(t, s, http.MethodDelete, "/zarr/base/a/1", nil, withSession(a)...).Code)
			require.Equal(t, 204, call(t, s, http.MethodDelete, "/zarr/base/b/", nil, withSession(a)...).Code)
			require.Equal(t, 204, closeSession(t, s, a, tc.query, tc.body))

			fresh := acquire(t, s, "").ID
			for target, want := range map[string]string{"/zarr/base/a/0": "new a0", "/zarr/base/c/d/0": "cd0"} {
				code, body := get(t, s, fresh, target)
				assert.Equal(t, 200, code, target)
				assert.Equal(t, want, body, target)
			}
			for _, target := range []string{"/zarr/base/a/1", "/zarr/base/b/0"} {
				code, _ := get(t, s, fresh, target)
				assert.Equal(t, 404, code, target)
			}
			assert.Equal(t, []string{".zgroup", "a/", "c/"}, listing(t, s, fresh, "/zarr/base/"))
			got, err := os.ReadFile(filepath.Join(s.cfg.Dir, "base", "c", "d", "0"))
			require.NoError(t, err)
			assert.Equal(t, "cd0", string(got))
			assert.NoDirExists(t, filepath.Join(s.cfg.Dir, "base", "b"))
			assert.Zero(t, stagedFiles(t, s))
			leftovers, _ := filepath.Glob(filepath.Join(s.cfg.Dir, ".dmfs-commit-*"))
			assert.Empty(t, leftovers)
			c := counters(t, s)
			assert.Equal(t, int64(2), c.CommittedKeys)
			assert.Equal(t, int64(9), c.CommittedBytes)
			assert.Equal(t, int64(2), c.DeletesCommitted)
			assert.Equal(t, int64(1), c.SessionsFinalised)
			assert.Equal(t, outcomeFinalised, c.Sessions[a])
			// The closed session writes no more.
			assert.Equal(t, 401, put(t, s, a, "/zarr/base/a/0", "late"))
		})
	}
}

func TestWriteDiscard(t *testing.T) {
	tests := []struct {
		name string
		idle time.Duration
		end  func(t *testing.T, s *Server, now *time.Time, id string)
	}{
		{"finalise_write=false", 0, func(t *testing.T, s *Server, _ *time.Time, id string) {
			assert.Equal(t, 204, closeSession(t, s, id, "?finalise_write=false", ""))
		}},
		{"no flag", 0, func(t *testing.T, s *Server, _ *time.Time, id string) {
			assert.Equal(t, 204, closeSession(t, s, id, "", ""))
		}},
		{"JSON body false", 0, func(t *testing.T, s *Server, _ *time.Time, id string) {
			assert.Equal(t, 204, closeSession(t, s, id, "", `{"finalise_write": false}`))
		}},
		{"expired", 0, func(t *testing.T, s *Server, now *time.Time, id string) {
			*now = now.Add(time.Minute)
			s.ReapExpired()
		}},
		{"expired, then finalise is refused", 0, func(t *testing.T, s *Server, now *time.Time, id string) {
			*now = now.Add(time.Minute)
			assert.Equal(t, 410, closeSession(t, s, id, "?finalise_write=true", ""))
		}},
		{"ended idle", 10 * time.Second, func(t *testing.T, s *Server, now *time.Time, id string) {
			*now = now.Add(10 * time.Second)
			s.ReapExpired()
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, now := writeServer(t, Config{SessionIdle: tc.idle})
			a := acquire(t, s, "?duration=60").ID
			require.Equal(t, 200, put(t, s, a, "/zarr/base/a/0", "new a0"))
			require.Equal(t, 200, put(t, s, a, "/zarr/newone/.zgroup", "{}"))
			require.Equal(t, 204, call(t, s, http.MethodDelete, "/zarr/base/", nil, withSession(a)...).Code)
			require.Equal(t, 200, put(t, s, a, "/zarr/base/a/0", "newer"))
			tc.end(t, s, now, a)

			fresh := acquire(t, s, "").ID
			code, body := get(t, s, fresh, "/zarr/base/a/0")
			assert.Equal(t, 200, code)
			assert.Equal(t, "a0", body)
			assert.Equal(t, 404, call(t, s, http.MethodGet, "/datasource/newone", nil, auth...).Code)
			assert.NoDirExists(t, filepath.Join(s.cfg.Dir, "newone"))
			assert.Zero(t, stagedFiles(t, s))
			c := counters(t, s)
			assert.Equal(t, int64(3), c.StagedKeys)
			assert.Equal(t, int64(3), c.DiscardedKeys) // the first a/0 dropped by the clear, then the two left
			assert.Equal(t, int64(6+2+5), c.DiscardedBytes)
			assert.Equal(t, int64(1), c.DeletesDiscarded)
			assert.Zero(t, c.CommittedKeys)
			assert.Equal(t, int64(1), c.SessionsDiscarded)
			assert.Equal(t, outcomeDiscarded, c.Sessions[a])
			// The lock went with the session.
			assert.Equal(t, 200, put(t, s, fresh, "/zarr/base/a/0", "x"))
		})
	}
}

func TestWriteLock(t *testing.T) {
	tests := []struct {
		name             string
		multiA, multiB   bool
		targetB          string
		want             int
		wantAfterFinalse int
	}{
		{"neither multiwrite", false, false, "/zarr/base/a/9", 409, 200},
		{"only the holder multiwrite", true, false, "/zarr/base/a/9", 409, 200},
		{"only the newcomer multiwrite", false, true, "/zarr/base/a/9", 409, 200},
		{"both multiwrite", true, true, "/zarr/base/a/9", 200, 200},
		{"another datasource", false, false, "/zarr/other/a/9", 200, 200},
		{"delete is a write too", false, false, "/zarr/base/a/0", 409, 204},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := writeServer(t, Config{})
			a := acquire(t, s, "?allow_multiwrite="+boolString(tc.multiA)).ID
			b := acquire(t, s, "?allow_multiwrite="+boolString(tc.multiB)).ID
			require.Equal(t, 200, put(t, s, a, "/zarr/base/a/0", "A"))
			method := http.MethodPost
			if tc.wantAfterFinalse == 204 {
				method = http.MethodDelete
			}
			w := call(t, s, method, tc.targetB, strings.NewReader("B"), withSession(b)...)
			assert.Equal(t, tc.want, w.Code)
			if tc.want == 409 {
				assert.Contains(t, detail(t, w), "another session")
				assert.Equal(t, int64(1), counters(t, s).Conflicts)
				// Reads are never locked.
				code, body := get(t, s, b, "/zarr/base/a/0")
				assert.Equal(t, 200, code)
				assert.Equal(t, "a0", body)
				require.Equal(t, 204, closeSession(t, s, a, "?finalise_write=true", ""))
				assert.Equal(t, tc.wantAfterFinalse,
					call(t, s, method, tc.targetB, strings.NewReader("B"), withSession(b)...).Code)
			}
		})
	}
}

func boolString(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

func TestWriteNewID(t *testing.T) {
	s, _ := writeServer(t, Config{})
	a, b := acquire(t, s, "").ID, acquire(t, s, "").ID
	for _, id := range []string{"ab", "Upper_case", "has.dot", strings.Repeat("x", 81), "sp%20ace"} {
		w := call(t, s, http.MethodPost, "/zarr/"+id+"/.zgroup", strings.NewReader("{}"), withSession(a)...)
		assert.Equal(t, 400, w.Code, id)
		assert.Contains(t, detail(t, w), "^[a-z0-9_-]{3,80}$", id)
	}
	// An existing id outside the rule stays writable.
	writeFile(t, filepath.Join(s.cfg.Dir, "Old.Store", ".zgroup"), `{"zarr_format":2}`)

	require.Equal(t, 200, put(t, s, a, "/zarr/my_run-1/.zgroup", `{"zarr_format":2}`))
	require.Equal(t, 200, put(t, s, a, "/zarr/my_run-1/x/0", "x0"))
	code, body := get(t, s, a, "/zarr/my_run-1/x/0")
	assert.Equal(t, 200, code)
	assert.Equal(t, "x0", body)
	assert.Equal(t, []string{".zgroup", "x/"}, listing(t, s, a, "/zarr/my_run-1/"))
	code, _ = get(t, s, b, "/zarr/my_run-1/x/0")
	assert.Equal(t, 404, code)
	assert.NotContains(t, call(t, s, http.MethodGet, "/datasource/", nil, auth...).Body.String(), "my_run-1")

	require.Equal(t, 204, closeSession(t, s, a, "?finalise_write=true", ""))
	assert.Equal(t, 200, call(t, s, http.MethodGet, "/datasource/my_run-1", nil, auth...).Code)
	assert.Contains(t, call(t, s, http.MethodGet, "/datasource/", nil, auth...).Body.String(), `"my_run-1"`)
	code, body = get(t, s, b, "/zarr/my_run-1/x/0")
	assert.Equal(t, 200, code)
	assert.Equal(t, "x0", body)
	assert.Equal(t, []string{"base", "my_run-1"}, s.datasourceIDs())
}

func TestWriteDelete(t *testing.T) {
	s, _ := writeServer(t, Config{})
	a, b := acquire(t, s, "").ID, acquire(t, s, "").ID
	require.Equal(t, 204, call(t, s, http.MethodDelete, "/zarr/base/a/0", nil, withSession(a)...).Code)
	code, _ := get(t, s, a, "/zarr/base/a/0")
	assert.Equal(t, 404, code)
	assert.Equal(t, []string{"1"}, listing(t, s, a, "/zarr/base/a/"))
	code, _ = get(t, s, b, "/zarr/base/a/0")
	assert.Equal(t, 200, code)

	// Clear the store, then write one key: only it is seen.
	require.Equal(t, 204, call(t, s, http.MethodDelete, "/zarr/base/", nil, withSession(a)...).Code)
	assert.Empty(t, listing(t, s, a, "/zarr/base/"))
	assert.Equal(t, 200, call(t, s, http.MethodGet, "/zarr/base/", nil, withSession(a)...).Code)
	require.Equal(t, 200, put(t, s, a, "/zarr/base/.zgroup", `{"zarr_format":2,"new":1}`))
	assert.Equal(t, []string{".zgroup"}, listing(t, s, a, "/zarr/base/"))
	assert.Equal(t, []string{".zgroup", "a/", "b/"}, listing(t, s, b, "/zarr/base/"))
	require.Equal(t, 204, closeSession(t, s, a, "?finalise_write=true", ""))

	entries, err := os.ReadDir(filepath.Join(s.cfg.Dir, "base"))
	require.NoError(t, err)
	require.Len(t, entries, 1)
	assert.Equal(t, ".zgroup", entries[0].Name())
	assert.Equal(t, []string{".zgroup"}, listing(t, s, b, "/zarr/base/"))
}

func TestWriteFaults(t *testing.T) {
	t.Run("retryable rate", func(t *testing.T) {
		outcomes := func() []int {
			s, _ := writeServer(t, Config{WriteFailRate: 0.5, Seed: 7})
			a := acquire(t, s, "").ID
			var out []int
			for range 40 {
				w := call(t, s, http.MethodPost, "/zarr/base/a/0", strings.NewReader("x"), withSession(a)...)
				out = append(out, w.Code)
				if w.Code == 503 {
					assert.Equal(t, "1", w.Header().Get("Retry-After"))
				}
			}
			// Reads are not subject to the write rate.
			for range 20 {
				code, _ := get(t, s, a, "/zarr/base/a/1")
				assert.Equal(t, 200, code)
			}
			c := counters(t, s)
			ok := 0
			for _, o := range out {
				if o == 200 {
					ok++
				}
			}
			assert.Equal(t, int64(ok), c.StagedKeys)
			return out
		}
		first := outcomes()
		assert.Equal(t, first, outcomes(), "same seed, same failures")
		assert.Contains(t, first, 503)
		assert.Contains(t, first, 200)
	})
	t.Run("keys failing for good", func(t *testing.T) {
		s, _ := writeServer(t, Config{WriteFailKeys: []string{"a/bad*", "other/*"}})
		a := acquire(t, s, "").ID
		for _, tc := range []struct {
			target string
			want   int
		}{
			{"/zarr/base/a/bad1", 500}, {"/zarr/base/a/bad1", 500}, {"/zarr/base/a/good", 200},
			{"/zarr/other/x", 500}, {"/zarr/base/a/sub/bad1", 200},
		} {
			assert.Equal(t, tc.want, put(t, s, a, tc.target, "x"), tc.target)
		}
		_, err := New(Config{Dir: s.cfg.Dir, WriteFailKeys: []string{"[bad"}})
		assert.Error(t, err)
	})
}

func TestWriteCounters(t *testing.T) {
	s, _ := writeServer(t, Config{})
	a, reader := acquire(t, s, "").ID, acquire(t, s, "").ID
	require.Equal(t, 200, put(t, s, a, "/zarr/base/k", "12345"))
	require.Equal(t, 200, put(t, s, a, "/zarr/base/k", "123")) // replaces: the first is discarded
	require.Equal(t, 204, call(t, s, http.MethodDelete, "/zarr/base/a/0", nil, withSession(a)...).Code)
	// Refused for their token: counted nowhere but unauthenticated.
	call(t, s, http.MethodPost, "/zarr/base/k", strings.NewReader("x"), "X-DATAMESH-TOKEN", "wrong", "X-DATAMESH-SESSIONID", a)
	get(t, s, reader, "/zarr/base/a/0")
	c := counters(t, s)
	assert.Equal(t, WriteCounters{StagedKeys: 2, StagedBytes: 8, DiscardedKeys: 1, DiscardedBytes: 5, DeletesStaged: 1,
		Sessions: map[string]string{a: outcomeOpen}}, c)
	require.Equal(t, 204, closeSession(t, s, a, "?finalise_write=true", ""))
	require.Equal(t, 204, closeSession(t, s, reader, "", ""))
	c = counters(t, s)
	assert.Equal(t, WriteCounters{StagedKeys: 2, StagedBytes: 8, DiscardedKeys: 1, DiscardedBytes: 5, DeletesStaged: 1,
		CommittedKeys: 1, CommittedBytes: 3, DeletesCommitted: 1, SessionsFinalised: 1,
		Sessions: map[string]string{a: outcomeFinalised}}, c, "a reading session has no write outcome")
	w := call(t, s, http.MethodGet, "/_dmfs/counters", nil, auth...)
	var all Counters
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &all))
	assert.Equal(t, int64(2), all.ByRoute[routeZarrWrite])
	assert.Equal(t, int64(1), all.ByRoute[routeZarrDelete])
	assert.Equal(t, int64(1), all.Unauthenticated)
	assert.Equal(t, int64(2), all.ZarrKeys["base/k POST"], "one count per write, per key")
	assert.Equal(t, int64(1), all.ZarrKeys["base/a/0 DELETE"])
}

func TestWriteSizeBound(t *testing.T) {
	s, _ := writeServer(t, Config{MaxWriteBytes: 10})
	a := acquire(t, s, "").ID
	assert.Equal(t, 200, put(t, s, a, "/zarr/base/ten", "0123456789"))
	w := call(t, s, http.MethodPost, "/zarr/base/eleven", strings.NewReader("0123456789a"), withSession(a)...)
	assert.Equal(t, 413, w.Code)
	assert.Contains(t, detail(t, w), "larger than 10 bytes")
	code, _ := get(t, s, a, "/zarr/base/eleven")
	assert.Equal(t, 404, code)
	assert.Equal(t, 1, stagedFiles(t, s))
	assert.Equal(t, int64(DefaultMaxWriteBytes), Config{}.withDefaults().MaxWriteBytes)
}

func TestWriteRefusesEscapes(t *testing.T) {
	s, _ := writeServer(t, Config{})
	outside := t.TempDir()
	require.NoError(t, os.Symlink(outside, filepath.Join(s.cfg.Dir, "base", "out")))
	a := acquire(t, s, "").ID
	for _, target := range []string{
		"/zarr/base/../x", "/zarr/base/%2e%2e/x", "/zarr/base/a/%2E%2E/%2E%2E/x", "/zarr/base//abs",
		"/zarr/base/a%5Cb", "/zarr/base/a/./b", "/zarr/base/a%00b", "/zarr/base/out/x", "/zarr/base/",
		"/zarr/base/a/", "/zarr/..%2fescape/x",
	} {
		code := put(t, s, a, target, "x")
		assert.Contains(t, []int{400, 404}, code, target)
		if target == "/zarr/base/out/x" {
			assert.Equal(t, 400, code)
		}
	}
	assert.Equal(t, 400, call(t, s, http.MethodDelete, "/zarr/base/%2e%2e/", nil, withSession(a)...).Code)
	// Without a session, no write.
	assert.Equal(t, 401, call(t, s, http.MethodPost, "/zarr/base/x", strings.NewReader("x"), auth...).Code)
	require.Equal(t, 204, closeSession(t, s, a, "?finalise_write=true", ""))
	entries, err := os.ReadDir(outside)
	require.NoError(t, err)
	assert.Empty(t, entries)
	assert.Zero(t, counters(t, s).CommittedKeys)
}

func TestWriteDefaultStaging(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "served")
	writeFile(t, filepath.Join(dir, "base", ".zgroup"), `{"zarr_format":2}`)
	s := newServer(t, Config{Dir: dir, Token: testToken})
	assert.Equal(t, parent, filepath.Dir(s.writes.base), "staging sits next to the served folder")
	a := acquire(t, s, "").ID
	require.Equal(t, 200, put(t, s, a, "/zarr/base/k", "v"))
	require.Equal(t, 204, closeSession(t, s, a, "?finalise_write=true", ""))
	require.NoError(t, s.Close())
	assert.NoDirExists(t, s.writes.base)
	got, err := os.ReadFile(filepath.Join(dir, "base", "k"))
	require.NoError(t, err)
	assert.Equal(t, "v", string(got))
}

// TestWriteLockRace sends writes of two sessions at once, many times: at
// most one of them may ever hold the datasource.
func TestWriteLockRace(t *testing.T) {
	for i := range 50 {
		s, _ := writeServer(t, Config{})
		a, b := acquire(t, s, "").ID, acquire(t, s, "").ID
		codes := make(chan int, 2)
		for _, id := range []string{a, b} {
			go func() {
				codes <- call(t, s, http.MethodPost, "/zarr/base/k", strings.NewReader("v"), withSession(id)...).Code
			}()
		}
		got := []int{<-codes, <-codes}
		assert.ElementsMatch(t, []int{200, 409}, got, "round %d", i)
	}
}

func TestWriteFailedNewIDCreatesNothing(t *testing.T) {
	s, _ := writeServer(t, Config{MaxWriteBytes: 2})
	a := acquire(t, s, "").ID
	assert.Equal(t, 413, put(t, s, a, "/zarr/never_made/k", "too big"))
	assert.Equal(t, 404, call(t, s, http.MethodGet, "/zarr/never_made/", nil, withSession(a)...).Code)
	assert.Equal(t, 204, call(t, s, http.MethodDelete, "/zarr/never_made/", nil, withSession(a)...).Code)
	require.Equal(t, 204, closeSession(t, s, a, "?finalise_write=true", ""))
	assert.NoDirExists(t, filepath.Join(s.cfg.Dir, "never_made"))
	assert.Equal(t, 404, call(t, s, http.MethodGet, "/datasource/never_made", nil, auth...).Code)
}
