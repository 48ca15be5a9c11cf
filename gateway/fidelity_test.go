package gateway

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The gateway behaves like the real service where clients can tell the
// difference (issue 11, finding 9): idle sessions end, faults come in
// several codes with Retry-After, HEAD may lack a length, ids outside the
// rule for new ids are served, and the catalog says when a store changed.

func TestSessionIdle(t *testing.T) {
	type step struct {
		at     time.Duration // since the session was acquired
		status int
		detail string
	}
	const idleDetail = "Session expired: ended after being idle"
	tests := []struct {
		name  string
		idle  time.Duration
		steps []step
	}{
		{"off: only end_time ends it", 0, []step{
			{time.Hour - time.Second, 200, ""},
			{time.Hour, 401, "Session expired"},
		}},
		{"never used", 30 * time.Second, []step{
			{30 * time.Second, 401, idleDetail},
		}},
		{"each use moves the limit", 30 * time.Second, []step{
			{29 * time.Second, 200, ""},
			{58 * time.Second, 200, ""},
			{87 * time.Second, 200, ""},
			{117 * time.Second, 401, idleDetail},
			{118 * time.Second, 401, idleDetail}, // a refused request is no use
		}},
		{"end_time still comes first", 30 * time.Second, []step{
			{time.Hour - 10*time.Second, 401, idleDetail},
		}},
		{"end_time before the idle limit", time.Hour, []step{
			{30 * time.Minute, 200, ""},
			{time.Hour, 401, "Session expired"},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, Config{Token: testToken, SessionIdle: tc.idle})
			start := time.Now()
			now := start
			s.sessions.now = func() time.Time { return now }
			sess := acquire(t, s, "?duration=3600")
			for _, st := range tc.steps {
				now = start.Add(st.at)
				w := call(t, s, http.MethodGet, "/zarr/demo_grid/.zgroup", nil, withSession(sess.ID)...)
				require.Equal(t, st.status, w.Code, "at %s", st.at)
				if st.status == 401 {
					assert.Equal(t, st.detail, detail(t, w))
					assert.Equal(t, int64(0), s.Counters().Sessions.Open, "an ended session is not open")
				} else {
					assert.Equal(t, int64(1), s.Counters().Sessions.Open)
				}
			}
			// The client's way out: a new session works at once.
			fresh := acquire(t, s, "")
			assert.Equal(t, 200, call(t, s, http.MethodGet, "/zarr/demo_grid/.zgroup", nil, withSession(fresh.ID)...).Code)
		})
	}
}

// TestSessionIdleOpenCount checks the open-session heap against a plain
// count when sessions are used at different times.
func TestSessionIdleOpenCount(t *testing.T) {
	st := newSessionStore(0, 10*time.Second, 0)
	now := time.Unix(1_700_000_000, 0)
	st.now = func() time.Time { return now }
	var ids []string
	for range 20 {
		s, err := st.acquire(time.Hour, false)
		require.NoError(t, err)
		ids = append(ids, s.id)
	}
	lastUse := map[string]time.Time{}
	for _, id := range ids {
		lastUse[id] = now
	}
	for tick := 1; tick <= 40; tick++ {
		now = now.Add(time.Second)
		// Every third session is used every tick; the others age.
		for i, id := range ids {
			if i%3 == 0 && tick < 25 {
				if st.use(id) == sessionLive {
					lastUse[id] = now
				}
			}
		}
		want := int64(0)
		for _, id := range ids {
			if now.Sub(lastUse[id]) < 10*time.Second {
				want++
			}
		}
		require.Equal(t, want, st.openCount(), "tick %d", tick)
	}
	assert.Equal(t, int64(0), st.openCount())
	assert.Equal(t, sessionIdle, st.use(ids[0]))
}

func TestFailCodes(t *testing.T) {
	type answer struct {
		code       int
		retryAfter string
	}
	answers := func(cfg Config, n int) []answer {
		cfg.Token = testToken
		s := newServer(t, cfg)
		sess := acquire(t, s, "")
		var out []answer
		for range n {
			w := call(t, s, http.MethodGet, "/zarr/demo_grid/.zgroup", nil, withSession(sess.ID)...)
			if w.Code != 200 {
				require.Equal(t, "injected failure", detail(t, w))
			}
			out = append(out, answer{w.Code, w.Header().Get("Retry-After")})
		}
		return out
	}
	mixed := []int{502, 503, 504, 429}

	t.Run("every code drawn, Retry-After on 429 and 503 only", func(t *testing.T) {
		seen := map[int]int{}
		for _, a := range answers(Config{FailRate: 1, FailCodes: mixed, Seed: 3}, 200) {
			seen[a.code]++
			switch a.code {
			case 429, 503:
				assert.Equal(t, "1", a.retryAfter)
			default:
				assert.Empty(t, a.retryAfter, a.code)
			}
		}
		assert.Len(t, seen, 4, "%v", seen)
		for _, c := range mixed {
			assert.Greater(t, seen[c], 20, "code %d", c)
		}
	})
	t.Run("same seed, same answers", func(t *testing.T) {
		cfg := Config{FailRate: 0.4, FailCodes: mixed, Seed: 11}
		assert.Equal(t, answers(cfg, 100), answers(cfg, 100))
	})
	t.Run("codes do not move which requests fail", func(t *testing.T) {
		failed := func(as []answer) (out []bool) {
			for _, a := range as {
				out = append(out, a.code != 200)
			}
			return out
		}
		only503 := answers(Config{FailRate: 0.3, Seed: 5}, 100)
		assert.Equal(t, failed(only503), failed(answers(Config{FailRate: 0.3, Seed: 5, FailCodes: mixed}, 100)))
		for _, a := range only503 {
			assert.Contains(t, []int{200, 503}, a.code, "the default is 503")
		}
	})
	retryTests := []struct {
		retryAfter time.Duration
		want       string
	}{
		{0, "1"}, // the default
		{3 * time.Second, "3"},
		{-time.Second, "0"}, // "come back at once"
	}
	for _, tc := range retryTests {
		t.Run("Retry-After "+tc.retryAfter.String(), func(t *testing.T) {
			for _, a := range answers(Config{FailRate: 1, FailCodes: []int{429}, RetryAfter: tc.retryAfter}, 3) {
				assert.Equal(t, answer{429, tc.want}, a)
			}
		})
	}
	t.Run("bad config", func(t *testing.T) {
		for _, cfg := range []Config{
			{Dir: demoDir, FailCodes: []int{404}},
			{Dir: demoDir, FailCodes: []int{200}},
			{Dir: demoDir, FailCodes: []int{600}},
			{Dir: demoDir, RetryAfter: 1500 * time.Millisecond},
			{Dir: demoDir, SessionIdle: -time.Second},
		} {
			_, err := New(cfg)
			assert.Error(t, err, "%v", cfg)
		}
	})
}

func TestHeadWithoutLength(t *testing.T) {
	// Over a real connection: what matters is what reaches the client,
	// including anything net/http would add.
	for _, noLength := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "without length"}[noLength], func(t *testing.T) {
			s := newServer(t, Config{Token: testToken, HeadWithoutLength: noLength})
			ts := httptest.NewServer(s)
			defer ts.Close()
			sess := acquire(t, s, "")
			do := func(method, key string) *http.Response {
				req, err := http.NewRequest(method, ts.URL+"/zarr/demo_grid/"+key, nil)
				require.NoError(t, err)
				hdr := withSession(sess.ID)
				for i := 0; i+1 < len(hdr); i += 2 {
					req.Header.Set(hdr[i], hdr[i+1])
				}
				resp, err := ts.Client().Do(req)
				require.NoError(t, err)
				resp.Body.Close()
				return resp
			}
			for _, key := range []string{".zmetadata", "u10/0.0.0"} {
				fi, err := os.Stat(filepath.Join(demoDir, "demo_grid", filepath.FromSlash(key)))
				require.NoError(t, err)
				head := do(http.MethodHead, key)
				require.Equal(t, 200, head.StatusCode)
				assert.Equal(t, fi.ModTime().UTC().Format(http.TimeFormat), head.Header.Get("Last-Modified"))
				assert.Empty(t, head.TransferEncoding)
				if noLength {
					assert.Empty(t, head.Header.Values("Content-Length"))
					assert.Equal(t, int64(-1), head.ContentLength)
				} else {
					assert.Equal(t, fi.Size(), head.ContentLength)
				}
				get := do(http.MethodGet, key)
				require.Equal(t, 200, get.StatusCode)
				assert.Equal(t, fi.Size(), get.ContentLength, "GET always says its length")
				assert.Equal(t, fi.ModTime().UTC().Format(http.TimeFormat), get.Header.Get("Last-Modified"))
			}
			assert.Equal(t, 404, do(http.MethodHead, "u10/99.0.0").StatusCode)
		})
	}
}

// metaStore writes a v2 store with a chunk, all files at base.
func metaStore(t *testing.T, dir string, base time.Time) {
	t.Helper()
	for name, content := range map[string]string{
		".zgroup":    `{"zarr_format":2}`,
		".zattrs":    `{"title":"modified test"}`,
		".zmetadata": `{"zarr_consolidated_format":1,"metadata":{".zgroup":{"zarr_format":2}}}`,
		"x/.zarray":  `{"zarr_format":2,"shape":[2],"chunks":[2],"dtype":"<f4","compressor":null,"filters":null,"fill_value":0,"order":"C"}`,
		"x/0":        string(f32le(1, 2)),
	} {
		p := filepath.Join(dir, filepath.FromSlash(name))
		writeFile(t, p, content)
		require.NoError(t, os.Chtimes(p, base, base))
	}
}

func TestCatalogModified(t *testing.T) {
	dir := t.TempDir()
	const id = "era5.wind_v1.2"
	store := filepath.Join(dir, id)
	base := time.Date(2024, 3, 1, 12, 0, 0, 123456000, time.UTC)
	metaStore(t, store, base)
	newest := base.Add(time.Hour)
	require.NoError(t, os.Chtimes(filepath.Join(store, ".zattrs"), newest, newest))
	// Data and array metadata written later do not make the store "modified".
	later := base.Add(48 * time.Hour)
	require.NoError(t, os.Chtimes(filepath.Join(store, "x", "0"), later, later))
	require.NoError(t, os.Chtimes(filepath.Join(store, "x", ".zarray"), later, later))

	modified := func(s *Server) (fromCatalog, fromDatasource string) {
		fc := getCollection(t, s, "")
		require.Len(t, fc.Features, 1)
		return fc.Features[0].Properties["modified"].(string),
			getFeature(t, s, id).Properties["modified"].(string)
	}
	// Two gateways on the same folder: a restart, or a remount, sees the
	// same time.
	first, second := newServer(t, Config{Dir: dir}), newServer(t, Config{Dir: dir})
	for _, s := range []*Server{first, second} {
		c, d := modified(s)
		assert.Equal(t, "2024-03-01T13:00:00.123456Z", c)
		assert.Equal(t, c, d)
	}

	// Rewriting a root metadata file moves it, in running gateways too.
	writeFile(t, filepath.Join(store, ".zmetadata"), `{"zarr_consolidated_format":1,"metadata":{}}`)
	rewritten := base.Add(72 * time.Hour)
	require.NoError(t, os.Chtimes(filepath.Join(store, ".zmetadata"), rewritten, rewritten))
	for _, s := range []*Server{first, second, newServer(t, Config{Dir: dir})} {
		c, d := modified(s)
		assert.Equal(t, "2024-03-04T12:00:00.123456Z", c)
		assert.Equal(t, c, d)
	}

	// The Feature stays one valid JSON document with every property.
	w := call(t, first, http.MethodGet, "/datasource/"+url.PathEscape(id), nil, auth...)
	require.Equal(t, 200, w.Code)
	var f map[string]any
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &f))
	props := f["properties"].(map[string]any)
	for _, k := range []string{"modified", "name", "description", "driver", "tstart", "tend", "schema", "tags"} {
		assert.Contains(t, props, k)
	}
	assert.Equal(t, id, props["name"])
	assert.Equal(t, id, f["id"])

	// A v3 store's zarr.json counts too.
	dir3 := t.TempDir()
	writeFile(t, filepath.Join(dir3, "v3", "zarr.json"), `{"zarr_format":3,"node_type":"group"}`)
	require.NoError(t, os.Chtimes(filepath.Join(dir3, "v3", "zarr.json"), base, base))
	assert.Equal(t, "2024-03-01T12:00:00.123456Z", getFeature(t, newServer(t, Config{Dir: dir3}), "v3").Properties["modified"])
}

func TestDatasourceIDs(t *testing.T) {
	dir := t.TempDir()
	base := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	served := []string{"era5.wind_v1.2", "UPPER", "a b", "x%y", "né", "ab", "q?#"}
	for _, id := range served {
		metaStore(t, filepath.Join(dir, id), base)
	}
	metaStore(t, filepath.Join(dir, "bad\xff"), base) // not UTF-8: JSON cannot name it
	var logs bytes.Buffer
	s := newServer(t, Config{Dir: dir, Token: testToken, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	assert.ElementsMatch(t, served, s.datasourceIDs())
	assert.Contains(t, logs.String(), "not UTF-8")

	var listed []string
	for _, f := range getCollection(t, s, "").Features {
		listed = append(listed, f.ID)
	}
	assert.ElementsMatch(t, served, listed)

	hdr := withSession(acquire(t, s, "").ID)
	for _, id := range served {
		t.Run(id, func(t *testing.T) {
			esc := url.PathEscape(id)
			w := call(t, s, http.MethodGet, "/datasource/"+esc, nil, auth...)
			require.Equal(t, 200, w.Code, w.Body.String())
			var f featureJSON
			require.NoError(t, json.Unmarshal(w.Body.Bytes(), &f))
			assert.Equal(t, id, f.ID)
			w = call(t, s, http.MethodGet, "/zarr/"+esc+"/.zgroup", nil, hdr...)
			require.Equal(t, 200, w.Code, w.Body.String())
			assert.Equal(t, `{"zarr_format":2}`, w.Body.String())
			assert.Equal(t, 200, call(t, s, http.MethodHead, "/zarr/"+esc+"/x/0", nil, hdr...).Code)
			w = call(t, s, http.MethodGet, "/zarr/"+esc+"/", nil, hdr...)
			require.Equal(t, 200, w.Code)
			assert.Contains(t, w.Body.String(), `<a href="x/">x/</a>`)
			w = call(t, s, http.MethodGet, "/zarr/"+esc+"/x/", nil, hdr...)
			require.Equal(t, 200, w.Code)
			assert.Contains(t, w.Body.String(), `<a href="0">0</a>`)
			assert.Contains(t, s.Counters().ZarrKeys, id+"/.zgroup GET")
		})
	}

	refused := []struct {
		target string
		status int
	}{
		{"/zarr/../UPPER/.zgroup", 404},
		{"/zarr/%2e%2e/UPPER/.zgroup", 404},
		{"/zarr/./.zgroup", 404},
		{"/zarr/%2E/.zgroup", 404},
		{"/zarr/UPPER%2F..%2Fab/.zgroup", 404}, // one id, which no folder has
		{"/zarr/UPPER/../ab/.zgroup", 400},
		{"/zarr/UPPER/%2e%2e/ab/.zgroup", 400},
		{"/zarr/era5.wind_v1.2/../../etc/passwd", 400},
		{"/zarr/upper/.zgroup", 404}, // ids are exact
		{"/zarr/bad%FF/.zgroup", 404},
		{"/datasource/..", 404},
		{"/datasource/%2e%2e", 404},
		{"/datasource/upper", 404},
	}
	for _, tc := range refused {
		w := call(t, s, http.MethodGet, tc.target, nil, hdr...)
		assert.Equal(t, tc.status, w.Code, tc.target)
		assert.NotEmpty(t, detail(t, w), tc.target)
	}
}

func TestCheckID(t *testing.T) {
	for _, id := range []string{"abc", "ab", "a", "era5.wind_v1.2", "UPPER", "a b", "x%y", "né", strings.Repeat("a", 255), "...", ".hidden"} {
		assert.NoError(t, checkID(id), id)
	}
	for _, id := range []string{"", ".", "..", "a/b", "a\x00b", strings.Repeat("a", 256), "bad\xff"} {
		assert.Error(t, checkID(id), "%q", id)
	}
}
