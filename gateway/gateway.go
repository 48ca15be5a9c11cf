// Package gateway is a local Datamesh gateway: it speaks the Datamesh HTTP
// protocol (sessions, catalog, zarr keys and listings) over a folder of Zarr
// stores, and can misbehave on purpose (latency, injected 503s, short
// sessions, a session limit) so that clients can be tested against it.
//
// It shares no code with the dmfs client packages, so that it can catch their
// mistakes.
package gateway

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Config configures a Server.
type Config struct {
	// Dir holds one Zarr store per subfolder; the folder name is the
	// datasource id.
	Dir string
	// Token is the only accepted token. Empty accepts any non-empty token;
	// a request without any token is always refused.
	Token string
	// Latency is added to every protocol request before it is answered.
	Latency time.Duration
	// FailRate is the fraction of /zarr/ requests answered 503.
	FailRate float64
	// Seed seeds the deterministic sequence of injected failures.
	Seed int64
	// SessionTTL caps the lifetime of every session (0: no cap).
	SessionTTL time.Duration
	// MaxSessions limits the number of open sessions (0: no limit).
	MaxSessions int
	// Logger receives one line per request (nil: discard).
	Logger *slog.Logger
}

// String describes cfg without its token.
func (c Config) String() string {
	return fmt.Sprintf("gateway.Config{Dir:%q Token:%s Latency:%s FailRate:%g Seed:%d SessionTTL:%s MaxSessions:%d}",
		c.Dir, redacted(c.Token), c.Latency, c.FailRate, c.Seed, c.SessionTTL, c.MaxSessions)
}

// GoString keeps the token out of %#v.
func (c Config) GoString() string { return c.String() }

// Format keeps the token out of every verb.
func (c Config) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, c.String()) }

func redacted(token string) string {
	if token == "" {
		return "(any)"
	}
	return "[redacted]"
}

// Server is the gateway's http.Handler.
type Server struct {
	cfg      Config
	log      *slog.Logger
	sessions *sessionStore
	counters *counterSet

	dsMu        sync.RWMutex
	datasources map[string]*datasource
	ids         []string // sorted

	failMu  sync.Mutex
	failRng *rand.Rand
}

// String describes s without its token.
func (s *Server) String() string { return "gateway.Server{" + s.cfg.String() + "}" }

// GoString keeps the token out of %#v.
func (s *Server) GoString() string { return s.String() }

// Format keeps the token out of every verb.
func (s *Server) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, s.String()) }

// New loads the datasources in cfg.Dir and returns a Server for them.
func New(cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		return nil, errors.New("gateway: no datasource folder given")
	}
	if cfg.FailRate < 0 || cfg.FailRate > 1 {
		return nil, fmt.Errorf("gateway: fail rate %g is outside [0, 1]", cfg.FailRate)
	}
	if cfg.Latency < 0 || cfg.SessionTTL < 0 || cfg.MaxSessions < 0 {
		return nil, errors.New("gateway: latency, session TTL and max sessions must not be negative")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:      cfg,
		log:      logger,
		sessions: newSessionStore(cfg.SessionTTL, cfg.MaxSessions),
		counters: newCounterSet(),
		failRng:  rand.New(rand.NewPCG(uint64(cfg.Seed), 0x646d6673)),
	}
	dss, err := loadDatasources(cfg.Dir, logger)
	if err != nil {
		return nil, err
	}
	s.datasources = make(map[string]*datasource, len(dss))
	for _, ds := range dss {
		s.datasources[ds.id] = ds
		s.ids = append(s.ids, ds.id)
	}
	return s, nil
}

// datasourceIDs returns the ids served, sorted.
func (s *Server) datasourceIDs() []string {
	s.dsMu.RLock()
	defer s.dsMu.RUnlock()
	return append([]string(nil), s.ids...)
}

// Counters returns a snapshot of the request counters, the same data as
// GET /_dmfs/counters.
func (s *Server) Counters() Counters {
	return s.counters.snapshot(s.sessions.openCount())
}

// Route names used in counters and logs.
const (
	routeSessionAcquire = "session_acquire"
	routeSessionGet     = "session_get"
	routeSessionDelete  = "session_delete"
	routeCatalog        = "catalog"
	routeDatasource     = "datasource"
	routeZarrGet        = "zarr_get"
	routeZarrHead       = "zarr_head"
	routeZarrList       = "zarr_list"
	routeQuery          = "query"
	routeOther          = "other"
)

var allRoutes = []string{routeSessionAcquire, routeSessionGet, routeSessionDelete, routeCatalog,
	routeDatasource, routeZarrGet, routeZarrHead, routeZarrList, routeQuery}

// request is what routing found out about one request.
type request struct {
	route   string
	handler func(w http.ResponseWriter, r *http.Request, q *request)
	// arg is the session id, datasource id or zarr datasource id.
	arg string
	// key is the decoded zarr key (folder keys end in "/"); keyErr is why it
	// could not be decoded.
	key    string
	keyErr error
	// zarr requests: the session id the request carried ("" when none).
	sessionID string
	// allowSessionAuth lets a DELETE of a session authenticate with that
	// session's id instead of a token.
	allowSessionAuth bool
}

// ServeHTTP answers one Datamesh protocol request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/_dmfs/counters", "/_dmfs/counters/":
		s.serveCounters(w, r)
		return
	case "/_dmfs/counters/reset", "/_dmfs/counters/reset/":
		s.serveCountersReset(w, r)
		return
	}
	start := time.Now()
	rec := &recorder{ResponseWriter: w}
	q := s.route(r)
	q.sessionID = r.Header.Get("X-DATAMESH-SESSIONID")

	s.serve(rec, r, q)

	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	zarrKey := ""
	if (q.route == routeZarrGet || q.route == routeZarrHead) && q.keyErr == nil && q.arg != "" {
		zarrKey = q.arg + "/" + q.key + " " + r.Method
	}
	s.counters.record(q.route, rec.status, rec.bytes, zarrKey)
	s.log.Info("request", "method", r.Method, "path", r.URL.EscapedPath(), "route", q.route,
		"status", rec.status, "bytes", rec.bytes, "duration", time.Since(start),
		"session", q.sessionID)
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request, q *request) {
	if s.cfg.Latency > 0 {
		t := time.NewTimer(s.cfg.Latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			// The client is gone; the status is only for the log line.
			w.WriteHeader(499)
			return
		}
	}
	if !(q.allowSessionAuth && s.sessionAuthorises(r, q.arg)) {
		if detail, ok := s.authorise(r); !ok {
			writeDetail(w, http.StatusUnauthorized, detail)
			return
		}
	}
	q.handler(w, r, q)
}

// route maps a request to its handler without side effects.
func (s *Server) route(r *http.Request) *request {
	p := r.URL.Path
	switch {
	case p == "/session/" || p == "/session":
		if r.Method == http.MethodGet {
			return &request{route: routeSessionAcquire, handler: s.serveSessionAcquire}
		}
		return methodNotAllowed(routeSessionAcquire)
	case strings.HasPrefix(p, "/session/"):
		id := strings.TrimSuffix(strings.TrimPrefix(p, "/session/"), "/")
		switch r.Method {
		case http.MethodGet:
			return &request{route: routeSessionGet, handler: s.serveSessionGet, arg: id}
		case http.MethodDelete:
			return &request{route: routeSessionDelete, handler: s.serveSessionDelete, arg: id, allowSessionAuth: true}
		}
		return methodNotAllowed(routeSessionGet)
	case p == "/datasource/" || p == "/datasource":
		if r.Method == http.MethodGet {
			return &request{route: routeCatalog, handler: s.serveCatalog}
		}
		return methodNotAllowed(routeCatalog)
	case strings.HasPrefix(p, "/datasource/"):
		id := strings.TrimSuffix(strings.TrimPrefix(p, "/datasource/"), "/")
		if r.Method == http.MethodGet {
			return &request{route: routeDatasource, handler: s.serveDatasource, arg: id}
		}
		return methodNotAllowed(routeDatasource)
	case strings.HasPrefix(p, "/zarr/"):
		return s.routeZarr(r)
	}
	return &request{route: routeOther, handler: func(w http.ResponseWriter, _ *http.Request, _ *request) {
		writeDetail(w, http.StatusNotFound, "Not found.")
	}}
}

// routeZarr routes /zarr/query/... before /zarr/{id}/..., so that staged
// query results are never mistaken for a datasource called "query".
func (s *Server) routeZarr(r *http.Request) *request {
	escaped := strings.TrimPrefix(r.URL.EscapedPath(), "/zarr/")
	if strings.HasPrefix(escaped, "query/") {
		return &request{route: routeQuery, handler: s.serveQuery}
	}
	q := &request{route: routeZarrGet, handler: s.serveZarr}
	if r.Method == http.MethodHead {
		q.route = routeZarrHead
	}
	idEsc, keyEsc, hasSlash := strings.Cut(escaped, "/")
	id, err := pathUnescape(idEsc)
	if err != nil {
		q.keyErr = err
		return q
	}
	q.arg = id
	if !hasSlash {
		q.keyErr = errNoKey
		return q
	}
	key, err := pathUnescape(keyEsc)
	if err != nil {
		q.keyErr = err
		return q
	}
	q.key = key
	if key == "" || strings.HasSuffix(key, "/") {
		q.route = routeZarrList
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return methodNotAllowed(q.route)
	}
	return q
}

func methodNotAllowed(route string) *request {
	return &request{route: route, handler: func(w http.ResponseWriter, r *http.Request, _ *request) {
		writeDetail(w, http.StatusMethodNotAllowed, fmt.Sprintf("Method %q not allowed.", r.Method))
	}}
}

// authorise checks the token headers. Every token presented must match.
func (s *Server) authorise(r *http.Request) (detail string, ok bool) {
	var presented []string
	if t := r.Header.Get("X-DATAMESH-TOKEN"); t != "" {
		presented = append(presented, t)
	}
	if a := r.Header.Get("Authorization"); a != "" {
		presented = append(presented, a)
	}
	if len(presented) == 0 {
		return "Authentication credentials were not provided.", false
	}
	for _, p := range presented {
		if !s.tokenMatches(p) {
			return "Invalid token.", false
		}
	}
	return "", true
}

// tokenMatches accepts the raw token (X-DATAMESH-TOKEN) or an Authorization
// value "Token T", "Bearer T" or, for tokens that start with "Bearer ", the
// whole value.
func (s *Server) tokenMatches(v string) bool {
	candidates := []string{v}
	for _, scheme := range []string{"Token ", "Bearer "} {
		if len(v) > len(scheme) && strings.EqualFold(v[:len(scheme)], scheme) {
			candidates = append(candidates, strings.TrimSpace(v[len(scheme):]))
		}
	}
	for _, c := range candidates {
		if s.cfg.Token == "" {
			if c != "" {
				return true
			}
			continue
		}
		if subtle.ConstantTimeCompare([]byte(c), []byte(s.cfg.Token)) == 1 {
			return true
		}
	}
	return false
}

// injectFailure draws the next number of the seeded failure sequence.
func (s *Server) injectFailure() bool {
	if s.cfg.FailRate <= 0 {
		return false
	}
	s.failMu.Lock()
	defer s.failMu.Unlock()
	return s.failRng.Float64() < s.cfg.FailRate
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		writeDetail(w, http.StatusInternalServerError, "cannot encode answer")
		return
	}
	writeRawJSON(w, status, body)
}

func writeRawJSON(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", fmt.Sprint(len(body)))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func writeDetail(w http.ResponseWriter, status int, detail string) {
	writeJSON(w, status, map[string]string{"detail": detail})
}

// recorder remembers the status and counts the body bytes of an answer. It
// keeps io.ReaderFrom so that file bodies still go out with sendfile.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (rw *recorder) WriteHeader(code int) {
	if rw.status == 0 {
		rw.status = code
	}
	rw.ResponseWriter.WriteHeader(code)
}

func (rw *recorder) Write(p []byte) (int, error) {
	if rw.status == 0 {
		rw.status = http.StatusOK
	}
	n, err := rw.ResponseWriter.Write(p)
	rw.bytes += int64(n)
	return n, err
}

func (rw *recorder) ReadFrom(src io.Reader) (int64, error) {
	if rw.status == 0 {
		rw.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := rw.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(src)
	} else {
		n, err = io.Copy(struct{ io.Writer }{rw.ResponseWriter}, src)
	}
	rw.bytes += n
	return n, err
}

func (rw *recorder) Unwrap() http.ResponseWriter { return rw.ResponseWriter }
