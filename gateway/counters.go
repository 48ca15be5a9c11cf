package gateway

import (
	"net/http"
	"strconv"
	"sync"
)

// Counters counts the requests a Server answered since it started or since
// the last reset, as GET /_dmfs/counters returns them.
type Counters struct {
	Requests int64 `json:"requests"`
	// ByRoute always names every protocol route; "other" appears only when
	// an unknown path was asked for.
	ByRoute       map[string]int64 `json:"by_route"`
	ByStatus      map[string]int64 `json:"by_status"`
	ByRouteStatus map[string]int64 `json:"by_route_status"`
	// ZarrKeys counts GET and HEAD per key: "DSID/KEY GET".
	ZarrKeys map[string]int64 `json:"zarr_keys"`
	Sessions SessionCounters  `json:"sessions"`
	// ZarrWithoutSession counts /zarr/ requests that carried no session id.
	ZarrWithoutSession int64 `json:"zarr_without_session"`
	// BytesSent counts response body bytes.
	BytesSent int64 `json:"bytes_sent"`
}

// SessionCounters counts sessions; Open is the live count, never reset.
type SessionCounters struct {
	Acquired int64 `json:"acquired"`
	Closed   int64 `json:"closed"`
	Open     int64 `json:"open"`
}

type counterSet struct {
	mu sync.Mutex
	c  Counters
}

func newCounterSet() *counterSet {
	cs := &counterSet{}
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
	}
	for _, r := range allRoutes {
		cs.c.ByRoute[r] = 0
	}
}

func (cs *counterSet) record(route string, status int, bytes int64, zarrKey string) {
	st := strconv.Itoa(status)
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.c.Requests++
	cs.c.ByRoute[route]++
	cs.c.ByStatus[st]++
	cs.c.ByRouteStatus[route+" "+st]++
	if zarrKey != "" {
		cs.c.ZarrKeys[zarrKey]++
	}
	cs.c.BytesSent += bytes
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

// serveCounters answers GET /_dmfs/counters; it needs no token and is not
// itself counted.
func (s *Server) serveCounters(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		writeDetail(w, http.StatusMethodNotAllowed, "use GET")
		return
	}
	writeJSON(w, http.StatusOK, s.Counters())
}

// serveCountersReset answers POST /_dmfs/counters/reset.
func (s *Server) serveCountersReset(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeDetail(w, http.StatusMethodNotAllowed, "use POST")
		return
	}
	s.counters.reset()
	w.WriteHeader(http.StatusNoContent)
}
