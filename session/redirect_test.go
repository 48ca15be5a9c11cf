package session

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recorder is a server that counts the requests it gets and keeps their
// headers.
type recorder struct {
	srv  *httptest.Server
	n    atomic.Int32
	mu   sync.Mutex
	seen []http.Header
}

func newRecorder(t *testing.T, tlsServer bool) *recorder {
	rec := &recorder{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.n.Add(1)
		rec.mu.Lock()
		rec.seen = append(rec.seen, r.Header.Clone())
		rec.mu.Unlock()
		_, _ = w.Write([]byte("elsewhere"))
	})
	if tlsServer {
		rec.srv = httptest.NewTLSServer(h)
	} else {
		rec.srv = httptest.NewServer(h)
	}
	t.Cleanup(rec.srv.Close)
	return rec
}

// trust makes c accept the certificate of srv.
func trust(c *Client, srv *httptest.Server) {
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	c.http.Transport.(*http.Transport).TLSClientConfig = &tls.Config{RootCAs: pool}
}

func TestRedirectToAnotherOriginIsRefused(t *testing.T) {
	for _, status := range []int{301, 302, 303, 307, 308} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			other := newRecorder(t, false) // same host, another port
			g := newFakeGateway(t)
			g.zarr = func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, other.srv.URL+"/steal?token=x", status)
			}
			var logs logBuffer
			c := acquired(t, testConfig(g.srv.URL, &logs))

			_, err := c.Store("ds_1").Get(t.Context(), "u10/0.0")
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrRedirect)
			msg := err.Error()
			assert.Contains(t, msg, "from "+origin(mustURL(t, g.srv.URL))+" to "+origin(mustURL(t, other.srv.URL)))
			assert.NotContains(t, msg, "steal")
			assert.NotContains(t, msg, "token=x")
			assert.NotContains(t, msg, testToken)
			assert.NotContains(t, logs.String(), testToken)
			assert.Equal(t, int32(1), g.zarrReqs.Load(), "not retried")
			assert.Zero(t, other.n.Load(), "the other origin got no request at all")
		})
	}
}

func TestRedirectRefusedForEveryKindOfCall(t *testing.T) {
	other := newRecorder(t, false)
	var gw atomic.Int32
	srv := newHandlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		gw.Add(1)
		http.Redirect(w, r, other.srv.URL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	})
	c := newTestClient(t, testConfig(srv, nil))
	_, err := c.Acquire(t.Context(), time.Hour)
	assert.ErrorIs(t, err, ErrRedirect)
	_, err = c.Catalog(t.Context(), Query{})
	assert.ErrorIs(t, err, ErrRedirect)
	_, err = c.Datasource(t.Context(), "ds_1")
	assert.ErrorIs(t, err, ErrRedirect)
	assert.ErrorIs(t, c.CloseSession(t.Context(), "s1"), ErrRedirect)
	assert.Equal(t, int32(4), gw.Load(), "one request each, none retried")
	assert.Zero(t, other.n.Load())
}

func TestRedirectFromHTTPSToHTTPIsRefused(t *testing.T) {
	plain := newRecorder(t, false)
	var gw atomic.Int32
	secure := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gw.Add(1)
		if r.URL.Path == "/session/" {
			writeJSON(w, 200, map[string]any{"id": "s1"})
			return
		}
		// The same port number too: only the scheme differs.
		u := mustURL(t, plain.srv.URL)
		http.Redirect(w, r, "http://"+u.Host+r.URL.Path, http.StatusFound)
	}))
	secure.Config.ErrorLog = log.New(io.Discard, "", 0)
	t.Cleanup(secure.Close)
	c := newTestClient(t, testConfig(secure.URL, nil))
	trust(c, secure)
	_, err := c.Acquire(t.Context(), time.Hour)
	require.NoError(t, err, "the TLS gateway is trusted")

	_, err = c.Store("ds_1").Get(t.Context(), "u10/0.0")
	require.ErrorIs(t, err, ErrRedirect)
	assert.Contains(t, err.Error(), "from https://127.0.0.1:")
	assert.Contains(t, err.Error(), "to http://127.0.0.1:")
	assert.Equal(t, int32(2), gw.Load(), "acquire, then one get")
	assert.Zero(t, plain.n.Load(), "nothing sent in clear")
}

func TestSameOriginRedirects(t *testing.T) {
	t.Run("one is followed with the session and token", func(t *testing.T) {
		g := newFakeGateway(t)
		g.zarr = func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/zarr/ds_1/u10/0.0" {
				http.Redirect(w, r, "/zarr/ds_1/moved/0.0", http.StatusTemporaryRedirect)
				return
			}
			_, _ = w.Write([]byte("moved chunk"))
		}
		c := acquired(t, testConfig(g.srv.URL, nil))
		b, err := c.Store("ds_1").Get(t.Context(), "u10/0.0")
		require.NoError(t, err)
		assert.Equal(t, "moved chunk", string(b))
		assert.Equal(t, int32(2), g.zarrReqs.Load())
		r := g.lastRequest(http.MethodGet, "/zarr/ds_1/moved/")
		require.NotNil(t, r)
		assert.Equal(t, "s1", r.Header.Get("X-DATAMESH-SESSIONID"))
		assert.Equal(t, testToken, r.Header.Get("X-DATAMESH-TOKEN"))
		assert.Equal(t, "Token "+testToken, r.Header.Get("Authorization"))
	})
	t.Run("a loop ends after maxRedirects and is not retried", func(t *testing.T) {
		g := newFakeGateway(t)
		g.zarr = func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, r.URL.Path, http.StatusFound)
		}
		c := acquired(t, testConfig(g.srv.URL, nil))
		_, err := c.Store("ds_1").Get(t.Context(), "u10/0.0")
		require.ErrorIs(t, err, ErrRedirect)
		assert.Contains(t, err.Error(), "more than 3 redirects")
		assert.Equal(t, int32(maxRedirects+1), g.zarrReqs.Load())
	})
	t.Run("a change of method is refused", func(t *testing.T) {
		var deletes, gets atomic.Int32
		srv := newHandlerServer(t, func(w http.ResponseWriter, r *http.Request) {
			switch r.Method {
			case http.MethodDelete:
				deletes.Add(1)
				// A 302 would turn the DELETE into a GET of the new URL.
				http.Redirect(w, r, "/session/?duration=60", http.StatusFound)
			default:
				gets.Add(1)
			}
		})
		c := newTestClient(t, testConfig(srv, nil))
		err := c.CloseSession(t.Context(), "s1")
		require.ErrorIs(t, err, ErrRedirect)
		assert.Contains(t, err.Error(), "turns DELETE into GET")
		assert.Equal(t, int32(1), deletes.Load(), "not retried on the close schedule")
		assert.Zero(t, gets.Load())
	})
}

func TestOrigin(t *testing.T) {
	tests := []struct{ url, want string }{
		{"http://Example.com/x?q", "http://example.com:80"},
		{"http://example.com:80/", "http://example.com:80"},
		{"HTTPS://example.com", "https://example.com:443"},
		{"https://example.com:8443/a", "https://example.com:8443"},
		{"http://user:pw@[::1]:9/", "http://[::1]:9"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, origin(mustURL(t, tt.url)), tt.url)
	}
	assert.NotEqual(t, origin(mustURL(t, "http://h")), origin(mustURL(t, "https://h:80")))
}

func mustURL(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	require.NoError(t, err)
	return u
}

// The error of a refused redirect is also what a log line shows.
func TestRedirectErrorNamesOriginsOnly(t *testing.T) {
	req := &http.Request{Method: "GET", URL: mustURL(t, "https://evil.example:444/p?session=abc")}
	via := []*http.Request{{Method: "GET", URL: mustURL(t, "https://gw.example/zarr/ds/k?x=1")}}
	err := checkRedirect(req, via)
	require.Error(t, err)
	assert.True(t, errors.Is(err, ErrRedirect))
	assert.Equal(t, "datamesh redirect refused from https://gw.example:443 to https://evil.example:444: another origin", err.Error())
	assert.False(t, strings.Contains(err.Error(), "session=abc"))
}

// Queries may carry what should not be logged (a search, a flag); errors
// and debug lines show scheme, host and path only, and never the token.
func TestNoQueryOrTokenInErrorsAndLogs(t *testing.T) {
	const needle = "needle-in-query"
	other := newRecorder(t, false)
	tests := []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"status", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"detail": "boom"})
		}},
		{"dropped connection", func(w http.ResponseWriter, r *http.Request) {
			conn, _, _ := w.(http.Hijacker).Hijack()
			_ = conn.Close()
		}},
		{"redirect", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, other.srv.URL+"/x?"+r.URL.RawQuery, http.StatusFound)
		}},
		{"body too large", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(maxCatalogBody+1))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newHandlerServer(t, tt.handler)
			var logs logBuffer
			c := newTestClient(t, testConfig(srv, &logs))
			_, err := c.Catalog(t.Context(), Query{Search: needle})
			require.Error(t, err)
			for what, text := range map[string]string{"error": err.Error(), "log": logs.String()} {
				assert.NotContains(t, text, needle, what)
				assert.NotContains(t, text, "search=", what)
				assert.NotContains(t, text, testToken, what)
			}
			assert.Contains(t, logs.String(), "path=/datasource/", "the request was logged")
		})
	}
	assert.Zero(t, other.n.Load())
}
