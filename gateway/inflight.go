package gateway

import (
	"net/http"
	"strconv"
	"sync"
	"time"
)

// The in-flight gauge shows how wide a client reads: how many /zarr/
// requests the gateway is answering at once, from their arrival (Latency
// included) to the end of their answer. Only requests with a good token
// count, like everywhere else in the counters.

// Trace bounds: one sample per TraceInterval, the last TraceSamples kept
// (10 minutes, a few hundred KiB at most).
const (
	TraceInterval = 100 * time.Millisecond
	TraceSamples  = 6000
)

// InFlight is the zarr_in_flight part of the counters.
type InFlight struct {
	// Current is the number of /zarr/ requests being answered now; a
	// reset keeps it.
	Current int64 `json:"current"`
	// Max is the most at once since the last reset.
	Max int64 `json:"max"`
	// Mean is the time-weighted mean while busy: RequestSeconds /
	// BusySeconds, so that idle time before, between or after a client's
	// requests does not dilute it (0 when never busy).
	Mean float64 `json:"mean"`
	// BusySeconds is the time since the last reset with at least one
	// request in flight.
	BusySeconds float64 `json:"busy_seconds"`
	// RequestSeconds is the integral of the in-flight count over time
	// since the last reset: divided by any window's length it gives the
	// mean over that window.
	RequestSeconds float64 `json:"request_seconds"`
}

// Trace is GET /_dmfs/trace: the in-flight count over time since the last
// counters reset, one sample per interval.
type Trace struct {
	IntervalSeconds float64 `json:"interval_seconds"`
	// Dropped counts the oldest samples left out: only the last
	// TraceSamples are kept.
	Dropped int64         `json:"dropped"`
	Samples []TraceSample `json:"samples"`
}

// TraceSample is one interval of the trace.
type TraceSample struct {
	// T is the end of the interval, in seconds since the last reset.
	T float64 `json:"t"`
	// InFlight is the number in flight at T.
	InFlight int64 `json:"in_flight"`
	// Max is the most at once during the interval.
	Max int64 `json:"max"`
	// Mean is the time-weighted mean over the interval.
	Mean float64 `json:"mean"`
	// Answers counts the answers that ended in the interval, by status.
	Answers map[string]int64 `json:"answers,omitempty"`
}

// inFlightGauge integrates the in-flight count over time. Trace samples are
// closed lazily, whenever a request starts or ends or someone reads, so it
// needs no goroutine.
type inFlightGauge struct {
	now      func() time.Time
	interval time.Duration
	keep     int

	mu          sync.Mutex
	cur, max    int64
	since, last time.Time // the reset; the last time integrated up to
	area        float64   // request-seconds since the reset
	busy        time.Duration
	// The open trace interval is number bucket: it starts at
	// since + bucket×interval.
	bucket        int64
	bucketArea    float64
	bucketMax     int64
	bucketAnswers map[int]int64
	// samples holds up to 2×keep closed intervals; the last keep are
	// served, the rest are compacted away.
	samples []TraceSample
	dropped int64
}

func newInFlightGauge(now func() time.Time, interval time.Duration, keep int) *inFlightGauge {
	g := &inFlightGauge{now: now, interval: interval, keep: max(keep, 1)}
	g.reset()
	return g
}

// reset starts a new window: the requests in flight stay in flight.
func (g *inFlightGauge) reset() {
	g.mu.Lock()
	defer g.mu.Unlock()
	t := g.now()
	g.since, g.last = t, t
	g.max = g.cur
	g.area, g.busy = 0, 0
	g.bucket, g.bucketArea, g.bucketMax, g.bucketAnswers = 0, 0, g.cur, nil
	g.samples, g.dropped = nil, 0
}

func (g *inFlightGauge) begin() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance(g.now())
	g.cur++
	g.max = max(g.max, g.cur)
	g.bucketMax = max(g.bucketMax, g.cur)
}

// end counts the end of a request begun with begin, answered with status.
func (g *inFlightGauge) end(status int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance(g.now())
	if g.cur > 0 {
		g.cur--
	}
	if g.bucketAnswers == nil {
		g.bucketAnswers = map[int]int64{}
	}
	g.bucketAnswers[status]++
}

// advance integrates up to now and closes the trace intervals that ended.
func (g *inFlightGauge) advance(now time.Time) {
	if now.Before(g.last) {
		now = g.last
	}
	for {
		end := g.since.Add(time.Duration(g.bucket+1) * g.interval)
		if now.Before(end) {
			break
		}
		g.integrate(end)
		g.closeBucket()
		// Whole intervals beyond what the trace keeps would only be
		// dropped: integrate over them at once.
		if n := int64(now.Sub(end) / g.interval); n > int64(g.keep) {
			skip := n - int64(g.keep)
			g.integrate(g.since.Add(time.Duration(g.bucket+skip) * g.interval))
			g.bucket += skip
			g.dropped += skip
			g.bucketArea, g.bucketMax = 0, g.cur
		}
	}
	g.integrate(now)
}

func (g *inFlightGauge) integrate(t time.Time) {
	dt := t.Sub(g.last)
	if g.cur > 0 && dt > 0 {
		a := float64(g.cur) * dt.Seconds()
		g.area += a
		g.bucketArea += a
		g.busy += dt
	}
	g.last = t
}

func (g *inFlightGauge) closeBucket() {
	s := TraceSample{
		T:        (time.Duration(g.bucket+1) * g.interval).Seconds(),
		InFlight: g.cur,
		Max:      g.bucketMax,
		Mean:     g.bucketArea / g.interval.Seconds(),
	}
	if len(g.bucketAnswers) > 0 {
		s.Answers = make(map[string]int64, len(g.bucketAnswers))
		for code, n := range g.bucketAnswers {
			s.Answers[strconv.Itoa(code)] = n
		}
	}
	g.samples = append(g.samples, s)
	if len(g.samples) >= 2*g.keep {
		n := len(g.samples) - g.keep
		g.dropped += int64(n)
		g.samples = append(g.samples[:0:0], g.samples[n:]...)
	}
	g.bucket++
	g.bucketArea, g.bucketMax, g.bucketAnswers = 0, g.cur, nil
}

func (g *inFlightGauge) snapshot() InFlight {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance(g.now())
	out := InFlight{Current: g.cur, Max: g.max, BusySeconds: g.busy.Seconds(), RequestSeconds: g.area}
	if g.busy > 0 {
		out.Mean = g.area / g.busy.Seconds()
	}
	return out
}

// trace returns the closed intervals since the reset, the last keep of
// them. Closed samples are never changed, so they are shared.
func (g *inFlightGauge) trace() Trace {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance(g.now())
	samples := g.samples
	dropped := g.dropped
	if n := len(samples) - g.keep; n > 0 {
		samples, dropped = samples[n:], dropped+int64(n)
	}
	return Trace{IntervalSeconds: g.interval.Seconds(), Dropped: dropped, Samples: append([]TraceSample{}, samples...)}
}

// Trace returns the in-flight trace since the last counters reset, the same
// data as GET /_dmfs/trace.
func (s *Server) Trace() Trace { return s.counters.flight.trace() }

// serveTrace answers GET /_dmfs/trace, once ServeHTTP has checked the
// token.
func (s *Server) serveTrace(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		writeDetail(w, http.StatusMethodNotAllowed, "use GET")
		return
	}
	writeJSON(w, http.StatusOK, s.Trace())
}
