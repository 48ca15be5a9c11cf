package flow

import (
	"container/list"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Defaults of Config.
const (
	DefaultMax     = 128
	DefaultMin     = 4
	DefaultInitial = 16
	// MaxLimit bounds Config.Max: more than a host has ports.
	MaxLimit = 1 << 16
)

// The control law's constants; see the package comment.
const (
	// queueShare and minQueue give the queueing delay a round may show
	// and still grow: the allowance, max(no-load RTT x queueShare,
	// minQueue). The floor keeps scheduling and timer noise from reading as
	// congestion when the no-load RTT is a few milliseconds.
	queueShare = 0.25
	minQueue   = 2 * time.Millisecond
	// shrinkQueue: a queueing delay above this many allowances shrinks the
	// limit (after slow start): 2x the no-load RTT when the share applies.
	shrinkQueue = 4
	// minShrink bounds one RTT-driven shrink.
	minShrink = 0.5
	// backoff multiplies the limit on Overload or Failure.
	backoff = 0.7
	// window is how long one no-load RTT window lasts before it is
	// re-probed; windowSamples is the least number of samples it needs.
	window        = 30 * time.Second
	windowSamples = 32
	// maxPause caps the wait a Retry-After imposes.
	maxPause = 30 * time.Second
	// recentAnswers is how many of the last answers decide whether a
	// Retry-After pauses everyone: only when at least half were refused.
	recentAnswers = 32
)

// Outcome is how a request that held a permit ended.
type Outcome int

const (
	// Success: an answer that says nothing of congestion (2xx, 404, 401,
	// ...). Its RTT is a sample.
	Success Outcome = iota
	// Overload: the gateway refused for load (429, 503).
	Overload
	// Failure: a timeout, a connection error, 502 or 504.
	Failure
	// Dropped: the caller gave up (cancelled) or refused the answer
	// itself; no sample, no signal.
	Dropped
)

func (o Outcome) String() string {
	switch o {
	case Success:
		return "success"
	case Overload:
		return "overload"
	case Failure:
		return "failure"
	case Dropped:
		return "dropped"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Config configures a Limiter. Zero fields take the defaults.
type Config struct {
	// Max bounds the limit (--max-connections); default 128.
	Max int
	// Min is the floor the limit never goes below; default 4 (or Max if
	// smaller).
	Min int
	// Initial is the limit to start with; default 16, within [Min, Max].
	Initial int
	// Logger receives the limit's changes at debug level; nil = discard.
	Logger *slog.Logger
}

// Stats is a snapshot of a Limiter.
type Stats struct {
	InFlight    int // permits held now
	Limit       int // the current limit
	MaxInFlight int // the most permits ever held at once
	Waiting     int // callers waiting for a permit
	Acquired    int64
	Overloads   int64 // releases with Overload
	Failures    int64 // releases with Failure
	// NoLoadRTT is the windowed minimum RTT; RTT the lower quartile of the
	// last round. Zero before any sample.
	NoLoadRTT, RTT time.Duration
}

// clock is the time a Limiter runs on; tests replace it.
type clock interface {
	Now() time.Time
	AfterFunc(d time.Duration, f func())
}

type realClock struct{}

func (realClock) Now() time.Time                      { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) { time.AfterFunc(d, f) }

// Limiter is an adaptive limit on the requests in flight to one gateway.
// Its methods are safe for concurrent use. A nil *Limiter is no limit:
// Acquire returns a nil Permit, whose Release does nothing.
type Limiter struct {
	min, max int
	log      *slog.Logger
	clock    clock

	mu       sync.Mutex // guards everything below
	limit    float64
	inFlight int
	fg, bg   list.List // of *waiter, oldest first
	// epoch counts changes after which samples of permits granted before
	// no longer describe the limit in force: a cut, a doubling, a probe's
	// start and end. cutEpoch is the epoch a cut started.
	epoch, cutEpoch uint64
	slowStart       bool
	draining        bool            // shrinking until the queue is within the allowance
	round           []time.Duration // RTTs of this epoch's successes since the last decision
	roundPeak       int             // most permits held during the round
	// The no-load RTT is min(prevMin, curMin), 0 meaning none.
	prevMin, curMin time.Duration
	windowStart     time.Time
	windowCount     int
	probing         bool
	probeCap        int // the cap on grants while probing
	probeLeft       int // successes of probe permits still wanted
	pausedUntil     time.Time
	pauseArmed      bool
	// The last answers (up to recentAnswers), true for a refusal
	// (Overload or Failure), and how many of them were refused.
	recent        [recentAnswers]bool
	recentN       int
	recentNext    int
	recentRefused int
	lastRTT       time.Duration
	peak          int
	acquired      int64
	overloads     int64
	failures      int64
}

type waiter struct {
	ready  chan struct{} // closed when permit is set
	permit *Permit
	elem   *list.Element
}

// Permit is one slot of a Limiter, held by one request attempt.
type Permit struct {
	l        *Limiter
	start    time.Time
	answered time.Time // guarded by l.mu; see Answered
	epoch    uint64
	released bool // guarded by l.mu
}

// Answered marks when the answer's headers came. The RTT sample is then
// the time to them, not to the end of the body: reading the body is the
// client's work (its CPU, its memory), which must not read as a queue at
// the gateway. Transfer time still counts for the permit's slot.
func (p *Permit) Answered() {
	if p == nil {
		return
	}
	p.l.mu.Lock()
	if p.answered.IsZero() {
		p.answered = p.l.clock.Now()
	}
	p.l.mu.Unlock()
}

// New returns a Limiter for cfg, or an error for a configuration that
// cannot work (negative values, Min above Max, Max above MaxLimit).
func New(cfg Config) (*Limiter, error) {
	cfg, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	return newLimiter(cfg, realClock{}), nil
}

// resolve fills the defaults of c and checks it.
func (c Config) resolve() (Config, error) {
	cfg := c
	if cfg.Max < 0 || cfg.Min < 0 || cfg.Initial < 0 {
		return Config{}, fmt.Errorf("flow: negative max, min or initial (%d, %d, %d)", cfg.Max, cfg.Min, cfg.Initial)
	}
	if cfg.Max == 0 {
		cfg.Max = DefaultMax
	}
	if cfg.Max > MaxLimit {
		return Config{}, fmt.Errorf("flow: max %d is more than %d", cfg.Max, MaxLimit)
	}
	if cfg.Min == 0 {
		cfg.Min = min(DefaultMin, cfg.Max)
	}
	if cfg.Min > cfg.Max {
		return Config{}, fmt.Errorf("flow: min %d is more than max %d", cfg.Min, cfg.Max)
	}
	if cfg.Initial == 0 {
		cfg.Initial = min(max(DefaultInitial, cfg.Min), cfg.Max)
	}
	if cfg.Initial < cfg.Min || cfg.Initial > cfg.Max {
		return Config{}, fmt.Errorf("flow: initial %d is outside [%d, %d]", cfg.Initial, cfg.Min, cfg.Max)
	}
	return cfg, nil
}

func newLimiter(cfg Config, clk clock) *Limiter {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Limiter{min: cfg.Min, max: cfg.Max, log: log, clock: clk,
		limit: float64(cfg.Initial), slowStart: true}
	// The first requests are a probe: they measure the no-load RTT.
	l.startProbeLocked(clk.Now())
	return l
}

// Acquire waits for a permit. Foreground callers are served before every
// background one (readahead: nobody waits for it yet), each class in
// order. A cancelled ctx returns its error (its cause, if it has one) and
// holds no slot. The caller must Release the permit.
func (l *Limiter) Acquire(ctx context.Context, background bool) (*Permit, error) {
	if ctx.Err() != nil {
		return nil, context.Cause(ctx)
	}
	if l == nil {
		return nil, nil
	}
	l.mu.Lock()
	if l.canGrantLocked(background) {
		p := l.grantLocked()
		l.mu.Unlock()
		return p, nil
	}
	w := &waiter{ready: make(chan struct{})}
	q := &l.fg
	if background {
		q = &l.bg
	}
	w.elem = q.PushBack(w)
	l.armPauseLocked()
	l.mu.Unlock()

	select {
	case <-w.ready:
		return w.permit, nil
	case <-ctx.Done():
	}
	l.mu.Lock()
	p := w.permit
	if p == nil {
		q.Remove(w.elem)
	}
	l.mu.Unlock()
	if p != nil { // granted as ctx ended
		p.Release(Dropped, 0)
	}
	return nil, context.Cause(ctx)
}

// Release returns the permit with the outcome of its request. retryAfter,
// the gateway's Retry-After (0: none), holds back new grants with an
// Overload or Failure. A second Release, or one of a nil Permit, does
// nothing.
func (p *Permit) Release(o Outcome, retryAfter time.Duration) {
	if p == nil {
		return
	}
	l := p.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if p.released {
		return
	}
	p.released = true
	l.inFlight--
	now := l.clock.Now()
	switch o {
	case Success:
		end := now
		if !p.answered.IsZero() {
			end = p.answered
		}
		l.sampleLocked(p, end.Sub(p.start), now)
		l.answerLocked(false)
	case Overload, Failure:
		if o == Overload {
			l.overloads++
		} else {
			l.failures++
		}
		l.congestionLocked(p, o)
		l.answerLocked(true)
		// A Retry-After pauses everyone only when the gateway refuses
		// most requests: among answers that mostly succeed, it delays
		// only the retry of its own request (the caller's), or a few
		// refusals would stall every reader for seconds each.
		if retryAfter > 0 && 2*l.recentRefused >= l.recentN {
			l.pauseLocked(now, retryAfter)
		}
	}
	l.dispatchLocked()
}

// Limit is the current limit: how many requests may be in flight.
// Readahead takes it as its depth. 0 for a nil Limiter.
func (l *Limiter) Limit() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return int(l.limit)
}

// Max is Config.Max: the most the limit can reach. 0 for a nil Limiter.
func (l *Limiter) Max() int {
	if l == nil {
		return 0
	}
	return l.max
}

// Stats returns a snapshot; zero for a nil Limiter.
func (l *Limiter) Stats() Stats {
	if l == nil {
		return Stats{}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return Stats{InFlight: l.inFlight, Limit: int(l.limit), MaxInFlight: l.peak,
		Waiting: l.fg.Len() + l.bg.Len(), Acquired: l.acquired, Overloads: l.overloads,
		Failures: l.failures, NoLoadRTT: l.noLoadLocked(), RTT: l.lastRTT}
}

// capLocked is how many permits may be held now.
func (l *Limiter) capLocked() int {
	if l.probing {
		return l.probeCap
	}
	return int(l.limit)
}

func (l *Limiter) pausedLocked() bool { return l.clock.Now().Before(l.pausedUntil) }

// canGrantLocked reports whether a new caller may take a slot at once: a
// free slot, no pause, and nobody before it in line.
func (l *Limiter) canGrantLocked(background bool) bool {
	if l.inFlight >= l.capLocked() || l.fg.Len() > 0 || (background && l.bg.Len() > 0) {
		return false
	}
	return !l.pausedLocked()
}

func (l *Limiter) grantLocked() *Permit {
	l.inFlight++
	l.acquired++
	l.peak = max(l.peak, l.inFlight)
	l.roundPeak = max(l.roundPeak, l.inFlight)
	return &Permit{l: l, start: l.clock.Now(), epoch: l.epoch}
}

// dispatchLocked grants free slots to waiters, foreground first.
func (l *Limiter) dispatchLocked() {
	for l.inFlight < l.capLocked() && l.fg.Len()+l.bg.Len() > 0 {
		if l.pausedLocked() {
			l.armPauseLocked()
			return
		}
		q := &l.fg
		if q.Len() == 0 {
			q = &l.bg
		}
		w := q.Remove(q.Front()).(*waiter)
		w.permit = l.grantLocked()
		close(w.ready)
	}
}

// answerLocked records an answer among the recent ones.
func (l *Limiter) answerLocked(refused bool) {
	if l.recentN == recentAnswers {
		if l.recent[l.recentNext] {
			l.recentRefused--
		}
	} else {
		l.recentN++
	}
	l.recent[l.recentNext] = refused
	if refused {
		l.recentRefused++
	}
	l.recentNext = (l.recentNext + 1) % recentAnswers
}

// pauseLocked holds back new grants for d (at most maxPause) from now.
func (l *Limiter) pauseLocked(now time.Time, d time.Duration) {
	until := now.Add(min(d, maxPause))
	if until.After(l.pausedUntil) {
		l.pausedUntil = until
		l.log.Debug("flow paused by Retry-After", "for", min(d, maxPause))
	}
}

// armPauseLocked makes sure waiters held back by a pause are served when
// it ends.
func (l *Limiter) armPauseLocked() {
	if l.pauseArmed || !l.pausedLocked() {
		return
	}
	l.pauseArmed = true
	l.clock.AfterFunc(l.pausedUntil.Sub(l.clock.Now()), func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.pauseArmed = false
		l.dispatchLocked() // re-arms if the pause was extended
	})
}

func (l *Limiter) noLoadLocked() time.Duration {
	switch {
	case l.prevMin == 0:
		return l.curMin
	case l.curMin == 0:
		return l.prevMin
	}
	return min(l.prevMin, l.curMin)
}

// startProbeLocked opens a new no-load RTT window with a probe: at most
// half the limit in flight until that many probe permits succeeded.
func (l *Limiter) startProbeLocked(now time.Time) {
	l.prevMin, l.curMin = l.curMin, 0
	l.windowStart, l.windowCount = now, 0
	l.probing = true
	l.probeCap = max(l.min, int(l.limit)/2)
	l.probeLeft = l.probeCap
	l.newEpochLocked()
}

func (l *Limiter) newEpochLocked() {
	l.epoch++
	l.round = l.round[:0]
	l.roundPeak = l.inFlight
}

// sampleLocked takes the RTT of a success.
func (l *Limiter) sampleLocked(p *Permit, rtt time.Duration, now time.Time) {
	rtt = max(rtt, time.Nanosecond)
	if !l.probing && now.Sub(l.windowStart) >= window && l.windowCount >= windowSamples {
		l.startProbeLocked(now)
	}
	if l.curMin == 0 || rtt < l.curMin {
		l.curMin = rtt
	}
	l.windowCount++
	if p.epoch != l.epoch {
		return // granted under another limit, or before the probe
	}
	if l.probing {
		if l.probeLeft--; l.probeLeft <= 0 {
			l.probing = false
			l.newEpochLocked()
		}
		return
	}
	l.round = append(l.round, rtt)
	if len(l.round) >= max(l.min, int(l.limit)) {
		l.decideLocked()
	}
}

// decideLocked ends a round: grow, hold or shrink by its lower quartile
// RTT. A queue at the gateway delays every request; noise (a slow
// transfer, a descheduled client) only some: the quartile sees the first,
// not the second.
func (l *Limiter) decideLocked() {
	slices.Sort(l.round)
	rtt := l.round[len(l.round)/4]
	l.lastRTT = rtt
	base := l.noLoadLocked()
	if base <= 0 {
		base = rtt
	}
	allowance := max(time.Duration(float64(base)*queueShare), minQueue)
	queue := rtt - base
	used := 2*l.roundPeak >= int(l.limit)
	old := int(l.limit)
	switch {
	case queue > shrinkQueue*allowance || (queue > allowance && (l.slowStart || l.draining)):
		// Where the queue would be back at the allowance, if RTT grows in
		// proportion to the requests in flight past the gateway's capacity.
		// A round can see less than the whole queue (those sent first
		// found it shorter) and one shrink is at most a halving: shrinking
		// goes on, round after round, until the queue is within the
		// allowance, rather than stopping in the hold band.
		l.setLimitLocked(l.limit * max(minShrink, float64(base+allowance)/float64(rtt)))
		l.slowStart = false
		l.draining = true
		l.epoch++
	case queue <= allowance:
		l.draining = false
		switch {
		case !used:
		case l.slowStart:
			l.setLimitLocked(2 * l.limit)
			l.epoch++
		default:
			l.setLimitLocked(l.limit + 1)
		}
	}
	l.round = l.round[:0]
	l.roundPeak = l.inFlight
	if n := int(l.limit); n != old {
		l.log.Debug("flow limit", "from", old, "to", n, "rtt", rtt, "no_load_rtt", base)
	}
}

// congestionLocked cuts the limit for an Overload or Failure, unless its
// permit was granted before the last cut: that cut answered it already.
func (l *Limiter) congestionLocked(p *Permit, o Outcome) {
	if p.epoch < l.cutEpoch {
		return
	}
	old := int(l.limit)
	l.setLimitLocked(l.limit * backoff)
	l.slowStart = false
	l.probing = false
	l.newEpochLocked()
	l.cutEpoch = l.epoch
	l.log.Debug("flow limit", "from", old, "to", int(l.limit), "cause", o.String())
}

func (l *Limiter) setLimitLocked(v float64) {
	l.limit = min(max(v, float64(l.min)), float64(l.max))
}
