package flow

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const ms = time.Millisecond

// fakeClock moves only when told; timers due run inside Advance.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []fakeTimer
}

type fakeTimer struct {
	at time.Time
	f  func()
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.timers = append(c.timers, fakeTimer{at: c.now.Add(d), f: f})
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []func()
	kept := c.timers[:0]
	for _, t := range c.timers {
		if t.at.After(c.now) {
			kept = append(kept, t)
		} else {
			due = append(due, t.f)
		}
	}
	c.timers = kept
	c.mu.Unlock()
	for _, f := range due {
		f()
	}
}

// testLimiter is a Limiter of cfg (defaults filled) on a fake clock.
func testLimiter(t *testing.T, cfg Config) (*Limiter, *fakeClock) {
	t.Helper()
	cfg, err := cfg.resolve()
	require.NoError(t, err)
	clk := newFakeClock()
	return newLimiter(cfg, clk), clk
}

// take grants n permits at once; each must be free now.
func take(t *testing.T, l *Limiter, n int) []*Permit {
	t.Helper()
	ps := make([]*Permit, n)
	for i := range ps {
		l.mu.Lock()
		ok := l.canGrantLocked(false)
		if ok {
			ps[i] = l.grantLocked()
		}
		l.mu.Unlock()
		require.True(t, ok, "permit %d of %d not free (limit %d, in flight %d)", i+1, n, l.Limit(), l.Stats().InFlight)
	}
	return ps
}

// step holds n permits together for rtt, then releases them all with
// outcome, times times (default once).
type step struct {
	n       int
	rtt     time.Duration
	outcome Outcome
	times   int
	want    int // Limit after the step; 0: not checked
}

func run(t *testing.T, l *Limiter, clk *fakeClock, steps []step) {
	t.Helper()
	for i, s := range steps {
		for range max(s.times, 1) {
			ps := take(t, l, s.n)
			clk.Advance(s.rtt)
			for _, p := range ps {
				p.Release(s.outcome, 0)
			}
		}
		if s.want != 0 {
			require.Equal(t, s.want, l.Limit(), "after step %d %+v", i, s)
		}
	}
}

// probe is the first requests' probe at half the initial 16, at the
// no-load RTT of 10 ms.
var probe = step{n: 8, rtt: 10 * ms, want: 16}

func TestControlLaw(t *testing.T) {
	tests := []struct {
		name  string
		steps []step
		base  time.Duration // the no-load RTT; default 10 ms
	}{
		{"slow start doubles per used round, up to Max", []step{
			probe,
			{n: 16, rtt: 10 * ms, want: 32},
			{n: 32, rtt: 11 * ms, want: 64},
			{n: 64, rtt: 12 * ms, want: 128},
			{n: 128, rtt: 10 * ms, want: 128},
		}, 0},
		{"slow start overshoot shrinks in proportion to 1.25x, then +1 per round", []step{
			probe,
			{n: 16, rtt: 10 * ms, want: 32},
			{n: 32, rtt: 15 * ms, want: 26}, // 32 x 1.25/1.5
			{n: 26, rtt: 10 * ms, want: 27},
			{n: 27, rtt: 12 * ms, want: 28},
			{n: 28, rtt: 12500 * time.Microsecond, want: 29}, // exactly 1.25x still grows
		}, 0},
		{"an unused limit does not grow", []step{
			probe,
			{n: 7, rtt: 10 * ms, times: 10, want: 16}, // 7 < 16/2
			{n: 8, rtt: 10 * ms, times: 2, want: 32},
		}, 0},
		{"between 1.25x and 2x the limit holds", []step{
			probe,
			{n: 16, rtt: 10 * ms, want: 32},
			{n: 32, rtt: 15 * ms, want: 26},
			{n: 26, rtt: 10 * ms, want: 27},
			{n: 27, rtt: 15 * ms, times: 5, want: 27},
			{n: 27, rtt: 20 * ms, times: 5, want: 27},
		}, 0},
		{"a shrink goes on until the queue is within the allowance", []step{
			probe,
			{n: 16, rtt: 10 * ms, want: 32},
			{n: 32, rtt: 15 * ms, want: 26}, // 26.67
			{n: 26, rtt: 15 * ms, want: 22}, // 22.2
			{n: 22, rtt: 14 * ms, want: 19}, // 19.8
			{n: 19, rtt: 12 * ms, want: 20},
			{n: 20, rtt: 15 * ms, times: 3, want: 20},
		}, 0},
		{"above 2x it shrinks in proportion, at most halving, not below Min", []step{
			probe,
			{n: 16, rtt: 10 * ms, want: 32},
			{n: 32, rtt: 15 * ms, want: 26}, // 26.67
			{n: 26, rtt: 22 * ms, want: 15}, // 26.67 x 1.25/2.2 = 15.15
			{n: 15, rtt: 50 * ms, want: 7},  // halved
			{n: 7, rtt: 50 * ms, want: 4},   // Min
			{n: 4, rtt: 50 * ms, times: 3, want: 4},
			{n: 4, rtt: 10 * ms, want: 5},
		}, 0},
		{"the lower quartile decides, not the slowest", []step{
			probe,
			{n: 16, rtt: 10 * ms, want: 32},
			{n: 32, rtt: 15 * ms, want: 26},
			{n: 19, rtt: 90 * ms},
			{n: 7, rtt: 10 * ms, want: 27}, // 7 of 26 at 10 ms
			{n: 21, rtt: 25 * ms},
			{n: 6, rtt: 10 * ms, want: 13}, // 6 of 27 at 10 ms: 27.67 x 12.5/25
		}, 0},
		{"under 2 ms of queueing is noise", []step{
			{n: 8, rtt: ms, want: 16},
			{n: 16, rtt: 3 * ms, want: 32},
			{n: 32, rtt: 4 * ms, want: 24}, // x 3/4
			{n: 24, rtt: 3 * ms, want: 25},
			{n: 25, rtt: 9 * ms, want: 25},
			{n: 25, rtt: 11 * ms, want: 12}, // halved
		}, ms},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, clk := testLimiter(t, Config{})
			run(t, l, clk, tt.steps)
			st := l.Stats()
			assert.Zero(t, st.InFlight)
			if tt.base == 0 {
				tt.base = 10 * ms
			}
			assert.Equal(t, tt.base, st.NoLoadRTT)
		})
	}
}

func TestCongestionCuts(t *testing.T) {
	tests := []struct {
		outcome Outcome
		want    int
	}{
		{Overload, 22}, // 32 x 0.7
		{Failure, 22},
		{Dropped, 32},
		{Success, 32},
	}
	for _, tt := range tests {
		t.Run(tt.outcome.String(), func(t *testing.T) {
			l, clk := testLimiter(t, Config{})
			run(t, l, clk, []step{probe, {n: 16, rtt: 10 * ms, want: 32}})
			ps := take(t, l, 2)
			clk.Advance(10 * ms)
			ps[0].Release(tt.outcome, 0)
			assert.Equal(t, tt.want, l.Limit())
			ps[1].Release(Success, 0)
		})
	}
}

func TestCongestionCutsOncePerBatch(t *testing.T) {
	l, clk := testLimiter(t, Config{})
	run(t, l, clk, []step{probe, {n: 16, rtt: 10 * ms, want: 32}})
	batch := take(t, l, 20)
	clk.Advance(5 * ms)
	// A burst of 429s to requests sent at one limit: one cut.
	for _, p := range batch[:10] {
		p.Release(Overload, 0)
	}
	assert.Equal(t, 22, l.Limit())
	// A request sent after the cut is answered 429 too: the new limit is
	// too high as well.
	next := take(t, l, 1)
	batch[10].Release(Failure, 0)
	assert.Equal(t, 22, l.Limit(), "a failure of a request granted before the cut")
	next[0].Release(Overload, 0)
	assert.Equal(t, 15, l.Limit()) // 22.4 x 0.7
	for _, p := range batch[11:] {
		p.Release(Overload, 0)
	}
	assert.Equal(t, 15, l.Limit())
	// Down to Min, never below.
	for range 10 {
		take(t, l, 1)[0].Release(Failure, 0)
	}
	st := l.Stats()
	assert.Equal(t, 4, st.Limit)
	assert.Equal(t, int64(10+1+9), st.Overloads)
	assert.Equal(t, int64(1+10), st.Failures)
	assert.Zero(t, st.InFlight)
	// After congestion no more slow start: +1 per used round.
	run(t, l, clk, []step{{n: 4, rtt: 10 * ms, want: 5}, {n: 5, rtt: 10 * ms, want: 6}})
}

func TestProbes(t *testing.T) {
	t.Run("the first requests probe at half the initial limit", func(t *testing.T) {
		l, clk := testLimiter(t, Config{})
		ps := take(t, l, 8)
		assert.False(t, grantable(l), "9th permit during the first probe")
		clk.Advance(10 * ms)
		for _, p := range ps {
			p.Release(Success, 0)
		}
		take(t, l, 16)
		assert.False(t, grantable(l))
	})
	t.Run("each window begins with a probe at half the limit", func(t *testing.T) {
		l, clk := testLimiter(t, Config{})
		run(t, l, clk, []step{probe, {n: 16, rtt: 10 * ms, want: 32}, {n: 32, rtt: 15 * ms, want: 26}})
		clk.Advance(window)
		ps := take(t, l, 26)
		clk.Advance(10 * ms)
		for _, p := range ps {
			p.Release(Success, 0) // the first opens the probe
		}
		probePermits := take(t, l, 13)
		assert.False(t, grantable(l), "more than half the limit during the probe")
		clk.Advance(10 * ms)
		for _, p := range probePermits {
			p.Release(Success, 0)
		}
		take(t, l, 26)
		assert.Equal(t, 26, l.Limit(), "a probe does not change the limit")
	})
}

// TestReprobedMinimum: the no-load RTT is what the probes see. A queue that
// the limit keeps standing (every round at 15 ms, the probe at 10 ms) does
// not raise it, so the limit does not ratchet up; a gateway that really got
// slower (the probes see 15 ms too) raises it within two windows.
func TestReprobedMinimum(t *testing.T) {
	tests := []struct {
		name      string
		probeRTT  time.Duration
		wantMin   time.Duration
		wantLimit int
	}{
		{"standing queue", 10 * ms, 10 * ms, 27},
		{"slower gateway", 15 * ms, 15 * ms, 28},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, clk := testLimiter(t, Config{})
			run(t, l, clk, []step{probe, {n: 16, rtt: 10 * ms, want: 32}, {n: 32, rtt: 15 * ms, want: 26},
				{n: 26, rtt: 10 * ms, want: 27}})
			for range 2 {
				run(t, l, clk, []step{{n: 27, rtt: 15 * ms, times: 3, want: 27}})
				clk.Advance(window)
				run(t, l, clk, []step{
					{n: 1, rtt: 15 * ms},      // opens the window's probe
					{n: 13, rtt: tt.probeRTT}, // the probe
				})
			}
			assert.Equal(t, tt.wantMin, l.Stats().NoLoadRTT)
			run(t, l, clk, []step{{n: 27, rtt: 15 * ms, want: tt.wantLimit}})
		})
	}
}

func grantable(l *Limiter) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.canGrantLocked(false)
}

// acquireAsync calls Acquire in a goroutine; the result arrives on the
// channel.
type result struct {
	p   *Permit
	err error
}

func acquireAsync(ctx context.Context, l *Limiter, background bool) <-chan result {
	ch := make(chan result, 1)
	go func() {
		p, err := l.Acquire(ctx, background)
		ch <- result{p, err}
	}()
	return ch
}

// recv is the result on ch, or a failure after 5 s.
func recv(t *testing.T, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("Acquire still waiting")
		return result{}
	}
}

func waitWaiting(t *testing.T, l *Limiter, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return l.Stats().Waiting == n }, 2*time.Second, time.Millisecond)
}

func TestForegroundBeforeBackground(t *testing.T) {
	l, _ := testLimiter(t, Config{})
	held := take(t, l, 8) // the first probe's cap
	ctx := t.Context()
	bg1 := acquireAsync(ctx, l, true)
	waitWaiting(t, l, 1)
	fg1 := acquireAsync(ctx, l, false)
	waitWaiting(t, l, 2)
	fg2 := acquireAsync(ctx, l, false)
	waitWaiting(t, l, 3)

	order := []<-chan result{fg1, fg2, bg1}
	for i, ch := range order {
		held[i].Release(Dropped, 0)
		r := recv(t, ch)
		require.NoError(t, r.err)
		require.NotNil(t, r.p)
		for _, other := range order[i+1:] {
			select {
			case <-other:
				t.Fatalf("waiter %d served out of order", i+1)
			default:
			}
		}
		defer r.p.Release(Success, 0)
	}
	assert.Equal(t, 8, l.Stats().InFlight)
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func TestCancelledWaiterTakesNoSlot(t *testing.T) {
	l, _ := testLimiter(t, Config{})
	held := take(t, l, 8)
	cause := errors.New("reader went away")
	ctx, cancel := context.WithCancelCause(context.Background())
	ch := acquireAsync(ctx, l, false)
	waitWaiting(t, l, 1)
	cancel(cause)
	r := recv(t, ch)
	assert.Nil(t, r.p)
	assert.ErrorIs(t, r.err, cause)
	st := l.Stats()
	assert.Zero(t, st.Waiting)
	assert.Equal(t, 8, st.InFlight)
	held[0].Release(Dropped, 0)
	assert.Equal(t, 7, l.Stats().InFlight, "the freed slot went to nobody")
	assert.True(t, grantable(l))

	// Already cancelled: no wait, no slot, even with one free.
	p, err := l.Acquire(canceled(), false)
	assert.Nil(t, p)
	assert.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, 7, l.Stats().InFlight)
	for _, p := range held[1:] {
		p.Release(Dropped, 0)
	}
	assert.Zero(t, l.Stats().InFlight)
}

func TestReleaseTwiceCountsOnce(t *testing.T) {
	l, _ := testLimiter(t, Config{})
	ps := take(t, l, 2)
	ps[0].Release(Overload, 0)
	ps[0].Release(Overload, 0)
	ps[0].Release(Success, 0)
	st := l.Stats()
	assert.Equal(t, 1, st.InFlight)
	assert.Equal(t, int64(1), st.Overloads)
	assert.Equal(t, 11, st.Limit) // 16 x 0.7, once
	ps[1].Release(Dropped, 0)
	assert.Zero(t, l.Stats().InFlight)
}

func TestRetryAfterPausesEveryone(t *testing.T) {
	tests := []struct {
		name       string
		retryAfter time.Duration
		wantPause  time.Duration
	}{
		{"as asked", 2 * time.Second, 2 * time.Second},
		{"capped at 30s", 5 * time.Minute, maxPause},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, clk := testLimiter(t, Config{})
			ps := take(t, l, 2)
			ps[0].Release(Overload, tt.retryAfter)
			assert.False(t, grantable(l), "a free slot during the pause")
			fg := acquireAsync(t.Context(), l, false)
			bg := acquireAsync(t.Context(), l, true)
			waitWaiting(t, l, 2)
			clk.Advance(tt.wantPause - ms)
			ps[1].Release(Success, 0) // frees a slot, still paused
			assert.Equal(t, 2, l.Stats().Waiting, "served before the pause ended")
			clk.Advance(ms)
			for _, ch := range []<-chan result{fg, bg} {
				r := recv(t, ch)
				require.NoError(t, r.err)
				r.p.Release(Success, 0)
			}
			assert.True(t, grantable(l))
		})
	}
}

func TestNilLimiterIsUnlimited(t *testing.T) {
	var l *Limiter
	p, err := l.Acquire(t.Context(), true)
	require.NoError(t, err)
	assert.Nil(t, p)
	p.Release(Overload, time.Second)
	assert.Zero(t, l.Limit())
	assert.Zero(t, l.Max())
	assert.Equal(t, Stats{}, l.Stats())
	_, err = l.Acquire(canceled(), false)
	assert.ErrorIs(t, err, context.Canceled)
}

func TestConfig(t *testing.T) {
	tests := []struct {
		in      Config
		want    Config
		wantErr string
	}{
		{in: Config{}, want: Config{Max: 128, Min: 4, Initial: 16}},
		{in: Config{Max: 1024}, want: Config{Max: 1024, Min: 4, Initial: 16}},
		{in: Config{Max: 8}, want: Config{Max: 8, Min: 4, Initial: 8}},
		{in: Config{Max: 2}, want: Config{Max: 2, Min: 2, Initial: 2}},
		{in: Config{Min: 20}, want: Config{Max: 128, Min: 20, Initial: 20}},
		{in: Config{Max: -1}, wantErr: "negative"},
		{in: Config{Min: 10, Max: 5}, wantErr: "min 10 is more than max 5"},
		{in: Config{Initial: 200}, wantErr: "initial 200 is outside [4, 128]"},
		{in: Config{Max: MaxLimit + 1}, wantErr: "max 65537 is more than 65536"},
	}
	for _, tt := range tests {
		l, err := New(tt.in)
		if tt.wantErr != "" {
			assert.ErrorContains(t, err, tt.wantErr, "%+v", tt.in)
			assert.Nil(t, l)
			continue
		}
		require.NoError(t, err, "%+v", tt.in)
		assert.Equal(t, tt.want.Max, l.Max())
		assert.Equal(t, tt.want.Min, l.min)
		assert.Equal(t, tt.want.Initial, l.Limit())
	}
}

// Among answers that mostly succeed, a Retry-After stalls nobody else: its
// own request waits (the caller's retry), the limit is cut once.
func TestRetryAfterAmongGoodAnswersPausesNobody(t *testing.T) {
	l, _ := testLimiter(t, Config{})
	ps := take(t, l, 4)
	for range 10 {
		p := take(t, l, 1)[0]
		p.Release(Success, 0)
	}
	before := l.Limit()
	ps[0].Release(Overload, 2*time.Second)
	assert.True(t, grantable(l), "no pause: 1 refusal in 11 answers")
	assert.Less(t, l.Limit(), before, "cut")
	// Most answers refused: the gateway means everyone.
	for _, p := range ps[1:] {
		p.Release(Overload, 2*time.Second)
	}
	refused := 4
	for ; grantable(l) && refused < 30; refused++ {
		take(t, l, 1)[0].Release(Overload, 2*time.Second)
	}
	assert.Equal(t, 10, refused, "paused once half of the 20 answers were refused")
	assert.False(t, grantable(l))
}
