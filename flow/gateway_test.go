package flow

import (
	"context"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// capacityGateway serves capacity requests at once, each for service
// (+-10%, so that requests do not move in lockstep); more wait in line
// (first come, first served), and with queue >= 0 those beyond
// capacity+queue are answered 429 at once, with retryAfter.
type capacityGateway struct {
	capacity   int
	service    time.Duration
	queue      int
	retryAfter time.Duration

	workers chan struct{}
	mu      sync.Mutex
	rand    *rand.Rand
	inside  atomic.Int64 // requests at the gateway: served or waiting
	served  atomic.Int64
	tooMany atomic.Int64
}

func newCapacityGateway(capacity, queue int, service, retryAfter time.Duration) *capacityGateway {
	return &capacityGateway{capacity: capacity, queue: queue, service: service, retryAfter: retryAfter,
		workers: make(chan struct{}, capacity), rand: rand.New(rand.NewPCG(1, 2))}
}

func (g *capacityGateway) do() (Outcome, time.Duration) {
	n := g.inside.Add(1)
	defer g.inside.Add(-1)
	if g.queue >= 0 && n > int64(g.capacity+g.queue) {
		g.tooMany.Add(1)
		return Overload, g.retryAfter
	}
	g.mu.Lock()
	d := g.service * time.Duration(90+g.rand.IntN(21)) / 100
	g.mu.Unlock()
	g.workers <- struct{}{}
	time.Sleep(d)
	<-g.workers
	g.served.Add(1)
	return Success, 0
}

type sample struct {
	at     time.Duration
	limit  int
	served int64
}

// drive runs 200 clients through l against g for d, a quarter of them
// readahead, and samples the limit every 10 ms. It runs in a synctest
// bubble: time is virtual, so RTTs are exactly what g makes them, without
// the scheduling noise of a busy test machine, and minutes take
// milliseconds.
func drive(t *testing.T, l *Limiter, g *capacityGateway, d time.Duration) []sample {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			for {
				p, err := l.Acquire(ctx, i%4 == 0)
				if err != nil {
					return
				}
				p.Release(g.do())
			}
		})
	}
	var trace []sample
	start := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
			trace = append(trace, sample{at: time.Since(start), limit: l.Limit(), served: g.served.Load()})
		}
	}
	wg.Wait()
	st := l.Stats()
	require.Zero(t, st.InFlight, "permits left held")
	require.Zero(t, st.Waiting)
	require.LessOrEqual(t, st.MaxInFlight, l.Max())
	require.Greater(t, len(trace), 20)
	return trace
}

// lastHalf sums up the second half of a trace: the median limit, the
// largest, and the requests served per second.
func lastHalf(trace []sample) (median, largest int, rate float64) {
	half := trace[len(trace)/2:]
	limits := make([]int, len(half))
	for i, s := range half {
		limits[i] = s.limit
		largest = max(largest, s.limit)
	}
	sort.Ints(limits)
	first, last := half[0], half[len(half)-1]
	rate = float64(last.served-first.served) / (last.at - first.at).Seconds()
	return limits[len(limits)/2], largest, rate
}

func TestConvergesOnGateway(t *testing.T) {
	const (
		capacity = 32
		service  = 50 * time.Millisecond
		// Long enough for two no-load RTT windows, each with its probe.
		run  = 65 * time.Second
		full = capacity / (float64(service) / float64(time.Second)) // requests/s at capacity
	)
	t.Run("queueing gateway", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			l, err := New(Config{})
			require.NoError(t, err)
			g := newCapacityGateway(capacity, -1, service, 0)
			trace := drive(t, l, g, run)
			med, largest, rate := lastHalf(trace)
			t.Logf("limit median %d, max %d; %.0f req/s of %.0f; %+v", med, largest, rate, full, l.Stats())
			assert.GreaterOrEqual(t, med, capacity/2)
			assert.LessOrEqual(t, med, capacity*3/2)
			assert.Greater(t, rate, 0.8*full, "the gateway is kept busy")
		})
	})
	t.Run("gateway answering 429 past its queue", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			l, err := New(Config{})
			require.NoError(t, err)
			g := newCapacityGateway(capacity, capacity/8, service, service)
			trace := drive(t, l, g, run)
			med, largest, rate := lastHalf(trace)
			st := l.Stats()
			t.Logf("limit median %d, max %d; %.0f req/s of %.0f; 429s %d of %d; %+v",
				med, largest, rate, full, g.tooMany.Load(), st.Acquired, st)
			assert.GreaterOrEqual(t, med, capacity/2)
			assert.LessOrEqual(t, med, capacity*3/2)
			assert.LessOrEqual(t, largest, capacity*3/2, "back past the 429 edge")
			assert.Positive(t, g.tooMany.Load(), "the limit never reached the gateway's edge")
			assert.Equal(t, g.tooMany.Load(), st.Overloads)
			assert.Less(t, float64(g.tooMany.Load()), 0.05*float64(st.Acquired), "a 429 storm")
			assert.Greater(t, rate, 0.6*full)
		})
	})
	t.Run("gateway with room to spare", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			l, err := New(Config{Max: 64})
			require.NoError(t, err)
			g := newCapacityGateway(1000, -1, service, 0)
			trace := drive(t, l, g, time.Second)
			t.Logf("limit %d; %+v", trace[len(trace)-1].limit, l.Stats())
			assert.Equal(t, 64, trace[len(trace)-1].limit)
			assert.Equal(t, 64, l.Stats().MaxInFlight)
		})
	})
}
