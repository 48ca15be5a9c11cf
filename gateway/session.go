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
	allowMulti   bool
	closed       bool
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
	max        int
	maxRetired int
	now        func() time.Time

	mu       sync.Mutex
	sessions map[string]*session
	// open holds exactly the sessions not closed and not yet seen expired;
	// after expire(now) its length is the exact open count.
	open openHeap
	// retired lists the sessions that left open, in the order they left,
	// to forget them sessionForget later.
	retired []retiredSession
}

type retiredSession struct {
	id string
	at time.Time
}

func newSessionStore(ttl time.Duration, max int) *sessionStore {
	return &sessionStore{ttl: ttl, max: max, maxRetired: maxRetired, now: time.Now, sessions: map[string]*session{}}
}

func (st *sessionStore) live(s *session, now time.Time) bool {
	return !s.closed && now.Before(s.end)
}

// expire moves the sessions whose end has passed out of the open heap, and
// forgets the retired sessions past sessionForget or maxRetired. Callers
// hold mu.
func (st *sessionStore) expire(now time.Time) {
	for len(st.open) > 0 && !now.Before(st.open[0].end) {
		s := heap.Pop(&st.open).(*session)
		st.retired = append(st.retired, retiredSession{s.id, now})
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
	return int64(len(st.open))
}

var errTooManySessions = fmt.Errorf("too many open sessions")

func (st *sessionStore) acquire(d time.Duration, allowMulti bool) (*session, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	now := st.now()
	st.expire(now)
	if st.max > 0 && len(st.open) >= st.max {
		return nil, errTooManySessions
	}
	if st.ttl > 0 && d > st.ttl {
		d = st.ttl
	}
	s := &session{id: newSessionID(), created: now, end: now.Add(d), allowMulti: allowMulti}
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

// openHeap is a container/heap of sessions, earliest end first.
type openHeap []*session

func (h openHeap) Len() int           { return len(h) }
func (h openHeap) Less(i, j int) bool { return h[i].end.Before(h[j].end) }
func (h openHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}

func (h *openHeap) Push(x any) {
	s := x.(*session)
	s.index = len(*h)
	*h = append(*h, s)
}

func (h *openHeap) Pop() any {
	old := *h
	s := old[len(old)-1]
	old[len(old)-1] = nil
	s.index = -1
	*h = old[:len(old)-1]
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
	if v := r.URL.Query().Get("finalise_write"); v != "" {
		if _, err := parseBoolParam("finalise_write", v); err != nil {
			writeDetail(w, http.StatusBadRequest, err.Error())
			return
		}
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
	}
	if !s.sessions.close(q.arg) {
		writeDetail(w, http.StatusNotFound, "Session not found")
		return
	}
	s.counters.sessionClosed()
	s.log.Info("session closed", "session", q.arg)
	w.WriteHeader(http.StatusNoContent)
}

// checkZarrSession answers 401 unless the request carries a live session.
func (s *Server) checkZarrSession(w http.ResponseWriter, q *request) bool {
	if q.sessionID == "" {
		s.counters.zarrWithoutSession()
		writeDetail(w, http.StatusUnauthorized, "Session ID required")
		return false
	}
	sess, found, live := s.sessions.get(q.sessionID)
	switch {
	case !found:
		writeDetail(w, http.StatusUnauthorized, "Session not found")
		return false
	case sess.closed:
		writeDetail(w, http.StatusUnauthorized, "Session closed")
		return false
	case !live:
		writeDetail(w, http.StatusUnauthorized, "Session expired")
		return false
	}
	return true
}
