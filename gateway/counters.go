package gateway

import (
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Bounds on the per-key counters, so that a client asking for many or long
// keys cannot grow the gateway's memory (or the counters document) without
// limit: about 100k × 256 bytes at most.
const (
	// DefaultMaxCounterKeys is the default cap on zarr_keys entries.
	DefaultMaxCounterKeys = 100_000
	// MaxCounterKeyBytes caps the length of one zarr_keys entry
	// ("DSID/KEY METHOD"); a longer key is counted in zarr_keys_other.
	MaxCounterKeyBytes = 256
)

// Counters counts the requests a Server answered since it started or since
// the last reset, as GET /_dmfs/counters returns them. Requests refused for
// their token are counted only in Unauthenticated.
type Counters struct {
	Requests int64 `json:"requests"`
	// ByRoute always names every protocol route; "other" appears only when
	// an unknown path was asked for.
	ByRoute       map[string]int64 `json:"by_route"`
	ByStatus      map[string]int64 `json:"by_status"`
	ByRouteStatus map[string]int64 `json:"by_route_status"`
	// ZarrKeys counts GET, HEAD, POST, PUT and DELETE per key ("DSID/KEY
	// GET"), whatever the answer, so that a client's request economy can be
	// checked. It holds at most ZarrKeysMax entries of at most
	// MaxCounterKeyBytes bytes each.
	ZarrKeys map[string]int64 `json:"zarr_keys"`
	// ZarrKeysOther counts the key requests left out of ZarrKeys:
	// their key was too long, or ZarrKeys was full.
	ZarrKeysOther int64 `json:"zarr_keys_other"`
	// ZarrKeysMax is the cap on ZarrKeys entries.
	ZarrKeysMax int             `json:"zarr_keys_max"`
	Sessions    SessionCounters `json:"sessions"`
	// ZarrWithoutSession counts /zarr/ requests that carried no session id.
	ZarrWithoutSession int64 `json:"zarr_without_session"`
	// BytesSent counts response body bytes of authenticated requests.
	BytesSent int64 `json:"bytes_sent"`
	// Unauthenticated counts requests refused for a missing or wrong token;
	// they appear in no other counter.
	Unauthenticated int64 `json:"unauthenticated"`
	// Writes counts staged, committed and discarded writes.
	Writes WriteCounters `json:"writes"`
	// QueryKeys counts GET and HEAD of staged query results per key
	// ("QHASH/KEY GET"), like ZarrKeys and within the same cap.
	QueryKeys      map[string]int64 `json:"query_keys"`
	QueryKeysOther int64            `json:"query_keys_other"`
	// Stages counts stage requests (POST /oceanql/stage/ and POST
	// /oceanql/) per normalised query that parsed, whatever the answer
	// (200, 204 or a refusal), keyed by the query in the mount's path form:
	// ID@time=START,END@bbox=W,S,E,N@level=LO,HI@vars=a,b (times resolved,
	// RFC 3339 UTC; only the parts the query has). At most ZarrKeysMax
	// entries; others count in StagesOther.
	Stages      map[string]int64 `json:"stages"`
	StagesOther int64            `json:"stages_other"`
	// ZarrInFlight gauges the /zarr/ requests being answered at once
	// (from arrival, Latency included, to the end of the answer): now, the
	// most, and the time-weighted mean while busy. GET /_dmfs/trace has
	// the same over time.
	ZarrInFlight InFlight `json:"zarr_in_flight"`
}

// WriteCounters counts the write protocol. Every staged key ends committed
// or discarded (a key staged again in the same session discards the
// earlier version), so StagedKeys = CommittedKeys + DiscardedKeys + the
// keys still staged; bytes likewise.
type WriteCounters struct {
	StagedKeys     int64 `json:"staged_keys"`
	StagedBytes    int64 `json:"staged_bytes"`
	CommittedKeys  int64 `json:"committed_keys"`
	CommittedBytes int64 `json:"committed_bytes"`
	DiscardedKeys  int64 `json:"discarded_keys"`
	DiscardedBytes int64 `json:"discarded_bytes"`
	// Deletions of keys and folders (DELETE /zarr/...), staged and then
	// committed or discarded with their session.
	DeletesStaged    int64 `json:"deletes_staged"`
	DeletesCommitted int64 `json:"deletes_committed"`
	DeletesDiscarded int64 `json:"deletes_discarded"`
	// Conflicts counts 409 answers: the datasource was held by another
	// session.
	Conflicts int64 `json:"conflicts"`
	// SessionsFinalised counts closes with finalise_write=true that
	// committed; SessionsDiscarded sessions that sent writes and ended
	// otherwise (closed without finalise_write, expired or ended idle).
	SessionsFinalised int64 `json:"sessions_finalised"`
	SessionsDiscarded int64 `json:"sessions_discarded"`
	// Sessions gives each writing session's outcome: "open", "finalised"
	// or "discarded" (at most ZarrKeysMax entries; others count in
	// SessionsOther).
	Sessions      map[string]string `json:"sessions"`
	SessionsOther int64             `json:"sessions_other"`
}

// Outcomes of a writing session in WriteCounters.Sessions.
const (
	outcomeOpen      = "open"
	outcomeFinalised = "finalised"
	outcomeDiscarded = "discarded"
)

// SessionCounters counts sessions; Open is the live count, never reset.
type SessionCounters struct {
	Acquired int64 `json:"acquired"`
	Closed   int64 `json:"closed"`
	Open     int64 `json:"open"`
}

type counterSet struct {
	maxKeys int
	flight  *inFlightGauge // its own lock: taken twice per /zarr/ request

	mu sync.Mutex
	c  Counters
}

func newCounterSet(maxKeys int) *counterSet {
	if maxKeys <= 0 {
		maxKeys = DefaultMaxCounterKeys
	}
	cs := &counterSet{maxKeys: maxKeys, flight: newInFlightGauge(time.Now, TraceInterval, TraceSamples)}
	cs.reset()
	return cs
}

func (cs *counterSet) reset() {
	cs.flight.reset()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.c = Counters{
		ByRoute:       make(map[string]int64, len(allRoutes)),
		ByStatus:      map[string]int64{},
		ByRouteStatus: map[string]int64{},
		ZarrKeys:      map[string]int64{},
		ZarrKeysMax:   cs.maxKeys,
		Writes:        WriteCounters{Sessions: map[string]string{}},
		QueryKeys:     map[string]int64{},
		Stages:        map[string]int64{},
	}
	for _, r := range allRoutes {
		cs.c.ByRoute[r] = 0
	}
}

// record counts one authenticated request. route and status come from a
// fixed set, so only zarr keys need bounding.
func (cs *counterSet) record(route string, status int, zarrKey string) {
	st := strconv.Itoa(status)
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.c.Requests++
	cs.c.ByRoute[route]++
	cs.c.ByStatus[st]++
	cs.c.ByRouteStatus[route+" "+st]++
	if zarrKey != "" {
		if _, seen := cs.c.ZarrKeys[zarrKey]; seen ||
			(len(zarrKey) <= MaxCounterKeyBytes && len(cs.c.ZarrKeys) < cs.maxKeys) {
			cs.c.ZarrKeys[zarrKey]++
		} else {
			cs.c.ZarrKeysOther++
		}
	}
}

// recordQueryKey counts one authenticated request for a query result key.
func (cs *counterSet) recordQueryKey(route string, status int, key string) {
	cs.record(route, status, "")
	if key == "" {
		return
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.c.QueryKeysOther += boundedAdd(cs.c.QueryKeys, key, cs.maxKeys)
}

// stage counts one stage request for a normalised query.
func (cs *counterSet) stage(query string) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.c.StagesOther += boundedAdd(cs.c.Stages, query, cs.maxKeys)
}

// boundedAdd counts key in m unless m is full or key too long; it returns
// 1 when it did not.
func boundedAdd(m map[string]int64, key string, max int) int64 {
	if _, seen := m[key]; seen || (len(key) <= MaxCounterKeyBytes && len(m) < max) {
		m[key]++
		return 0
	}
	return 1
}

// sent counts the body bytes of an authenticated answer.
func (cs *counterSet) sent(bytes int64) {
	cs.mu.Lock()
	cs.c.BytesSent += bytes
	cs.mu.Unlock()
}

func (cs *counterSet) unauthenticated() {
	cs.mu.Lock()
	cs.c.Unauthenticated++
	cs.mu.Unlock()
}

func (cs *counterSet) sessionAcquired() {
	cs.mu.Lock()
	cs.c.Sessions.Acquired++
	cs.mu.Unlock()
}

func (cs *counterSet) sessionClosed() {
	cs.mu.Lock()
	cs.c.Sessions.Closed++
	cs.mu.Unlock()
}

func (cs *counterSet) zarrWithoutSession() {
	cs.mu.Lock()
	cs.c.ZarrWithoutSession++
	cs.mu.Unlock()
}

func (cs *counterSet) snapshot(open int64) Counters {
	flight := cs.flight.snapshot()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	out := cs.c
	out.ZarrInFlight = flight
	out.ByRoute = copyMap(cs.c.ByRoute)
	out.ByStatus = copyMap(cs.c.ByStatus)
	out.ByRouteStatus = copyMap(cs.c.ByRouteStatus)
	out.ZarrKeys = copyMap(cs.c.ZarrKeys)
	out.QueryKeys = copyMap(cs.c.QueryKeys)
	out.Stages = copyMap(cs.c.Stages)
	out.Sessions.Open = open
	out.Writes.Sessions = make(map[string]string, len(cs.c.Writes.Sessions))
	for k, v := range cs.c.Writes.Sessions {
		out.Writes.Sessions[k] = v
	}
	return out
}

func copyMap(m map[string]int64) map[string]int64 {
	out := make(map[string]int64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// serveCounters answers GET /_dmfs/counters, once ServeHTTP has checked the
// token.
func (s *Server) serveCounters(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		writeDetail(w, http.StatusMethodNotAllowed, "use GET")
		return
	}
	writeJSON(w, http.StatusOK, s.Counters())
}

// serveCountersReset answers POST /_dmfs/counters/reset, once ServeHTTP has
// checked the token. It also starts a new in-flight window and trace.
func (s *Server) serveCountersReset(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeDetail(w, http.StatusMethodNotAllowed, "use POST")
		return
	}
	s.counters.reset()
	w.WriteHeader(http.StatusNoContent)
}

// writeSession notes a session that sent a write request.
func (cs *counterSet) writeSession(id string) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if _, ok := cs.c.Writes.Sessions[id]; ok {
		return
	}
	if len(id) > MaxCounterKeyBytes || len(cs.c.Writes.Sessions) >= cs.maxKeys {
		cs.c.Writes.SessionsOther++
		return
	}
	cs.c.Writes.Sessions[id] = outcomeOpen
}

// sessionOutcome records how a session ended; force records it for a
// session that sent no write (a finalise without writes).
func (cs *counterSet) sessionOutcome(id, outcome string, force bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	_, known := cs.c.Writes.Sessions[id]
	if !known && !force {
		return
	}
	if outcome == outcomeFinalised {
		cs.c.Writes.SessionsFinalised++
	} else {
		cs.c.Writes.SessionsDiscarded++
	}
	if known || (len(id) <= MaxCounterKeyBytes && len(cs.c.Writes.Sessions) < cs.maxKeys) {
		cs.c.Writes.Sessions[id] = outcome
	}
}

// writeStaged counts one staged key; replaced is the size of the version it
// replaced in the same session (-1: none), which is discarded.
func (cs *counterSet) writeStaged(bytes, replaced int64) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.c.Writes.StagedKeys++
	cs.c.Writes.StagedBytes += bytes
	if replaced >= 0 {
		cs.c.Writes.DiscardedKeys++
		cs.c.Writes.DiscardedBytes += replaced
	}
}

// deleteStaged counts one staged deletion and the staged keys it dropped.
func (cs *counterSet) deleteStaged(droppedKeys, droppedBytes int64) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.c.Writes.DeletesStaged++
	cs.c.Writes.DiscardedKeys += droppedKeys
	cs.c.Writes.DiscardedBytes += droppedBytes
}

func (cs *counterSet) writesCommitted(keys, bytes, deletes int64) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.c.Writes.CommittedKeys += keys
	cs.c.Writes.CommittedBytes += bytes
	cs.c.Writes.DeletesCommitted += deletes
}

// writesDiscarded counts a session's stage thrown away, and its outcome.
func (cs *counterSet) writesDiscarded(id string, keys, bytes, deletes int64) {
	cs.mu.Lock()
	cs.c.Writes.DiscardedKeys += keys
	cs.c.Writes.DiscardedBytes += bytes
	cs.c.Writes.DeletesDiscarded += deletes
	cs.mu.Unlock()
	cs.sessionOutcome(id, outcomeDiscarded, true)
}

func (cs *counterSet) writeConflict() {
	cs.mu.Lock()
	cs.c.Writes.Conflicts++
	cs.mu.Unlock()
}
