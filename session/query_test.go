package session

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
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

const (
	testQHash = "0123456789abcdef0123456789abcdef0123456789abcdef01234567"
	testQuery = `{"datasource":"ds_1","variables":["u10"],"timefilter":{"type":"range","times":["2020-01-01","2020-02-01"]}}`
)

// stageAnswer is a stage answer as the gateway sends it, with fields
// replaced or removed (nil) by over.
func stageAnswer(over map[string]any) []byte {
	doc := map[string]any{
		"query":     json.RawMessage(`{"datasource":"ds_1","variables":["u10"]}`),
		"qhash":     testQHash,
		"formats":   []string{"zarr", "nc"},
		"size":      123456,
		"dlen":      720,
		"coordmap":  map[string]string{"t": "time"},
		"coordkeys": map[string]string{},
		"container": "dataset",
		"sig":       "abc",
	}
	for k, v := range over {
		if v == nil {
			delete(doc, k)
			continue
		}
		doc[k] = v
	}
	b, _ := json.Marshal(doc)
	return b
}

// stageSeen is what the gateway received for one stage.
type stageSeen struct {
	method, path, session, token, auth, contentType string
	body                                            []byte
}

func TestStage(t *testing.T) {
	okStage := Stage{QHash: testQHash, Container: ContainerDataset, Formats: []string{"zarr", "nc"},
		Size: 123456, DLen: 720, Query: json.RawMessage(`{"datasource":"ds_1","variables":["u10"]}`)}
	tests := []struct {
		name    string
		answers []func(w http.ResponseWriter) // one per request; the last repeats
		want    Stage
		// the error: its cause (errors.Is), text it holds, and what it must
		// not match
		wantIs     []error
		wantNotIs  []error
		wantErr    string
		wantStatus int
		tries      int32
	}{
		{name: "200", answers: answers(200, stageAnswer(nil)), want: okStage, tries: 1},
		{name: "200 table", answers: answers(200, stageAnswer(map[string]any{"container": "geodataframe"})),
			want: func() Stage { s := okStage; s.Container = ContainerGeoDataFrame; return s }(), tries: 1},
		{name: "200, sizes and formats absent or odd",
			answers: answers(200, stageAnswer(map[string]any{"size": 1.5e9, "dlen": nil, "formats": "zarr", "query": nil})),
			want:    Stage{QHash: testQHash, Container: ContainerDataset, Size: 1_500_000_000}, tries: 1},
		{name: "204 no data", answers: answers(204, nil), wantIs: []error{ErrNoData},
			wantNotIs: []error{fs.ErrNotExist, ErrBadQuery}, wantErr: "matched no data", wantStatus: 204, tries: 1},
		{name: "400", answers: answers(400, []byte(`{"detail":"Datasource ds_1 has no variable u11"}`)),
			wantIs: []error{ErrBadQuery}, wantNotIs: []error{fs.ErrNotExist, ErrNoData},
			wantErr: "Datasource ds_1 has no variable u11", wantStatus: 400, tries: 1},
		{name: "422", answers: answers(422, []byte(`{"detail":[{"loc":["body","timefilter"],"msg":"bad\ntime"}]}`)),
			wantIs: []error{ErrBadQuery}, wantErr: `[{"loc":["body","timefilter"],"msg":"bad\ntime"}]`, wantStatus: 422, tries: 1},
		{name: "413 is a bad query too", answers: answers(413, []byte(`{"detail":"too big"}`)),
			wantIs: []error{ErrBadQuery}, wantErr: "too big", wantStatus: 413, tries: 1},
		{name: "404", answers: answers(404, []byte(`{"detail":"Datasource ds_1 not found"}`)),
			wantIs: []error{fs.ErrNotExist}, wantNotIs: []error{ErrBadQuery}, wantErr: "ds_1 not found", wantStatus: 404, tries: 1},
		{name: "403", answers: answers(403, []byte(`{"detail":"not yours"}`)),
			wantIs: []error{fs.ErrPermission}, wantNotIs: []error{ErrBadQuery}, wantStatus: 403, tries: 1},
		{name: "410", answers: answers(410, []byte(`{"detail":"gone"}`)),
			wantIs: []error{ErrGone}, wantNotIs: []error{ErrBadQuery, fs.ErrNotExist}, wantStatus: 410, tries: 1},
		{name: "503 then 200", answers: []func(w http.ResponseWriter){answer(503, nil), answer(200, stageAnswer(nil))},
			want: okStage, tries: 2},
		{name: "429 retried, then not a bad query", answers: answers(429, []byte(`{"detail":"slow down"}`)),
			wantNotIs: []error{ErrBadQuery}, wantStatus: 429, tries: 4},
		{name: "500", answers: answers(500, []byte(`{"detail":"oops"}`)),
			wantNotIs: []error{ErrBadQuery, fs.ErrNotExist}, wantErr: "oops", wantStatus: 500, tries: 1},
		{name: "qhash with a slash refused", answers: answers(200, stageAnswer(map[string]any{"qhash": "../../session/s1"})),
			wantErr: "invalid query hash", wantStatus: 200, tries: 1},
		{name: "qhash dot-dot refused", answers: answers(200, stageAnswer(map[string]any{"qhash": ".."})),
			wantErr: "invalid query hash", wantStatus: 200, tries: 1},
		{name: "qhash empty refused", answers: answers(200, stageAnswer(map[string]any{"qhash": ""})),
			wantErr: "invalid query hash", wantStatus: 200, tries: 1},
		{name: "qhash too long refused", answers: answers(200, stageAnswer(map[string]any{"qhash": strings.Repeat("a", 129)})),
			wantErr: "invalid query hash", wantStatus: 200, tries: 1},
		{name: "qhash with a space refused", answers: answers(200, stageAnswer(map[string]any{"qhash": "a b"})),
			wantErr: "invalid query hash", wantStatus: 200, tries: 1},
		{name: "qhash not a string refused", answers: answers(200, stageAnswer(map[string]any{"qhash": 12})),
			wantErr: "no qhash", wantStatus: 200, tries: 1},
		{name: "qhash absent", answers: answers(200, stageAnswer(map[string]any{"qhash": nil})),
			wantErr: "no qhash", wantStatus: 200, tries: 1},
		{name: "unknown container named", answers: answers(200, stageAnswer(map[string]any{"container": "Table\x1b[31m"})),
			wantErr: `unknown container "Table\x1b[31m"`, wantStatus: 200, tries: 1},
		{name: "container absent", answers: answers(200, stageAnswer(map[string]any{"container": nil})),
			wantErr: "no container", wantStatus: 200, tries: 1},
		{name: "not JSON", answers: answers(200, []byte(`<html>`)), wantErr: "not the expected JSON", wantStatus: 200, tries: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGateway(t)
			var mu sync.Mutex
			var seen []stageSeen
			g.api = func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				mu.Lock()
				seen = append(seen, stageSeen{method: r.Method, path: r.URL.EscapedPath(), session: r.Header.Get("X-DATAMESH-SESSIONID"),
					token: r.Header.Get("X-DATAMESH-TOKEN"), auth: r.Header.Get("Authorization"),
					contentType: r.Header.Get("Content-Type"), body: body})
				n := len(seen)
				mu.Unlock()
				tt.answers[min(n, len(tt.answers))-1](w)
			}
			var logs logBuffer
			c := acquired(t, testConfig(g.srv.URL, &logs))
			instantRetries(c)

			st, err := c.Stage(t.Context(), json.RawMessage(testQuery))
			assert.Equal(t, tt.tries, g.apiReqs.Load(), "requests")
			for _, s := range seen {
				assert.Equal(t, stageSeen{method: "POST", path: "/oceanql/stage/", session: "s1", token: testToken,
					auth: "Token " + testToken, contentType: "application/json", body: []byte(testQuery)}, s)
			}
			assert.NotContains(t, logs.String(), testToken)
			if tt.wantErr == "" && tt.wantIs == nil && tt.wantStatus == 0 {
				require.NoError(t, err)
				assert.Equal(t, tt.want, st)
				return
			}
			require.Error(t, err)
			assert.Equal(t, Stage{}, st)
			var e *Error
			require.ErrorAs(t, err, &e)
			assert.Equal(t, tt.wantStatus, e.Status)
			assert.Equal(t, "stage", e.Op)
			for _, target := range tt.wantIs {
				assert.ErrorIs(t, err, target)
			}
			for _, target := range tt.wantNotIs {
				assert.NotErrorIs(t, err, target)
			}
			assert.Contains(t, err.Error(), tt.wantErr)
			assert.Contains(t, err.Error(), "/oceanql/stage/")
			assert.NotContains(t, err.Error(), testToken)
		})
	}
}

// answer is one canned answer.
func answer(status int, body []byte) func(w http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		if body != nil {
			w.Header().Set("Content-Type", "application/json")
		}
		w.WriteHeader(status)
		_, _ = w.Write(body)
	}
}

func answers(status int, body []byte) []func(w http.ResponseWriter) {
	return []func(w http.ResponseWriter){answer(status, body)}
}

// A refused session is renewed once, and the stage sent again, whole, with
// the new one.
func TestStageRenewsSessionOn401(t *testing.T) {
	g := newFakeGateway(t)
	g.zarrAuth = func(sid string) int {
		if sid == "s1" {
			return http.StatusUnauthorized
		}
		return 0
	}
	var mu sync.Mutex
	var bodies []string
	g.api = func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, r.Header.Get("X-DATAMESH-SESSIONID")+" "+string(b))
		mu.Unlock()
		_, _ = w.Write(stageAnswer(nil))
	}
	clk := newFakeClock(time.Now().Truncate(time.Second))
	g.now = clk.Now
	c := newClockClient(t, testConfig(g.srv.URL, nil), clk)
	_, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)
	advanceWhenArmed(t, clk, minRenewInterval)

	st, err := c.Stage(t.Context(), json.RawMessage(testQuery))
	require.NoError(t, err)
	assert.Equal(t, testQHash, st.QHash)
	assert.Equal(t, int32(2), g.acquires.Load(), "one renewal")
	assert.Equal(t, int32(2), g.apiReqs.Load(), "the stage, then once more")
	assert.Equal(t, []string{"s2 " + testQuery}, bodies, "the refused request never reached the handler")
	assert.Equal(t, "s2", c.Info().ID)
}

// Refused by the renewed session too: a permission error.
func TestStageUnauthorizedTwiceIsPermission(t *testing.T) {
	g := newFakeGateway(t)
	g.zarrAuth = func(string) int { return http.StatusUnauthorized }
	clk := newFakeClock(time.Now().Truncate(time.Second))
	g.now = clk.Now
	c := newClockClient(t, testConfig(g.srv.URL, nil), clk)
	_, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)
	advanceWhenArmed(t, clk, minRenewInterval)
	_, err = c.Stage(t.Context(), json.RawMessage(testQuery))
	require.ErrorIs(t, err, fs.ErrPermission)
	assert.NotErrorIs(t, err, ErrBadQuery)
	assert.Equal(t, int32(2), g.apiReqs.Load())
	assert.NotContains(t, err.Error(), testToken)
}

func TestStageRefusedBeforeSending(t *testing.T) {
	g := newFakeGateway(t)
	c := newTestClient(t, testConfig(g.srv.URL, nil))
	_, err := c.Stage(t.Context(), json.RawMessage(testQuery))
	assert.ErrorIs(t, err, ErrNoSession, "no session yet")

	_, err = c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err)
	for _, q := range []string{``, `  `, `[1]`, `"ds_1"`, `{"datasource":`, `{} {}`} {
		_, err := c.Stage(t.Context(), json.RawMessage(q))
		assert.ErrorIs(t, err, ErrBadQuery, q)
		assert.ErrorContains(t, err, "not a JSON object", q)
	}
	assert.Zero(t, g.apiReqs.Load())
}

// The stage waits for its answer under StageReadTimeout, not ReadTimeout:
// staging a large query can take minutes.
func TestStageReadTimeout(t *testing.T) {
	tests := []struct {
		name        string
		stage       time.Duration
		delay       time.Duration
		wantTimeout bool
		wantTries   int32
	}{
		{name: "slower than ReadTimeout, within StageReadTimeout", stage: 2 * time.Second, delay: 300 * time.Millisecond, wantTries: 1},
		{name: "past StageReadTimeout", stage: 100 * time.Millisecond, delay: 10 * time.Second, wantTimeout: true, wantTries: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGateway(t)
			g.api = func(w http.ResponseWriter, r *http.Request) {
				// Read first: the server notices the client leaving only then.
				_, _ = io.ReadAll(r.Body)
				select {
				case <-time.After(tt.delay):
				case <-r.Context().Done():
					return
				}
				_, _ = w.Write(stageAnswer(nil))
			}
			cfg := testConfig(g.srv.URL, nil)
			cfg.ReadTimeout = 100 * time.Millisecond
			cfg.StageReadTimeout = tt.stage
			cfg.MaxRetries = 1
			c := acquired(t, cfg)
			_, err := c.Stage(t.Context(), json.RawMessage(testQuery))
			assert.Equal(t, tt.wantTries, g.apiReqs.Load())
			if !tt.wantTimeout {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, context.DeadlineExceeded)
			assert.Contains(t, err.Error(), "read timeout")
			assert.NotErrorIs(t, err, ErrBadQuery)
		})
	}
}

// A gateway that quotes the token in its detail does not get it into the
// error; control characters in a detail are replaced.
func TestStageDetailCleaned(t *testing.T) {
	g := newFakeGateway(t)
	g.api = func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 400, map[string]string{"detail": "token " + testToken + " may not query\x1b[2J this\r\n\tdatasource"})
	}
	c := acquired(t, testConfig(g.srv.URL, nil))
	_, err := c.Stage(t.Context(), json.RawMessage(testQuery))
	require.ErrorIs(t, err, ErrBadQuery)
	assert.NotContains(t, err.Error(), testToken)
	assert.Contains(t, err.Error(), "token REDACTED may not query\uFFFD[2J this datasource")
}

func TestCheckQHash(t *testing.T) {
	for _, ok := range []string{testQHash, "a", "A.b_c-9", strings.Repeat("f", 128), "..."} {
		assert.NoError(t, checkQHash(ok), ok)
	}
	for _, bad := range []string{"", ".", "..", "a/b", "a b", "a%2Fb", "a?b", "a#b", "a\x00b", "é", strings.Repeat("f", 129)} {
		err := checkQHash(bad)
		require.Error(t, err, bad)
		assert.Contains(t, err.Error(), "invalid query hash")
	}
}

func TestQueryStoreRequests(t *testing.T) {
	tests := []struct {
		name     string
		qhash    string
		call     func(s *Store) (any, error)
		method   string
		wantPath string // escaped
		want     any
	}{
		{
			name: "get chunk", qhash: testQHash,
			call: func(s *Store) (any, error) {
				b, err := s.Get(t.Context(), "u10/0.1.2")
				return string(b), err
			},
			method: "GET", wantPath: "/zarr/query/" + testQHash + "/u10/0.1.2", want: "body of /zarr/query/" + testQHash + "/u10/0.1.2",
		},
		{
			name: "get escapes each segment and keeps slashes", qhash: "q.1",
			call: func(s *Store) (any, error) {
				b, err := s.Get(t.Context(), "a b/c%d/e?f#g")
				return string(b), err
			},
			method: "GET", wantPath: "/zarr/query/q.1/a%20b/c%25d/e%3Ff%23g", want: "body of /zarr/query/q.1/a b/c%d/e?f#g",
		},
		{
			name: "head", qhash: "q.1",
			call:   func(s *Store) (any, error) { return s.Head(t.Context(), ".zmetadata") },
			method: "HEAD", wantPath: "/zarr/query/q.1/.zmetadata", want: int64(len("body of /zarr/query/q.1/.zmetadata")),
		},
		{
			name: "list root", qhash: "q.1",
			call:   func(s *Store) (any, error) { return s.List(t.Context(), "") },
			method: "GET", wantPath: "/zarr/query/q.1/", want: []string{".zmetadata", "u10/"},
		},
		{
			name: "list folder", qhash: "q.1",
			call:   func(s *Store) (any, error) { return s.List(t.Context(), "u10/") },
			method: "GET", wantPath: "/zarr/query/q.1/u10/", want: []string{".zmetadata", "u10/"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGateway(t)
			var got *http.Request
			g.zarr = func(w http.ResponseWriter, r *http.Request) {
				got = r.Clone(r.Context())
				if strings.HasSuffix(r.URL.Path, "/") {
					_, _ = w.Write([]byte(`<a href="../">up</a><a href=".zmetadata">m</a><a href="u10/">u10/</a>`))
					return
				}
				body := "body of " + r.URL.Path
				w.Header().Set("Content-Length", strconv.Itoa(len(body)))
				_, _ = w.Write([]byte(body))
			}
			c := acquired(t, testConfig(g.srv.URL, nil))
			v, err := tt.call(c.QueryStore(tt.qhash))
			require.NoError(t, err)
			assert.Equal(t, tt.want, v)
			require.NotNil(t, got)
			assert.Equal(t, tt.method, got.Method)
			assert.Equal(t, tt.wantPath, got.URL.EscapedPath())
			assert.Empty(t, got.URL.RawQuery)
			assert.Equal(t, "s1", got.Header.Get("X-DATAMESH-SESSIONID"))
			assert.Equal(t, testToken, got.Header.Get("X-DATAMESH-TOKEN"))
		})
	}
}

func TestQueryStoreRefusals(t *testing.T) {
	g := newFakeGateway(t)
	cfg := testConfig(g.srv.URL, nil)
	cfg.Write = true
	c := acquired(t, cfg)
	for _, qhash := range []string{"", "..", "a/b", "a b", "a%2e", strings.Repeat("f", 129)} {
		s := c.QueryStore(qhash)
		_, err := s.Get(t.Context(), ".zmetadata")
		assert.ErrorContains(t, err, "invalid query hash", qhash)
		_, err = s.Head(t.Context(), ".zmetadata")
		assert.ErrorContains(t, err, "invalid query hash", qhash)
		_, err = s.List(t.Context(), "")
		assert.ErrorContains(t, err, "invalid query hash", qhash)
	}
	// Bad keys, as for a datasource.
	_, err := c.QueryStore(testQHash).Get(t.Context(), "../../x")
	assert.ErrorContains(t, err, `".." segment`)
	// Read-only, even on a --write mount, and not a failed write.
	s := c.QueryStore(testQHash)
	assert.ErrorIs(t, s.Put(t.Context(), "a/0", bytes.NewReader([]byte("x")), 1), ErrReadOnly)
	assert.ErrorIs(t, s.Delete(t.Context(), "a/0"), ErrReadOnly)
	assert.ErrorIs(t, s.Clear(t.Context()), ErrReadOnly)
	assert.Equal(t, WriteReport{}, c.WriteReport())
	assert.Zero(t, g.zarrReqs.Load(), "nothing sent")
}

func TestQueryStoreStatuses(t *testing.T) {
	tests := []struct {
		status         int
		notExist, gone bool
		tries          int32
	}{
		{status: 404, notExist: true, tries: 1},
		{status: 410, gone: true, tries: 1},
		{status: 503, tries: 2},
	}
	for _, tt := range tests {
		t.Run(http.StatusText(tt.status), func(t *testing.T) {
			g := newFakeGateway(t)
			var n atomic.Int32
			g.zarr = func(w http.ResponseWriter, r *http.Request) {
				if n.Add(1) == 1 || tt.status != 503 {
					writeJSON(w, tt.status, map[string]string{"detail": "no"})
					return
				}
				_, _ = w.Write([]byte("chunk"))
			}
			var logs logBuffer
			c := acquired(t, testConfig(g.srv.URL, &logs))
			_, err := c.QueryStore(testQHash).Get(t.Context(), "u10/0.0")
			assert.Equal(t, tt.tries, g.zarrReqs.Load())
			if tt.status == 503 {
				require.NoError(t, err)
				return
			}
			assert.Equal(t, tt.notExist, errors.Is(err, fs.ErrNotExist))
			assert.Equal(t, tt.gone, errors.Is(err, ErrGone))
			if tt.gone {
				assert.Contains(t, logs.String(), "query is gone (410)")
				assert.Contains(t, logs.String(), "query="+testQHash)
			}
		})
	}
}
