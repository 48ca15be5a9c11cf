package cache

import (
	"context"
	"fmt"
	"io/fs"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// gatedHead is gatedFetch for sizes.
type gatedHead struct {
	calls   atomic.Int64
	started chan struct{}
	gate    chan struct{}
	size    int64
	err     error
}

func newGatedHead(size int64, err error) *gatedHead {
	return &gatedHead{started: make(chan struct{}, 100), gate: make(chan struct{}), size: size, err: err}
}

func (g *gatedHead) head(ctx context.Context) (int64, error) {
	g.calls.Add(1)
	g.started <- struct{}{}
	select {
	case <-g.gate:
		return g.size, g.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (g *gatedHead) waitStarted(t *testing.T) {
	t.Helper()
	select {
	case <-g.started:
	case <-time.After(waitLimit):
		t.Fatal("head did not start")
	}
}

func mustNotHead(t *testing.T) HeadFunc {
	return func(context.Context) (int64, error) {
		t.Error("head called when it should not be")
		return 0, fmt.Errorf("unexpected head")
	}
}

// occupyWorkers starts n prefetches that hold every worker of c until the returned gate is
// closed.
func occupyWorkers(t *testing.T, c *Cache, n int) *gatedFetch {
	t.Helper()
	busy := newGated([]byte("busy"), nil)
	for i := range n {
		c.Prefetch(fmt.Sprintf("busy%d", i), busy.fetch)
	}
	for range n {
		waitStarted(t, busy)
	}
	return busy
}

func flightOf(c *Cache, key string) *flight {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flights[key]
}

func TestPrefetchSize(t *testing.T) {
	const key = "ds/u/0.0"
	tests := []struct {
		name string
		// setup prepares c (one worker) and returns what the test must release at the end.
		setup       func(t *testing.T, c *Cache) (release func())
		wantQueued  bool      // the request is taken: a size flight of key exists at once
		wantState   StatState // once the cache is idle again
		wantSize    int64
		wantDropped int64
	}{
		{
			name:       "unknown key: sent in the background and recorded",
			setup:      func(*testing.T, *Cache) func() { return func() {} },
			wantQueued: true, wantState: StatSized, wantSize: 42,
		},
		{
			name: "present key: nothing",
			setup: func(t *testing.T, c *Cache) func() {
				c.Put(key, []byte("abc"))
				return func() {}
			},
			wantState: StatPresent, wantSize: 3,
		},
		{
			name: "sized key: nothing",
			setup: func(t *testing.T, c *Cache) func() {
				c.SetSize(key, 9)
				return func() {}
			},
			wantState: StatSized, wantSize: 9,
		},
		{
			name: "missing key: nothing",
			setup: func(t *testing.T, c *Cache) func() {
				c.SetMissing(key)
				return func() {}
			},
			wantState: StatMissing,
		},
		{
			name: "body fetch running: nothing",
			setup: func(t *testing.T, c *Cache) func() {
				g := newGated([]byte("body"), nil)
				c.Prefetch(key, g.fetch)
				waitStarted(t, g)
				return func() { close(g.gate) }
			},
			wantState: StatPresent, wantSize: 4,
		},
		{
			name: "body fetch queued: nothing",
			setup: func(t *testing.T, c *Cache) func() {
				busy := occupyWorkers(t, c, 1)
				var calls atomic.Int64
				c.Prefetch(key, constFetch(&calls, []byte("body"), nil))
				return func() { close(busy.gate) }
			},
			wantState: StatPresent, wantSize: 4,
		},
		{
			name: "queue full: dropped",
			setup: func(t *testing.T, c *Cache) func() {
				busy := occupyWorkers(t, c, 1)
				for i := range prefetchQueuePerWorker {
					c.Prefetch(fmt.Sprintf("queued%d", i), busy.fetch)
				}
				return func() { close(busy.gate) }
			},
			wantState: StatUnknown, wantDropped: 1,
		},
		{
			name: "closed: nothing",
			setup: func(t *testing.T, c *Cache) func() {
				c.Close()
				return func() {}
			},
			wantState: StatUnknown,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache(t, Options{PrefetchWorkers: 1})
			release := tt.setup(t, c)
			before := flightOf(c, key)
			head := newGatedHead(42, nil)

			c.PrefetchSize(key, head.head)
			// PrefetchSize decides before it returns: a request it took shows as a size flight.
			f := flightOf(c, key)
			if tt.wantQueued {
				require.NotNil(t, f)
				assert.Equal(t, kindSize, f.kind)
			} else {
				assert.Same(t, before, f, "the flight of the key is left as it was")
			}
			assert.Equal(t, tt.wantDropped, c.Stats().PrefetchDropped)

			close(head.gate)
			release()
			require.Eventually(t, func() bool {
				st := c.Stats()
				return st.Workers == 0 && st.Foreground == 0
			}, waitLimit, time.Millisecond, "the cache should become idle")
			size, state := c.Stat(key)
			assert.Equal(t, tt.wantState, state)
			assert.Equal(t, tt.wantSize, size)
			wantHeads := int64(0)
			if tt.wantQueued {
				wantHeads = 1
			}
			assert.Equal(t, wantHeads, head.calls.Load())
			assert.Equal(t, wantHeads, c.Stats().Heads)
		})
	}

	t.Run("not found remembered", func(t *testing.T) {
		c := newCache(t, Options{})
		c.PrefetchSize(key, func(context.Context) (int64, error) { return 0, fs.ErrNotExist })
		require.Eventually(t, func() bool { _, s := c.Stat(key); return s == StatMissing }, waitLimit, time.Millisecond)
		_, err := c.SizeOrHead(context.Background(), key, mustNotHead(t))
		assert.ErrorIs(t, err, fs.ErrNotExist)
	})

	t.Run("nil head ignored", func(t *testing.T) {
		c := newCache(t, Options{})
		c.PrefetchSize(key, nil)
		assert.Nil(t, flightOf(c, key))
	})
}

// TestQueuedSizeFlightTakenOver checks what a request for a key does to a size request of it
// still queued behind a busy worker: no caller waits behind the backlog, and a body wanted
// meanwhile is fetched instead of the HEAD, never after it.
func TestQueuedSizeFlightTakenOver(t *testing.T) {
	const key = "k"
	tests := []struct {
		name       string
		act        func(t *testing.T, c *Cache)
		wantQueued int // background flights left queued right after act
		wantState  StatState
		wantSize   int64
		wantHeads  int64
		wantFetch  int64
	}{
		{
			name: "SizeOrHead sends its own HEAD at once",
			act: func(t *testing.T, c *Cache) {
				size, err := c.SizeOrHead(context.Background(), key, func(context.Context) (int64, error) { return 7, nil })
				require.NoError(t, err)
				assert.EqualValues(t, 7, size)
			},
			wantState: StatSized, wantSize: 7, wantHeads: 1,
		},
		{
			name: "GetOrFetch fetches the body at once, no HEAD",
			act: func(t *testing.T, c *Cache) {
				var calls atomic.Int64
				v, err := c.GetOrFetch(context.Background(), key, constFetch(&calls, []byte("abc"), nil))
				require.NoError(t, err)
				assert.Equal(t, "abc", string(v))
			},
			wantState: StatPresent, wantSize: 3, wantFetch: 1,
		},
		{
			name: "Prefetch turns it into a body fetch, still queued",
			act: func(t *testing.T, c *Cache) {
				var calls atomic.Int64
				c.Prefetch(key, constFetch(&calls, []byte("abcd"), nil))
				assert.Equal(t, kindBody, flightOf(c, key).kind)
			},
			wantQueued: 1, wantState: StatPresent, wantSize: 4, wantFetch: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache(t, Options{PrefetchWorkers: 1})
			busy := occupyWorkers(t, c, 1)
			c.PrefetchSize(key, mustNotHead(t))
			require.Equal(t, 1, c.Stats().PrefetchQueued)

			tt.act(t, c)
			assert.Equal(t, tt.wantQueued, c.Stats().PrefetchQueued)

			close(busy.gate)
			require.Eventually(t, func() bool { st := c.Stats(); return st.Workers == 0 && st.Foreground == 0 },
				waitLimit, time.Millisecond)
			size, state := c.Stat(key)
			assert.Equal(t, tt.wantState, state)
			assert.Equal(t, tt.wantSize, size)
			st := c.Stats()
			assert.Equal(t, tt.wantHeads, st.Heads)
			assert.Equal(t, tt.wantFetch+1, st.Fetches, "the busy prefetch and these")
		})
	}
}

// TestBodyWantedDuringRunningHead: a HEAD already sent cannot be taken back, but a reader does
// not wait for it before its GET. The body supersedes it: later size questions are answered by
// the body, and the HEAD's answer goes only to the callers already waiting for it.
func TestBodyWantedDuringRunningHead(t *testing.T) {
	const key = "k"
	tests := []struct {
		name       string
		foreground bool // the HEAD is a SizeOrHead rather than a PrefetchSize
		prefetch   bool // the body is wanted by Prefetch rather than GetOrFetch
	}{
		{name: "GetOrFetch during PrefetchSize"},
		{name: "GetOrFetch during SizeOrHead", foreground: true},
		{name: "Prefetch during PrefetchSize", prefetch: true},
		{name: "Prefetch during SizeOrHead", foreground: true, prefetch: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache(t, Options{PrefetchWorkers: 2})
			var waiters atomic.Int64
			c.onWait = func() { waiters.Add(1) }
			head := newGatedHead(99, nil) // a size the body will contradict
			headAnswer := make(chan int64, 1)
			if tt.foreground {
				go func() {
					size, err := c.SizeOrHead(context.Background(), key, head.head)
					assert.NoError(t, err)
					headAnswer <- size
				}()
			} else {
				c.PrefetchSize(key, head.head)
			}
			head.waitStarted(t)

			body := newGated([]byte("12345"), nil)
			bodyAnswer := make(chan []byte, 1)
			if tt.prefetch {
				c.Prefetch(key, body.fetch)
			} else {
				go func() {
					v, err := c.GetOrFetch(context.Background(), key, body.fetch)
					assert.NoError(t, err)
					bodyAnswer <- v
				}()
			}
			waitStarted(t, body) // while the HEAD is still unanswered

			// Asked now, the size comes from the body, with no second HEAD.
			sizeAnswer := make(chan int64, 1)
			go func() {
				size, err := c.SizeOrHead(context.Background(), key, mustNotHead(t))
				assert.NoError(t, err)
				sizeAnswer <- size
			}()
			wantWaiters := int64(1)
			if tt.foreground {
				wantWaiters++
			}
			if !tt.prefetch {
				wantWaiters++
			}
			require.Eventually(t, func() bool { return waiters.Load() == wantWaiters }, waitLimit, time.Millisecond)
			assert.Zero(t, head.calls.Load()-1, "no second HEAD")

			close(head.gate)
			if tt.foreground {
				assert.EqualValues(t, 99, <-headAnswer, "the HEAD's own caller has its answer")
			}
			require.Eventually(t, func() bool { st := c.Stats(); return st.Running+st.Foreground == 1 }, waitLimit, time.Millisecond)
			_, state := c.Stat(key)
			assert.Equal(t, StatUnknown, state, "a superseded HEAD's answer is not recorded")

			close(body.gate)
			assert.EqualValues(t, 5, <-sizeAnswer)
			if !tt.prefetch {
				assert.Equal(t, "12345", string(<-bodyAnswer))
			}
			size, state := c.Stat(key)
			assert.Equal(t, StatPresent, state)
			assert.EqualValues(t, 5, size)
			st := c.Stats()
			assert.EqualValues(t, 1, st.Heads)
			assert.EqualValues(t, 1, st.Fetches)
			assert.EqualValues(t, 1, head.calls.Load())
			assert.EqualValues(t, 1, body.calls.Load())
		})
	}
}

// TestWorkersStartLazily checks that workers start as work is queued, never beyond the bound,
// and end when the queue is empty.
func TestWorkersStartLazily(t *testing.T) {
	tests := []struct {
		name        string
		workers     int
		requests    int
		wantWorkers int
		wantQueued  int
		wantDropped int64
	}{
		{name: "one request, large bound", workers: 128, requests: 1, wantWorkers: 1},
		{name: "fewer requests than workers", workers: 8, requests: 5, wantWorkers: 5},
		{name: "more requests than workers", workers: 3, requests: 10, wantWorkers: 3, wantQueued: 7},
		{name: "beyond the queue", workers: 2, requests: 2 + 2*prefetchQueuePerWorker + 3,
			wantWorkers: 2, wantQueued: 2 * prefetchQueuePerWorker, wantDropped: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache(t, Options{PrefetchWorkers: tt.workers})
			assert.Zero(t, c.Stats().Workers, "no worker before any work")
			g := newGated([]byte("x"), nil)
			for i := range tt.requests {
				if i == tt.wantWorkers {
					// Let the workers take their flights before the queue fills up.
					for range tt.wantWorkers {
						waitStarted(t, g)
					}
				}
				c.Prefetch(fmt.Sprintf("k%d", i), g.fetch)
				if i == 0 {
					c.PrefetchSize("k0", mustNotHead(t)) // a flight exists: nothing
				}
				assert.LessOrEqual(t, c.Stats().Workers, tt.workers)
			}
			if tt.requests == tt.wantWorkers {
				for range tt.wantWorkers {
					waitStarted(t, g)
				}
			}
			st := c.Stats()
			assert.Equal(t, tt.wantWorkers, st.Workers)
			assert.Equal(t, tt.wantWorkers, st.Running)
			assert.Equal(t, tt.wantQueued, st.PrefetchQueued)
			assert.Equal(t, tt.wantDropped, st.PrefetchDropped)
			assert.Zero(t, st.Foreground)

			close(g.gate)
			require.Eventually(t, func() bool { return c.Stats().Workers == 0 }, waitLimit, time.Millisecond,
				"idle workers end")
			st = c.Stats()
			assert.Zero(t, st.Running)
			assert.Zero(t, st.PrefetchQueued)
			assert.EqualValues(t, tt.wantWorkers+tt.wantQueued, st.PrefetchStarted)
			assert.Equal(t, tt.wantWorkers+tt.wantQueued, st.Entries)
		})
	}
}

// TestCloseWaitsForEveryGoroutine runs every kind of flight, each blocked until its ctx is
// cancelled and slow to return after that, and checks that none is still running when Close
// returns.
func TestCloseWaitsForEveryGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	c := New(Options{PrefetchWorkers: 2})

	var active, started atomic.Int64
	block := func(ctx context.Context) {
		active.Add(1)
		started.Add(1)
		defer active.Add(-1)
		<-ctx.Done()
		time.Sleep(20 * time.Millisecond) // a request slow to wind down
	}
	fetch := func(ctx context.Context, _ Sink) ([]byte, error) { block(ctx); return nil, ctx.Err() }
	head := func(ctx context.Context) (int64, error) { block(ctx); return 0, ctx.Err() }

	callers := make(chan error, 4)
	c.Prefetch("bg-body", fetch)
	c.PrefetchSize("bg-size", head)
	c.PrefetchSize("queued", mustNotHead(t)) // both workers busy: stays queued
	go func() { _, err := c.GetOrFetch(context.Background(), "fg-body", fetch); callers <- err }()
	go func() { _, err := c.SizeOrHead(context.Background(), "fg-size", head); callers <- err }()
	// A head superseded by a body: both run.
	go func() { _, err := c.SizeOrHead(context.Background(), "both", head); callers <- err }()
	require.Eventually(t, func() bool { return started.Load() == 5 }, waitLimit, time.Millisecond)
	go func() { _, err := c.GetOrFetch(context.Background(), "both", fetch); callers <- err }()
	require.Eventually(t, func() bool { return started.Load() == 6 }, waitLimit, time.Millisecond)
	st := c.Stats()
	assert.Equal(t, 2, st.Workers)
	assert.Equal(t, 2, st.Running)
	assert.Equal(t, 4, st.Foreground)
	assert.Equal(t, 1, st.PrefetchQueued)

	c.Close()
	assert.Zero(t, active.Load(), "a fetch or head still running after Close")
	st = c.Stats()
	assert.Zero(t, st.Workers)
	assert.Zero(t, st.Running)
	assert.Zero(t, st.Foreground)
	assert.Zero(t, st.PrefetchQueued)
	for range 4 {
		assert.ErrorIs(t, <-callers, context.Canceled)
	}
	c.PrefetchSize("late", mustNotHead(t))
	c.Prefetch("late", mustNotFetch(t))
	assert.Zero(t, c.Stats().Workers, "nothing starts after Close")

	// Polled by hand: require.Eventually runs its condition in goroutines of its own. Only the
	// callers' goroutines, which have all answered, may still be ending.
	after := runtime.NumGoroutine()
	for deadline := time.Now().Add(waitLimit); after > before && time.Now().Before(deadline); after = runtime.NumGoroutine() {
		time.Sleep(5 * time.Millisecond)
	}
	assert.LessOrEqual(t, after, before, "goroutines left running after Close")
}
