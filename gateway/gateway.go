// Package gateway is a local Datamesh gateway: it speaks the Datamesh HTTP
// protocol (sessions, catalog, zarr keys and listings) over a folder of Zarr
// stores, and can misbehave on purpose (latency, injected 5xx and 429
// answers, short or idle-ended sessions, a session limit, HEAD answers
// without a length) so that clients can be tested against it.
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
	"log"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/sync/singleflight"
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
	// FailRate is the fraction of /zarr/ requests answered with an
	// injected failure.
	FailRate float64
	// FailCodes are the statuses injected failures answer, each drawn from
	// the list (nil: DefaultFailCodes). Only 429 and 5xx.
	FailCodes []int
	// RetryAfter is the Retry-After, in whole seconds, of injected 429 and
	// 503 answers (0: DefaultRetryAfter; negative: "0").
	RetryAfter time.Duration
	// Seed seeds the deterministic sequence of injected failures.
	Seed int64
	// SessionTTL caps the lifetime of every session (0: no cap).
	SessionTTL time.Duration
	// SessionIdle ends a session that no request used for this long, before
	// its end_time, as the real gateway does (0: never).
	SessionIdle time.Duration
	// HeadWithoutLength leaves Content-Length out of HEAD answers on zarr
	// keys, as some gateways and proxies do.
	HeadWithoutLength bool
	// MaxSessions limits the number of open sessions (0: no limit).
	MaxSessions int
	// Logger receives one line per request (nil: discard). Paths and other
	// client-chosen values in it are cut to at most LogValueBytes.
	Logger *slog.Logger
	// MaxCounterKeys caps the per-key counters (0: DefaultMaxCounterKeys).
	MaxCounterKeys int

	// StagingDir holds the writes staged by sessions until they are
	// finalised or discarded ("": a temporary folder next to Dir, on the
	// same file system so that a commit only renames). Each Server makes
	// its own folder inside it and removes it in Close.
	StagingDir string
	// MaxWriteBytes bounds the body of one key written (0:
	// DefaultMaxWriteBytes); larger bodies get 413.
	MaxWriteBytes int64
	// WriteFailRate is the fraction of write requests (POST, PUT, DELETE of
	// zarr keys) answered 503 with Retry-After, seeded by Seed.
	WriteFailRate float64
	// WriteFailKeys are globs (path.Match, on the key or on "ID/KEY"):
	// writes of matching keys always fail with 500.
	WriteFailKeys []string

	// QueryDir holds staged query results, one per qhash ("": a temporary
	// folder that Close removes). Results found there are served after a
	// restart too.
	QueryDir string

	// The limits of the http.Server that NewHTTPServer builds, so that
	// clients that send slowly, never read or sit idle release their
	// connection (0: the Default* value below).
	ReadHeaderTimeout time.Duration // to read a request's headers
	ReadTimeout       time.Duration // to read a whole request, body included
	// WriteTimeout bounds each piece of an answer (at most writeStep bytes)
	// rather than the whole answer: a large chunk to a slow client that
	// keeps reading goes out, Latency does not count, and a client that
	// stops reading is cut off after WriteTimeout.
	WriteTimeout   time.Duration
	IdleTimeout    time.Duration // between requests on a kept-alive connection
	MaxHeaderBytes int           // request line and headers
}

// Defaults of the http.Server limits.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultReadTimeout       = 30 * time.Second
	DefaultWriteTimeout      = 30 * time.Second
	DefaultIdleTimeout       = 30 * time.Second
	DefaultMaxHeaderBytes    = 64 << 10
)

// DefaultFailCodes is what injected failures answer unless told otherwise.
var DefaultFailCodes = []int{http.StatusServiceUnavailable}

// DefaultRetryAfter is the Retry-After of injected 429 and 503 answers.
const DefaultRetryAfter = time.Second

// LogValueBytes caps a client-chosen value (path, session id, method) in
// a log line.
const LogValueBytes = 200

// writeStep is the largest piece of an answer written under one write
// deadline (Config.WriteTimeout), so the deadline follows the progress.
const writeStep = 256 << 10

// String describes cfg without its token.
func (c Config) String() string {
	return fmt.Sprintf("gateway.Config{Dir:%q Token:%s Latency:%s FailRate:%g FailCodes:%v RetryAfter:%s Seed:%d "+
		"SessionTTL:%s SessionIdle:%s HeadWithoutLength:%t MaxSessions:%d "+
		"MaxCounterKeys:%d StagingDir:%q MaxWriteBytes:%d WriteFailRate:%g WriteFailKeys:%q QueryDir:%q "+
		"ReadHeaderTimeout:%s ReadTimeout:%s WriteTimeout:%s IdleTimeout:%s MaxHeaderBytes:%d}",
		c.Dir, redacted(c.Token), c.Latency, c.FailRate, c.FailCodes, c.RetryAfter, c.Seed,
		c.SessionTTL, c.SessionIdle, c.HeadWithoutLength, c.MaxSessions,
		c.MaxCounterKeys, c.StagingDir, c.MaxWriteBytes, c.WriteFailRate, c.WriteFailKeys, c.QueryDir,
		c.ReadHeaderTimeout, c.ReadTimeout, c.WriteTimeout, c.IdleTimeout, c.MaxHeaderBytes)
}

// withDefaults fills the zero limits.
func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	def(&c.ReadTimeout, DefaultReadTimeout)
	def(&c.WriteTimeout, DefaultWriteTimeout)
	def(&c.IdleTimeout, DefaultIdleTimeout)
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.MaxCounterKeys == 0 {
		c.MaxCounterKeys = DefaultMaxCounterKeys
	}
	if c.MaxWriteBytes == 0 {
		c.MaxWriteBytes = DefaultMaxWriteBytes
	}
	if len(c.FailCodes) == 0 {
		c.FailCodes = DefaultFailCodes
	}
	def(&c.RetryAfter, DefaultRetryAfter)
	return c
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
	// codeRng draws which code a failure answers; apart from failRng so
	// that a seed fails the same requests whatever the codes.
	codeRng *rand.Rand
	// writeRng draws the injected write failures (WriteFailRate).
	writeRng *rand.Rand

	// dir is Dir, absolute with symlinks resolved.
	dir    string
	writes *writeStore
	// ended lists sessions with staged writes that ended without a close,
	// for reapWrites to discard.
	endedMu sync.Mutex
	ended   []string

	// Staged queries (stage.go): results live in queryDir, made by New
	// when ownQueryDir.
	queryDir    string
	ownQueryDir bool
	queriesMu   sync.Mutex
	queries     map[string]*queryResult
	stageFlight singleflight.Group
	// now resolves relative query times.
	now func() time.Time
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
	if cfg.Latency < 0 || cfg.SessionTTL < 0 || cfg.SessionIdle < 0 || cfg.MaxSessions < 0 || cfg.MaxCounterKeys < 0 {
		return nil, errors.New("gateway: latency, session TTL, session idle, max sessions and max counter keys must not be negative")
	}
	for _, c := range cfg.FailCodes {
		if c != http.StatusTooManyRequests && (c < 500 || c > 599) {
			return nil, fmt.Errorf("gateway: fail code %d is not 429 or 5xx", c)
		}
	}
	if cfg.RetryAfter > 0 && cfg.RetryAfter%time.Second != 0 {
		return nil, fmt.Errorf("gateway: Retry-After %s is not whole seconds", cfg.RetryAfter)
	}
	if cfg.WriteFailRate < 0 || cfg.WriteFailRate > 1 || cfg.WriteFailRate != cfg.WriteFailRate {
		return nil, fmt.Errorf("gateway: write fail rate %g is outside [0, 1]", cfg.WriteFailRate)
	}
	if cfg.MaxWriteBytes < 0 {
		return nil, errors.New("gateway: max write bytes must not be negative")
	}
	for _, g := range cfg.WriteFailKeys {
		if _, err := path.Match(g, ""); err != nil {
			return nil, fmt.Errorf("gateway: write fail glob %q: %w", g, err)
		}
	}
	if cfg.ReadHeaderTimeout < 0 || cfg.ReadTimeout < 0 || cfg.WriteTimeout < 0 || cfg.IdleTimeout < 0 || cfg.MaxHeaderBytes < 0 {
		return nil, errors.New("gateway: server timeouts and max header bytes must not be negative")
	}
	cfg = cfg.withDefaults()
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:      cfg,
		log:      logger,
		sessions: newSessionStore(cfg.SessionTTL, cfg.SessionIdle, cfg.MaxSessions),
		counters: newCounterSet(cfg.MaxCounterKeys),
		failRng:  rand.New(rand.NewPCG(uint64(cfg.Seed), 0x646d6673)),
		codeRng:  rand.New(rand.NewPCG(uint64(cfg.Seed), 0x636f6465)),
		writeRng: rand.New(rand.NewPCG(uint64(cfg.Seed), 0x77726974)),
	}
	dss, err := loadDatasources(cfg.Dir, logger)
	if err != nil {
		return nil, err
	}
	if s.dir, err = filepath.Abs(cfg.Dir); err == nil {
		s.dir, err = filepath.EvalSymlinks(s.dir)
	}
	if err != nil {
		return nil, fmt.Errorf("gateway: datasource folder %q: %w", cfg.Dir, err)
	}
	// Commit folders a crash left behind.
	if old, _ := filepath.Glob(filepath.Join(s.dir, ".dmfs-commit-*")); len(old) > 0 {
		for _, o := range old {
			_ = os.RemoveAll(o)
		}
	}
	var staging string
	if cfg.StagingDir != "" {
		staging, err = os.MkdirTemp(cfg.StagingDir, ".dmfs-staging-")
	} else {
		// Beside DIR, on the same file system, so that a commit only
		// renames; a read-only parent (a served archive) falls back to the
		// temporary folder, where commits copy.
		staging, err = os.MkdirTemp(filepath.Dir(s.dir), ".dmfs-staging-")
		if err != nil {
			staging, err = os.MkdirTemp("", "dmfs-staging-")
		}
	}
	if err != nil {
		return nil, fmt.Errorf("gateway: staging folder: %w", err)
	}
	s.writes = newWriteStore(staging)
	s.queries, s.now = map[string]*queryResult{}, time.Now
	if cfg.QueryDir != "" {
		if err := os.MkdirAll(cfg.QueryDir, 0o755); err != nil {
			_ = os.RemoveAll(staging)
			return nil, fmt.Errorf("gateway: query folder: %w", err)
		}
		s.queryDir = cfg.QueryDir
		// Results in DIR would be served as datasources at the next start.
		if real, err := filepath.EvalSymlinks(cfg.QueryDir); err == nil {
			if abs, err := filepath.Abs(real); err == nil && within(s.dir, abs) {
				_ = os.RemoveAll(staging)
				return nil, fmt.Errorf("gateway: query folder %q is inside the datasource folder %q", cfg.QueryDir, cfg.Dir)
			}
		}
	} else {
		if s.queryDir, err = os.MkdirTemp("", "dmfs-queries-"); err != nil {
			_ = os.RemoveAll(staging)
			return nil, fmt.Errorf("gateway: query folder: %w", err)
		}
		s.ownQueryDir = true
	}
	// Temporary results a crash left behind.
	if old, _ := filepath.Glob(filepath.Join(s.queryDir, ".tmp-*")); len(old) > 0 {
		for _, o := range old {
			_ = os.RemoveAll(o)
		}
	}
	s.sessions.onEnd = func(id string) {
		if s.writes.has(id) {
			s.endedMu.Lock()
			s.ended = append(s.ended, id)
			s.endedMu.Unlock()
		}
	}
	s.datasources = make(map[string]*datasource, len(dss))
	for _, ds := range dss {
		s.datasources[ds.id] = ds
		s.ids = append(s.ids, ds.id)
	}
	return s, nil
}

// Close discards every staged write and removes the staging folder, and
// the query folder when New made it.
func (s *Server) Close() error {
	return errors.Join(os.RemoveAll(s.writes.base), s.removeOwnQueryDir())
}

// NewHTTPServer returns an http.Server for s with the limits of its Config.
// errorLog receives net/http's own errors (nil: the log package's logger).
func (s *Server) NewHTTPServer(errorLog *log.Logger) *http.Server {
	return &http.Server{
		Handler:           s,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		// Covers net/http's own answers (400, 431); ServeHTTP moves the
		// deadline forward before each piece it writes.
		WriteTimeout:   s.cfg.WriteTimeout,
		IdleTimeout:    s.cfg.IdleTimeout,
		MaxHeaderBytes: s.cfg.MaxHeaderBytes,
		ErrorLog:       errorLog,
	}
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
	routeZarrWrite      = "zarr_write"
	routeZarrDelete     = "zarr_delete"
	// routeQuery counts /zarr/query/ requests that name no result key
	// (no qhash, or a method other than GET and HEAD).
	routeQuery         = "query"
	routeStage         = "stage"
	routeQueryZarrGet  = "query_zarr_get"
	routeQueryZarrHead = "query_zarr_head"
	routeQueryZarrList = "query_zarr_list"
	routeData          = "data"
	routeOceanQL       = "oceanql"
	routeOther         = "other"
)

var allRoutes = []string{routeSessionAcquire, routeSessionGet, routeSessionDelete, routeCatalog,
	routeDatasource, routeZarrGet, routeZarrHead, routeZarrList, routeZarrWrite, routeZarrDelete, routeQuery,
	routeStage, routeQueryZarrGet, routeQueryZarrHead, routeQueryZarrList, routeData, routeOceanQL}

// request is what routing found out about one request.
type request struct {
	route   string
	handler func(w http.ResponseWriter, r *http.Request, q *request)
	// arg is the session id, datasource id or zarr datasource id (for a
	// query result, "query/QHASH").
	arg string
	// qhash is the staged query of /zarr/query/{qhash}/ and
	// /oceanql/{qhash}.
	qhash string
	// key is the decoded zarr key (folder keys end in "/"); keyErr is why it
	// could not be decoded.
	key    string
	keyErr error
	// zarr requests: the session id the request carried ("" when none).
	sessionID string
	// allowSessionAuth lets a DELETE of a session authenticate with that
	// session's id instead of a token.
	allowSessionAuth bool
	// authenticated: the token (or the session id, for a DELETE) was good.
	authenticated bool
}

// ServeHTTP answers one Datamesh protocol request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &recorder{ResponseWriter: w, rc: http.NewResponseController(w), writeTimeout: s.cfg.WriteTimeout}
	switch r.URL.Path {
	case "/_dmfs/counters", "/_dmfs/counters/", "/_dmfs/counters/reset", "/_dmfs/counters/reset/",
		"/_dmfs/trace", "/_dmfs/trace/":
		// Not delayed and not counted, but behind the token: the per-key
		// counters tell what was read.
		detail, authenticated := s.authorise(r)
		switch {
		case !authenticated:
			s.counters.unauthenticated()
			writeDetail(rec, http.StatusUnauthorized, detail)
		case strings.HasPrefix(r.URL.Path, "/_dmfs/counters/reset"):
			s.serveCountersReset(rec, r)
		case strings.HasPrefix(r.URL.Path, "/_dmfs/trace"):
			s.serveTrace(rec, r)
		default:
			s.serveCounters(rec, r)
		}
		s.logRequest(r, "counters", rec, start, "", authenticated)
		return
	}
	q := s.route(r)
	q.sessionID = r.Header.Get("X-DATAMESH-SESSIONID")
	// The request is counted as its answer starts, so that a client that
	// has an answer finds it in the counters; the bytes once all are sent.
	rec.onHeader = func(status int) { s.count(r, q, status) }
	// In flight from arrival, so that Latency counts as the client sees
	// it, to the end of the answer (even a handler's panic); only with a
	// good token, like the other counters.
	if strings.HasPrefix(r.URL.Path, "/zarr/") {
		if _, ok := s.authorise(r); ok {
			s.counters.flight.begin()
			defer func() {
				status := rec.status
				if status == 0 { // a panic before any answer
					status = http.StatusInternalServerError
				}
				s.counters.flight.end(status)
			}()
		}
	}

	s.serve(rec, r, q)

	rec.header(http.StatusOK) // an answer with nothing written is a 200
	if q.authenticated {
		s.counters.sent(rec.bytes)
	}
	s.logRequest(r, q.route, rec, start, q.sessionID, q.authenticated)
}

// count counts one request. Only authenticated requests reach the
// per-route and per-key counters: an anonymous client must not be able to
// grow them.
func (s *Server) count(r *http.Request, q *request, status int) {
	if !q.authenticated {
		s.counters.unauthenticated()
		return
	}
	zarrKey := ""
	switch q.route {
	case routeZarrGet, routeZarrHead, routeZarrWrite, routeZarrDelete:
	case routeQueryZarrGet, routeQueryZarrHead:
		key := ""
		if q.keyErr == nil {
			key = q.qhash + "/" + q.key + " " + r.Method
		}
		s.counters.recordQueryKey(q.route, status, key)
		return
	default:
		s.counters.record(q.route, status, "")
		return
	}
	if q.keyErr == nil && q.arg != "" {
		zarrKey = q.arg + "/" + q.key + " " + r.Method
	}
	s.counters.record(q.route, status, zarrKey)
}

// logRequest writes the one line per request, with the values the client
// chose cut to LogValueBytes.
func (s *Server) logRequest(r *http.Request, route string, rec *recorder, start time.Time, session string, authenticated bool) {
	s.log.Info("request", "method", clip(r.Method, LogValueBytes), "path", clip(r.URL.EscapedPath(), LogValueBytes),
		"route", route, "status", rec.status, "bytes", rec.bytes, "duration", time.Since(start),
		"session", clip(session, LogValueBytes), "authenticated", authenticated)
}

// clip cuts a client-chosen string for a log line, marking the cut with "…".
func clip(v string, n int) string {
	if len(v) <= n {
		return v
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(v[cut]) {
		cut--
	}
	return v[:cut] + "…"
}

// serve waits out Latency, authenticates and answers, setting
// q.authenticated before the answer starts. A client that left during
// Latency counts as authenticated only if its token was good.
func (s *Server) serve(w http.ResponseWriter, r *http.Request, q *request) {
	if s.cfg.Latency > 0 {
		t := time.NewTimer(s.cfg.Latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			_, q.authenticated = s.authorise(r)
			// The client is gone; the status is only for the log line.
			w.WriteHeader(499)
			return
		}
	}
	if !(q.allowSessionAuth && s.sessionAuthorises(r, q.arg)) {
		detail, ok := s.authorise(r)
		if !ok {
			writeDetail(w, http.StatusUnauthorized, detail)
			return
		}
	}
	q.authenticated = true
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
	case p == "/oceanql/stage/" || p == "/oceanql/stage":
		if r.Method == http.MethodPost {
			return &request{route: routeStage, handler: s.serveStage}
		}
		return methodNotAllowed(routeStage)
	case p == "/oceanql/" || p == "/oceanql":
		if r.Method == http.MethodPost {
			return &request{route: routeOceanQL, handler: s.serveOceanQL}
		}
		return methodNotAllowed(routeOceanQL)
	case strings.HasPrefix(p, "/oceanql/"):
		qhash := strings.TrimSuffix(strings.TrimPrefix(p, "/oceanql/"), "/")
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			return &request{route: routeOceanQL, handler: s.serveOceanQL, arg: qhash, qhash: qhash}
		}
		return methodNotAllowed(routeOceanQL)
	case strings.HasPrefix(p, "/data/"):
		q := &request{route: routeData, handler: s.serveData}
		id, err := pathUnescape(strings.TrimSuffix(strings.TrimPrefix(r.URL.EscapedPath(), "/data/"), "/"))
		q.arg, q.keyErr = id, err
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return methodNotAllowed(routeData)
		}
		return q
	}
	return &request{route: routeOther, handler: func(w http.ResponseWriter, _ *http.Request, _ *request) {
		writeDetail(w, http.StatusNotFound, "Not found.")
	}}
}

// routeZarr routes /zarr/query/... before /zarr/{id}/..., so that staged
// query results are never mistaken for a datasource called "query".
func (s *Server) routeZarr(r *http.Request) *request {
	escaped := strings.TrimPrefix(r.URL.EscapedPath(), "/zarr/")
	if rest, ok := strings.CutPrefix(escaped, "query/"); ok {
		return routeQueryZarr(r, rest, s.serveQueryZarr)
	}
	q := &request{route: routeZarrGet, handler: s.serveZarr}
	switch r.Method {
	case http.MethodHead:
		q.route = routeZarrHead
	case http.MethodPost, http.MethodPut:
		q.route, q.handler = routeZarrWrite, s.serveZarrWrite
	case http.MethodDelete:
		q.route, q.handler = routeZarrDelete, s.serveZarrWrite
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
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		if key == "" || strings.HasSuffix(key, "/") {
			q.route = routeZarrList
		}
	case http.MethodPost, http.MethodPut, http.MethodDelete:
	default:
		return methodNotAllowed(q.route)
	}
	return q
}

func methodNotAllowed(route string) *request {
	return &request{route: route, handler: func(w http.ResponseWriter, r *http.Request, _ *request) {
		writeDetail(w, http.StatusMethodNotAllowed, fmt.Sprintf("Method %q not allowed.", r.Method))
	}}
}

// authorise checks the token headers as the service does: X-DATAMESH-TOKEN,
// when sent, decides alone, because a proxy may set it and leave the
// client's "Authorization: Token proxy" behind; otherwise Authorization
// ("Token T" or "Bearer T") decides.
func (s *Server) authorise(r *http.Request) (detail string, ok bool) {
	presented := r.Header.Get("X-DATAMESH-TOKEN")
	if presented == "" {
		presented = r.Header.Get("Authorization")
	}
	if presented == "" {
		return "Authentication credentials were not provided.", false
	}
	if !s.tokenMatches(presented) {
		return "Invalid token.", false
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

// injectFailure draws the next number of the seeded failure sequence, and
// for a failure its status from FailCodes (0: no failure).
func (s *Server) injectFailure() int {
	if s.cfg.FailRate <= 0 {
		return 0
	}
	s.failMu.Lock()
	defer s.failMu.Unlock()
	if s.failRng.Float64() >= s.cfg.FailRate {
		return 0
	}
	return s.cfg.FailCodes[s.codeRng.IntN(len(s.cfg.FailCodes))]
}

// writeInjectedFailure answers an injected failure; 429 and 503 say when
// to come back, as real services and proxies do.
func (s *Server) writeInjectedFailure(w http.ResponseWriter, code int) {
	if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
		secs := int64(max(s.cfg.RetryAfter, 0) / time.Second)
		w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	}
	writeDetail(w, code, "injected failure")
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

// recorder remembers the status and counts the body bytes of an answer, and
// moves the connection's write deadline forward before each piece of at
// most writeStep bytes, so that WriteTimeout bounds a stall, not a whole
// answer. It keeps io.ReaderFrom so that file bodies still go out with
// sendfile.
type recorder struct {
	http.ResponseWriter
	rc           *http.ResponseController
	writeTimeout time.Duration
	// onHeader, when set, is called once with the status, before the
	// answer's first byte is written.
	onHeader func(status int)
	status   int
	bytes    int64
}

// header sets the status once and calls onHeader.
func (rw *recorder) header(code int) {
	if rw.status != 0 {
		return
	}
	rw.status = code
	if rw.onHeader != nil {
		rw.onHeader(code)
	}
}

// extend gives the next piece WriteTimeout to go out.
func (rw *recorder) extend() {
	if rw.writeTimeout > 0 {
		_ = rw.rc.SetWriteDeadline(time.Now().Add(rw.writeTimeout)) // unsupported outside net/http's server
	}
}

func (rw *recorder) WriteHeader(code int) {
	rw.header(code)
	rw.extend() // headers of a bodiless answer are flushed after the handler, under this deadline
	rw.ResponseWriter.WriteHeader(code)
}

func (rw *recorder) Write(p []byte) (int, error) {
	rw.header(http.StatusOK)
	var total int
	for {
		piece := p[:min(len(p), writeStep)]
		rw.extend()
		n, err := rw.ResponseWriter.Write(piece)
		total += n
		rw.bytes += int64(n)
		p = p[n:]
		if err != nil || len(p) == 0 {
			return total, err
		}
	}
}

func (rw *recorder) ReadFrom(src io.Reader) (int64, error) {
	rw.header(http.StatusOK)
	rf, ok := rw.ResponseWriter.(io.ReaderFrom)
	if !ok {
		n, err := io.CopyBuffer(writerOnly{rw}, src, make([]byte, 32<<10))
		return n, err // rw.Write counted the bytes
	}
	// Sendfile needs an *os.File, bare or under one *io.LimitedReader
	// (http.ServeContent sends io.CopyN's). Hand it one writeStep at a
	// time, each under a fresh deadline.
	limit := int64(-1) // no limit
	file := src
	if lr, ok := src.(*io.LimitedReader); ok {
		if lr.N <= 0 {
			return 0, nil
		}
		limit, file = lr.N, lr.R
		defer func() { lr.N = limit }()
	}
	var total int64
	for limit != 0 {
		step := int64(writeStep)
		if limit > 0 {
			step = min(step, limit)
		}
		rw.extend()
		n, err := rf.ReadFrom(&io.LimitedReader{R: file, N: step})
		total += n
		rw.bytes += n
		if limit > 0 {
			limit -= n
		}
		if err != nil || n < step { // the source ended, or failed
			return total, err
		}
	}
	return total, nil
}

// writerOnly hides ReadFrom, so that io.Copy calls Write.
type writerOnly struct{ io.Writer }

func (rw *recorder) Unwrap() http.ResponseWriter { return rw.ResponseWriter }
