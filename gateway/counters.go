package gateway

import (
	"net/http"
	"strconv"
	"sync"
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
	// ZarrKeys counts GET and HEAD per key: "DSID/KEY GET". It holds at most
	// ZarrKeysMax entries of at most MaxCounterKeyBytes bytes each.
	ZarrKeys map[string]int64 `json:"zarr_keys"`
	// ZarrKeysOther counts the GET and HEAD requests left out of ZarrKeys:
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
}

// SessionCounters counts sessions; Open is the live count, never reset.
type SessionCounters struct {
	Acquired int64 `json:"acquired"`
	Closed   int64 `json:"closed"`
	Open     int64 `json:"open"`
}

type counterSet struct {
	maxKeys int

	mu sync.Mutex
	c  Counters
}

func newCounterSet(maxKeys int) *counterSet {
	if maxKeys <= 0 {
		maxKeys = DefaultMaxCounterKeys
	}
	cs := &counterSet{maxKeys: maxKeys}
	cs.reset()
	return cs
}

func (cs *counterSet) reset() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.c = Counters{
		ByRoute:       make(map[string]int64, len(allRoutes)),
		ByStatus:      map[string]int64{},
		ByRouteStatus: map[string]int64{},
		ZarrKeys:      map[string]int64{},
		ZarrKeysMax:   cs.maxKeys,
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
	cs.mu.Lock()
	defer cs.mu.Unlock()
	out := cs.c
	out.ByRoute = copyMap(cs.c.ByRoute)
	out.ByStatus = copyMap(cs.c.ByStatus)
	out.ByRouteStatus = copyMap(cs.c.ByRouteStatus)
	out.ZarrKeys = copyMap(cs.c.ZarrKeys)
	out.Sessions.Open = open
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
// checked the token.
func (s *Server) serveCountersReset(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeDetail(w, http.StatusMethodNotAllowed, "use POST")
		return
	}
	s.counters.reset()
	w.WriteHeader(http.StatusNoContent)
}
