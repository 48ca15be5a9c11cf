package gateway

import (
	"container/heap"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// defaultSessionDuration is what a session lasts when the client names no
// duration.
const defaultSessionDuration = time.Hour

// timeLayout is ISO-8601 in UTC with microseconds, which Python's
// datetime.fromisoformat and JavaScript's Date both parse.
const timeLayout = "2006-01-02T15:04:05.000000Z07:00"

type session struct {
	id           string
	created, end time.Time
	// used is when a request last carried the session (its creation
	// first); with an idle limit the session ends idle after it.
	used       time.Time
	allowMulti bool
	closed     bool
	// index is the session's place in sessionStore.open, -1 once it left it
	// (closed or seen expired).
	index int
}

// sessionJSON is the protocol's session document.
type sessionJSON struct {
	ID              string `json:"id"`
	User            string `json:"user"`
	CreationTime    string `json:"creation_time"`
	EndTime         string `json:"end_time"`
	Write           bool   `json:"write"`
	AllowMultiwrite bool   `json:"allow_multiwrite"`
	Verified        bool   `json:"verified"`
}

func (s *session) json() sessionJSON {
	return sessionJSON{
		ID:              s.id,
		User:            "dmfs-local",
		CreationTime:    s.created.UTC().Format(timeLayout),
		EndTime:         s.end.UTC().Format(timeLayout),
		Write:           false,
		AllowMultiwrite: s.allowMulti,
		Verified:        true,
	}
}

// A session that stopped being open is still known for sessionForget, so
// that a client using it hears "closed" or "expired" rather than "not
// found"; at most maxRetired of them, the oldest forgotten first, so that
// churn cannot grow the store.
const (
	sessionForget = time.Hour
	maxRetired    = 100_000
)

// sessionStore keeps sessions by id, and the open ones in a min-heap on
// end time, so that expiry and the open count cost O(log n) per session
// rather than a scan of all sessions per request.
type sessionStore struct {
	ttl        time.Duration
	idle       time.Duration // 0: sessions never end idle
	max        int
	maxRetired int
	now        func() time.Time
	// onEnd, when set, hears of each session that ended without a close
	// (expired or idle), under mu: it must not call the store.
	onEnd func(id string)

	mu       sync.Mutex
	sessions map[string]*session
	// open holds exactly the sessions not closed and not yet seen expired
	// (end_time or idle), ordered on expiry(); after expire(now) its length
	// is the exact open count.
	open openHeap
	// retired lists the sessions that left open, in the order they left,
	// to forget them sessionForget later.
	retired []retiredSession
}

type retiredSession struct {
	id string
	at time.Time
}

func newSessionStore(ttl, idle time.Duration, max int) *sessionStore {
	return &sessionStore{ttl: ttl, idle: idle, max: max, maxRetired: maxRetired, now: time.Now,
		sessions: map[string]*session{}, open: openHeap{idle: idle}}
}

// expiry is when s stops being live: its end_time, or earlier when it is
// left idle for st.idle, as the real gateway ends idle sessions.
func (st *sessionStore) expiry(s *session) time.Time { return sessionExpiry(s, st.idle) }

func sessionExpiry(s *session, idle time.Duration) time.Time {
	if idle > 0 {
		if t := s.used.Add(idle); t.Before(s.end) {
			return t
		}
	}
	return s.end
}

func (st *sessionStore) live(s *session, now time.Time) bool {
	return !s.closed && now.Before(st.expiry(s))
}

// sessionState is what a request carrying a session id finds.
type sessionState int

const (
	sessionLive sessionState = iota
	sessionUnknown
	sessionClosed
	sessionExpired // past its end_time
	sessionIdle    // ended by the gateway after st.idle without use
)

// use checks the session a request carries and, when it is live, marks it
// used now, in one step so that no request slips between check and touch.
func (st *sessionStore) use(id string) sessionState {
	st.mu.Lock()
	defer st.mu.Unlock()
	p, ok := st.sessions[id]
	now := st.now()
	switch {
	case !ok:
		return sessionUnknown
	case p.closed:
		return sessionClosed
	case !now.Before(p.end):
		return sessionExpired
	case !st.live(p, now):
		return sessionIdle
	}
	p.used = now
	if st.idle > 0 && p.index >= 0 {
		heap.Fix(&st.open, p.index) // its expiry moved later
	}
	return sessionLive
}

// expire moves the sessions whose end has passed out of the open heap, and
// forgets the retired sessions past sessionForget or maxRetired. Callers
// hold mu.
func (st *sessionStore) expire(now time.Time) {
	for st.open.Len() > 0 && !now.Before(st.expiry(st.open.s[0])) {
		s := heap.Pop(&st.open).(*session)
		st.retired = append(st.retired, retiredSession{s.id, now})
		if st.onEnd != nil {
			st.onEnd(s.id)
		}
	}
	n := 0
	for n < len(st.retired) && (now.Sub(st.retired[n].at) > sessionForget || len(st.retired)-n > st.maxRetired) {
		delete(st.sessions, st.retired[n].id)
		n++
	}
	if n > 0 {
		st.retired = st.retired[n:]
		// Copy once the forgotten prefix is most of the backing array,
		// which it would otherwise keep alive.
		if cap(st.retired) > 64 && len(st.retired) < cap(st.retired)/4 {
			st.retired = append([]retiredSession(nil), st.retired...)
		}
	}
}

func (st *sessionStore) openCount() int64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.expire(st.now())
	return int64(st.open.Len())
}

var errTooManySessions = fmt.Errorf("too many open sessions")

func (st *sessionStore) acquire(d time.Duration, allowMulti bool) (*session, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	now := st.now()
	st.expire(now)
	if st.max > 0 && st.open.Len() >= st.max {
		return nil, errTooManySessions
	}
	if st.ttl > 0 && d > st.ttl {
		d = st.ttl
	}
	s := &session{id: newSessionID(), created: now, end: now.Add(d), used: now, allowMulti: allowMulti}
	st.sessions[s.id] = s
	heap.Push(&st.open, s)
	cp := *s
	return &cp, nil
}

// get returns a copy of the session and whether it is live.
func (st *sessionStore) get(id string) (s session, found, live bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	p, ok := st.sessions[id]
	if !ok {
		return session{}, false, false
	}
	return *p, true, st.live(p, st.now())
}

// close closes a session; false when it is unknown or already closed.
func (st *sessionStore) close(id string) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	p, ok := st.sessions[id]
	if !ok || p.closed {
		return false
	}
	p.closed = true
	now := st.now()
	if p.index >= 0 {
		heap.Remove(&st.open, p.index)
		st.retired = append(st.retired, retiredSession{p.id, now})
	}
	st.expire(now)
	return true
}

// openHeap is a container/heap of sessions, earliest expiry first. idle is
// the store's idle limit, which expiry depends on.
type openHeap struct {
	s    []*session
	idle time.Duration
}

func (h *openHeap) Len() int { return len(h.s) }
func (h *openHeap) Less(i, j int) bool {
	return sessionExpiry(h.s[i], h.idle).Before(sessionExpiry(h.s[j], h.idle))
}
func (h *openHeap) Swap(i, j int) {
	h.s[i], h.s[j] = h.s[j], h.s[i]
	h.s[i].index, h.s[j].index = i, j
}

func (h *openHeap) Push(x any) {
	s := x.(*session)
	s.index = len(h.s)
	h.s = append(h.s, s)
}

func (h *openHeap) Pop() any {
	old := h.s
	s := old[len(old)-1]
	old[len(old)-1] = nil
	s.index = -1
	h.s = old[:len(old)-1]
	return s
}

func newSessionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// parseDuration reads the duration query parameter, in seconds.
func parseDuration(v string) (time.Duration, error) {
	if v == "" {
		return defaultSessionDuration, nil
	}
	secs, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(secs) || math.IsInf(secs, 0) || secs <= 0 || secs > 366*24*3600 {
		return 0, fmt.Errorf("duration must be a positive number of seconds (at most a year), not %q", v)
	}
	return time.Duration(secs * float64(time.Second)), nil
}

func parseBoolParam(name, v string) (bool, error) {
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%s must be true or false, not %q", name, v)
	}
	return b, nil
}

func (s *Server) serveSessionAcquire(w http.ResponseWriter, r *http.Request, _ *request) {
	q := r.URL.Query()
	d, err := parseDuration(q.Get("duration"))
	if err != nil {
		writeDetail(w, http.StatusBadRequest, err.Error())
		return
	}
	allowMulti, err := parseBoolParam("allow_multiwrite", q.Get("allow_multiwrite"))
	if err != nil {
		writeDetail(w, http.StatusBadRequest, err.Error())
		return
	}
	sess, err := s.sessions.acquire(d, allowMulti)
	if err != nil {
		writeDetail(w, http.StatusTooManyRequests,
			fmt.Sprintf("Too many open sessions (at most %d); close one first.", s.cfg.MaxSessions))
		return
	}
	s.counters.sessionAcquired()
	s.log.Info("session acquired", "session", sess.id, "end_time", sess.end.UTC().Format(timeLayout))
	writeJSON(w, http.StatusOK, sess.json())
}

func (s *Server) serveSessionGet(w http.ResponseWriter, _ *http.Request, q *request) {
	sess, found, _ := s.sessions.get(q.arg)
	if !found || sess.closed {
		writeDetail(w, http.StatusNotFound, "Session not found")
		return
	}
	writeJSON(w, http.StatusOK, sess.json())
}

// sessionAuthorises lets a DELETE of a live session authenticate with its own
// id, as one official client sends it without a token.
func (s *Server) sessionAuthorises(r *http.Request, id string) bool {
	hdr := r.Header.Get("X-DATAMESH-SESSIONID")
	if hdr == "" || hdr != id {
		return false
	}
	_, _, live := s.sessions.get(id)
	return live
}

func (s *Server) serveSessionDelete(w http.ResponseWriter, r *http.Request, q *request) {
	finalise := false
	if v := r.URL.Query().Get("finalise_write"); v != "" {
		b, err := parseBoolParam("finalise_write", v)
		if err != nil {
			writeDetail(w, http.StatusBadRequest, err.Error())
			return
		}
		finalise = b
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<16))
	if err != nil {
		writeDetail(w, http.StatusBadRequest, "cannot read the request body")
		return
	}
	if len(body) > 0 {
		var opts struct {
			FinaliseWrite *bool `json:"finalise_write"`
		}
		if err := json.Unmarshal(body, &opts); err != nil {
			writeDetail(w, http.StatusBadRequest, "body must be JSON like {\"finalise_write\": false}")
			return
		}
		if opts.FinaliseWrite != nil {
			finalise = *opts.FinaliseWrite
		}
	}
	st, _ := s.writes.get(q.arg, false, false) // before the reap, to tell an expired writer
	s.reapWrites()
	sess, found, live := s.sessions.get(q.arg)
	if !found || sess.closed {
		writeDetail(w, http.StatusNotFound, "Session not found")
		return
	}
	if st != nil && finalise && live {
		// Committed before the session closes: a failed commit leaves the
		// session open, its rest still staged, so that the client's retry
		// of the close goes on with it.
		if err := s.finalise(st); err != nil {
			s.log.Error("finalise failed", "session", q.arg, "err", err)
			writeDetail(w, http.StatusInternalServerError, "Failed to finalise the session's writes: "+err.Error())
			return
		}
	}
	if !s.sessions.close(q.arg) {
		writeDetail(w, http.StatusNotFound, "Session not found")
		return
	}
	s.counters.sessionClosed()
	switch {
	case finalise && live:
		if st != nil {
			s.writes.remove(st)
		}
		s.counters.sessionOutcome(q.arg, outcomeFinalised, true)
		s.log.Info("session closed, writes finalised", "session", q.arg)
	case st != nil:
		s.discardSession(st, "closed without finalise_write")
	default:
		s.counters.sessionOutcome(q.arg, outcomeDiscarded, false)
		s.log.Info("session closed", "session", q.arg)
	}
	if finalise && !live && st != nil {
		// An expired session's writes are gone: say so rather than 204.
		writeDetail(w, http.StatusGone, "Session expired: its writes were discarded")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// checkZarrSession answers 401 unless the request carries a live session,
// which it then marks used.
func (s *Server) checkZarrSession(w http.ResponseWriter, q *request) bool {
	if q.sessionID == "" {
		s.counters.zarrWithoutSession()
		writeDetail(w, http.StatusUnauthorized, "Session ID required")
		return false
	}
	switch s.sessions.use(q.sessionID) {
	case sessionUnknown:
		writeDetail(w, http.StatusUnauthorized, "Session not found")
		return false
	case sessionClosed:
		writeDetail(w, http.StatusUnauthorized, "Session closed")
		return false
	case sessionExpired:
		writeDetail(w, http.StatusUnauthorized, "Session expired")
		return false
	case sessionIdle:
		writeDetail(w, http.StatusUnauthorized, "Session expired: ended after being idle")
		return false
	}
	return true
}
