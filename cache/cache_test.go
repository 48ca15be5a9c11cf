package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const waitLimit = 2 * time.Second

func newCache(t *testing.T, opt Options) *Cache {
	t.Helper()
	c := New(opt)
	t.Cleanup(c.Close)
	return c
}

// gatedFetch returns a fetch that counts its calls, signals each start on started, and
// blocks until gate is closed (or its ctx ends).
type gatedFetch struct {
	calls   atomic.Int64
	started chan struct{}
	gate    chan struct{}
	val     []byte
	err     error
	ctxErr  atomic.Value // error seen on ctx when released by gate
}

func newGated(val []byte, err error) *gatedFetch {
	return &gatedFetch{started: make(chan struct{}, 100), gate: make(chan struct{}), val: val, err: err}
}

func (g *gatedFetch) fetch(ctx context.Context, _ Sink) ([]byte, error) {
	g.calls.Add(1)
	g.started <- struct{}{}
	select {
	case <-g.gate:
		g.ctxErr.Store(fmt.Sprint(ctx.Err()))
		return g.val, g.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func waitStarted(t *testing.T, g *gatedFetch) {
	t.Helper()
	select {
	case <-g.started:
	case <-time.After(waitLimit):
		t.Fatal("fetch did not start")
	}
}

// fakeClock is a clock that moves only when told.
type fakeClock struct{ ns atomic.Int64 }

var clockStart = time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)

func newFakeClock() *fakeClock { return &fakeClock{} }

func (c *fakeClock) Now() time.Time          { return clockStart.Add(time.Duration(c.ns.Load())) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func constFetch(calls *atomic.Int64, val []byte, err error) FetchFunc {
	return func(context.Context, Sink) ([]byte, error) {
		calls.Add(1)
		return val, err
	}
}

func mustNotFetch(t *testing.T) FetchFunc {
	return func(context.Context, Sink) ([]byte, error) {
		t.Error("fetch called for a key the cache should answer")
		return nil, errors.New("unexpected fetch")
	}
}

func TestGetOrFetchConcurrentReadersShareOneFetch(t *testing.T) {
	c := newCache(t, Options{MaxBytes: 1 << 20})
	g := newGated([]byte("chunk-bytes"), nil)

	const readers = 100
	results := make([][]byte, readers)
	errs := make([]error, readers)
	var wg sync.WaitGroup
	for i := range readers {
		wg.Go(func() {
			results[i], errs[i] = c.GetOrFetch(context.Background(), "k", g.fetch)
		})
	}
	waitStarted(t, g)
	require.Eventually(t, func() bool { return c.Stats().Misses == readers }, waitLimit, time.Millisecond,
		"every reader should be waiting on the fetch")
	close(g.gate)
	wg.Wait()

	assert.EqualValues(t, 1, g.calls.Load())
	for i := range readers {
		require.NoError(t, errs[i])
		assert.Equal(t, "chunk-bytes", string(results[i]))
		assert.Same(t, &results[0][0], &results[i][0], "readers share the fetched slice")
	}
	got, err := c.GetOrFetch(context.Background(), "k", mustNotFetch(t))
	require.NoError(t, err)
	assert.Same(t, &results[0][0], &got[0], "a hit returns the stored slice, not a copy")
	st := c.Stats()
	assert.EqualValues(t, 1, st.Fetches)
	assert.EqualValues(t, 1, st.Hits)
}

func TestEvictionByBytes(t *testing.T) {
	val := func(n int) []byte { return bytes.Repeat([]byte("x"), n) }
	tests := []struct {
		name      string
		sizes     []int    // values added in order, keys k0, k1, ...
		touch     []string // keys read (made recent) before the last value is added
		wantKept  []string
		wantGone  []string
		wantBytes int64
		wantEvict int64
	}{
		{name: "fits", sizes: []int{30, 30, 40}, wantKept: []string{"k0", "k1", "k2"}, wantBytes: 100},
		{name: "oldest evicted", sizes: []int{30, 30, 30, 30}, wantKept: []string{"k1", "k2", "k3"}, wantGone: []string{"k0"}, wantBytes: 90, wantEvict: 1},
		{name: "recently read survives", sizes: []int{30, 30, 30, 30}, touch: []string{"k0"}, wantKept: []string{"k0", "k2", "k3"}, wantGone: []string{"k1"}, wantBytes: 90, wantEvict: 1},
		{name: "large value evicts several", sizes: []int{30, 30, 30, 90}, wantKept: []string{"k3"}, wantGone: []string{"k0", "k1", "k2"}, wantBytes: 90, wantEvict: 3},
		{name: "value of exactly the budget", sizes: []int{10, 100}, wantKept: []string{"k1"}, wantGone: []string{"k0"}, wantBytes: 100, wantEvict: 1},
		{name: "empty value kept", sizes: []int{0, 100}, wantKept: []string{"k0", "k1"}, wantBytes: 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache(t, Options{MaxBytes: 100})
			var calls atomic.Int64
			for i, n := range tt.sizes {
				if i == len(tt.sizes)-1 {
					for _, k := range tt.touch {
						_, err := c.GetOrFetch(context.Background(), k, mustNotFetch(t))
						require.NoError(t, err)
					}
				}
				_, err := c.GetOrFetch(context.Background(), fmt.Sprintf("k%d", i), constFetch(&calls, val(n), nil))
				require.NoError(t, err)
				require.LessOrEqual(t, c.Stats().Bytes, c.Stats().MaxBytes)
			}
			for _, k := range tt.wantKept {
				_, ok := c.Get(k)
				assert.True(t, ok, "%s should be cached", k)
			}
			for _, k := range tt.wantGone {
				_, ok := c.Get(k)
				assert.False(t, ok, "%s should be evicted", k)
				size, state := c.Stat(k)
				assert.Equal(t, StatSized, state, "an evicted key keeps its size")
				assert.EqualValues(t, tt.sizes[k[1]-'0'], size)
			}
			st := c.Stats()
			assert.Equal(t, tt.wantBytes, st.Bytes)
			assert.Equal(t, tt.wantEvict, st.Evictions)
			assert.Equal(t, len(tt.wantKept), st.Entries)
		})
	}
}

func TestBytesNeverExceedBudgetUnderConcurrency(t *testing.T) {
	const budget = 1000
	c := newCache(t, Options{MaxBytes: budget})
	var stop atomic.Bool
	var over atomic.Int64
	var watcher sync.WaitGroup
	watcher.Go(func() {
		for !stop.Load() {
			if c.Stats().Bytes > budget {
				over.Add(1)
			}
			runtime.Gosched()
		}
	})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 200 {
				key := fmt.Sprintf("w%d-%d", w, i%50)
				n := (i*37 + w*11) % 300
				_, err := c.GetOrFetch(context.Background(), key, func(context.Context, Sink) ([]byte, error) {
					return make([]byte, n), nil
				})
				assert.NoError(t, err)
			}
		})
	}
	wg.Wait()
	stop.Store(true)
	watcher.Wait()
	assert.Zero(t, over.Load(), "Stats.Bytes exceeded MaxBytes")
	assert.LessOrEqual(t, c.Stats().Bytes, int64(budget))
	assert.Positive(t, c.Stats().Evictions)
}

func TestOversizeValueHeldAloneOutsideTheBudget(t *testing.T) {
	// A shard bigger than the whole cache, read by the kernel in 1 MiB pieces, must not be
	// fetched once per piece; but only one such value is held, so memory stays bounded.
	c := newCache(t, Options{MaxBytes: 100})
	var calls atomic.Int64
	_, err := c.GetOrFetch(context.Background(), "small", constFetch(&calls, make([]byte, 60), nil))
	require.NoError(t, err)

	big := bytes.Repeat([]byte("b"), 101)
	got, err := c.GetOrFetch(context.Background(), "big", constFetch(&calls, big, nil))
	require.NoError(t, err)
	assert.Equal(t, big, got)
	for range 3 {
		got, err = c.GetOrFetch(context.Background(), "big", mustNotFetch(t))
		require.NoError(t, err)
		assert.Equal(t, big, got)
	}
	_, ok := c.Get("small")
	assert.True(t, ok, "an oversize value evicts nothing")
	size, state := c.Stat("big")
	assert.Equal(t, StatPresent, state)
	assert.EqualValues(t, 101, size)
	st := c.Stats()
	assert.EqualValues(t, 60, st.Bytes)
	assert.EqualValues(t, 101, st.OversizeBytes)
	assert.Zero(t, st.Evictions)

	// The next oversize value takes the slot.
	bigger := bytes.Repeat([]byte("c"), 150)
	_, err = c.GetOrFetch(context.Background(), "bigger", constFetch(&calls, bigger, nil))
	require.NoError(t, err)
	assert.EqualValues(t, 150, c.Stats().OversizeBytes)
	_, state = c.Stat("big")
	assert.Equal(t, StatSized, state, "the previous oversize value is dropped, its size kept")
	_, err = c.GetOrFetch(context.Background(), "big", constFetch(&calls, big, nil))
	require.NoError(t, err)
	assert.EqualValues(t, 4, calls.Load(), "small, big, bigger, big again")

	c.Invalidate("bi")
	assert.Zero(t, c.Stats().OversizeBytes)
	c.SetMissing("small")
	_, ok = c.Get("small")
	assert.False(t, ok)
}

func TestCancelledWaiterReturnsWhileFetchCompletes(t *testing.T) {
	c := newCache(t, Options{MaxBytes: 1 << 20})
	g := newGated([]byte("v"), nil)

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := c.GetOrFetch(ctx, "k", g.fetch)
		errc <- err
	}()
	waitStarted(t, g) // the caller about to give up is the one that started the fetch
	other := make(chan []byte, 1)
	go func() {
		v, err := c.GetOrFetch(context.Background(), "k", g.fetch)
		assert.NoError(t, err)
		other <- v
	}()
	require.Eventually(t, func() bool { return c.Stats().Misses == 2 }, waitLimit, time.Millisecond)

	cancel()
	select {
	case err := <-errc:
		assert.ErrorIs(t, err, context.Canceled)
	case <-time.After(waitLimit):
		t.Fatal("cancelled waiter did not return")
	}

	close(g.gate)
	select {
	case v := <-other:
		assert.Equal(t, "v", string(v))
	case <-time.After(waitLimit):
		t.Fatal("other waiter did not get the value")
	}
	assert.Equal(t, "<nil>", g.ctxErr.Load(), "the shared fetch must not see the waiter's cancellation")

	got, err := c.GetOrFetch(context.Background(), "k", mustNotFetch(t))
	require.NoError(t, err)
	assert.Equal(t, "v", string(got))
	assert.EqualValues(t, 1, g.calls.Load())
}

func TestDoneContextStartsNoFetch(t *testing.T) {
	c := newCache(t, Options{})
	var calls atomic.Int64
	_, err := c.GetOrFetch(context.Background(), "cached", constFetch(&calls, []byte("v"), nil))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = c.GetOrFetch(ctx, "k", constFetch(&calls, []byte("v"), nil))
	assert.ErrorIs(t, err, context.Canceled)
	v, err := c.GetOrFetch(ctx, "cached", mustNotFetch(t))
	require.NoError(t, err, "a hit needs no time")
	assert.Equal(t, "v", string(v))
	assert.EqualValues(t, 1, calls.Load())
}

func TestFetchTimeoutBoundsSharedFetch(t *testing.T) {
	c := newCache(t, Options{FetchTimeout: 20 * time.Millisecond})
	start := time.Now()
	_, err := c.GetOrFetch(context.Background(), "k", func(ctx context.Context, _ Sink) ([]byte, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), waitLimit)
	_, state := c.Stat("k")
	assert.Equal(t, StatUnknown, state, "a timeout is not remembered")
}

func TestFetchFailures(t *testing.T) {
	notFoundErr := fmt.Errorf("GET key: %w", fs.ErrNotExist)
	tests := []struct {
		name          string
		err           error
		wantState     StatState
		wantCalls     int64 // after two GetOrFetch calls
		wantFetchErrs int64
	}{
		{name: "transient error not cached", err: errors.New("503 from gateway"), wantState: StatUnknown, wantCalls: 2, wantFetchErrs: 2},
		{name: "not found remembered", err: notFoundErr, wantState: StatMissing, wantCalls: 1, wantFetchErrs: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache(t, Options{})
			var calls atomic.Int64
			for range 2 {
				v, err := c.GetOrFetch(context.Background(), "k", constFetch(&calls, nil, tt.err))
				require.Error(t, err)
				assert.Nil(t, v)
				assert.Equal(t, errors.Is(tt.err, fs.ErrNotExist), errors.Is(err, fs.ErrNotExist), "err = %v", err)
			}
			_, state := c.Stat("k")
			assert.Equal(t, tt.wantState, state)
			assert.Equal(t, tt.wantCalls, calls.Load())
			st := c.Stats()
			assert.Equal(t, tt.wantFetchErrs, st.FetchErrors)
			assert.Zero(t, st.Entries)
		})
	}
}

func TestFetchPanicBecomesError(t *testing.T) {
	c := newCache(t, Options{})
	_, err := c.GetOrFetch(context.Background(), "k", func(context.Context, Sink) ([]byte, error) { panic("boom") })
	require.ErrorContains(t, err, "panicked: boom")
	var calls atomic.Int64
	v, err := c.GetOrFetch(context.Background(), "k", constFetch(&calls, []byte("ok"), nil))
	require.NoError(t, err)
	assert.Equal(t, "ok", string(v))
}

func TestNilFuncsAreErrors(t *testing.T) {
	c := newCache(t, Options{})
	_, err := c.GetOrFetch(context.Background(), "k", nil)
	assert.ErrorContains(t, err, "nil fetch")
	_, err = c.SizeOrHead(context.Background(), "k", nil)
	assert.ErrorContains(t, err, "nil head")
	c.Prefetch("k", nil)
	_, state := c.Stat("k")
	assert.Equal(t, StatUnknown, state)
}

func TestStatStates(t *testing.T) {
	c := newCache(t, Options{})
	var calls atomic.Int64
	_, err := c.GetOrFetch(context.Background(), "present", constFetch(&calls, []byte("12345"), nil))
	require.NoError(t, err)
	c.SetSize("sized", 42)
	c.SetMissing("missing")
	c.SetSize("negative", -1)

	tests := []struct {
		key       string
		wantSize  int64
		wantState StatState
	}{
		{"present", 5, StatPresent},
		{"sized", 42, StatSized},
		{"missing", 0, StatMissing},
		{"unknown", 0, StatUnknown},
		{"negative", 0, StatUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			size, state := c.Stat(tt.key)
			assert.Equal(t, tt.wantState, state, state.String())
			assert.Equal(t, tt.wantSize, size)
		})
	}

	c.SetMissing("present")
	_, state := c.Stat("present")
	assert.Equal(t, StatMissing, state, "SetMissing drops cached bytes")
	assert.Zero(t, c.Stats().Bytes)
	_, err = c.GetOrFetch(context.Background(), "missing", mustNotFetch(t))
	assert.ErrorIs(t, err, fs.ErrNotExist)
}

func TestStatEntriesAreBounded(t *testing.T) {
	c := newCache(t, Options{MaxStatEntries: 3})
	for i := range 5 {
		c.SetSize(fmt.Sprintf("k%d", i), int64(i))
	}
	_, state := c.Stat("k0")
	assert.Equal(t, StatUnknown, state, "oldest stat entry evicted")
	size, state := c.Stat("k4")
	assert.Equal(t, StatSized, state)
	assert.EqualValues(t, 4, size)
}

func TestPrefetchSharesFetchWithGetOrFetch(t *testing.T) {
	c := newCache(t, Options{PrefetchWorkers: 2})
	g := newGated([]byte("ahead"), nil)
	c.Prefetch("k", g.fetch)
	waitStarted(t, g)

	c.Prefetch("k", g.fetch) // in flight: no-op
	done := make(chan []byte, 1)
	go func() {
		v, err := c.GetOrFetch(context.Background(), "k", g.fetch)
		assert.NoError(t, err)
		done <- v
	}()
	require.Eventually(t, func() bool { return c.Stats().Misses == 1 }, waitLimit, time.Millisecond)
	close(g.gate)
	select {
	case v := <-done:
		assert.Equal(t, "ahead", string(v))
	case <-time.After(waitLimit):
		t.Fatal("GetOrFetch did not get the prefetched value")
	}
	assert.EqualValues(t, 1, g.calls.Load())
	st := c.Stats()
	assert.EqualValues(t, 1, st.Fetches)
	assert.EqualValues(t, 1, st.PrefetchStarted)

	// Present or known missing: prefetch does nothing. Prefetch decides before it returns, so
	// a request it took would show now as a flight, or, done already, as a fetch counted.
	c.SetMissing("gone")
	c.Prefetch("k", mustNotFetch(t))
	c.Prefetch("gone", mustNotFetch(t))
	c.mu.Lock()
	flights := len(c.flights)
	c.mu.Unlock()
	assert.Zero(t, flights)
	assert.EqualValues(t, 1, c.Stats().Fetches)
}

func TestGetOrFetchTakesOverQueuedPrefetch(t *testing.T) {
	c := newCache(t, Options{PrefetchWorkers: 1})
	busy := newGated([]byte("a"), nil)
	c.Prefetch("a", busy.fetch)
	waitStarted(t, busy) // the only worker is busy

	queued := newGated([]byte("never"), nil)
	c.Prefetch("b", queued.fetch)

	var calls atomic.Int64
	v, err := c.GetOrFetch(context.Background(), "b", constFetch(&calls, []byte("b"), nil))
	require.NoError(t, err, "a reader must not wait behind the readahead backlog")
	assert.Equal(t, "b", string(v))
	assert.EqualValues(t, 1, calls.Load())
	assert.Zero(t, c.Stats().PrefetchQueued, "a prefetch a reader took over leaves the queue")

	close(busy.gate)
	close(queued.gate)
	require.Eventually(t, func() bool { _, ok := c.Get("a"); return ok }, waitLimit, time.Millisecond)
	// The worker, done with "a", finds the queue empty and ends.
	require.Eventually(t, func() bool { return c.Stats().Workers == 0 }, waitLimit, time.Millisecond)
	c.Close()
	assert.Zero(t, queued.calls.Load(), "no worker runs a prefetch a reader took over")
	assert.EqualValues(t, 1, c.Stats().PrefetchStarted)
	assert.EqualValues(t, 2, c.Stats().Fetches)
}

func TestPrefetchQueueBoundAndDrops(t *testing.T) {
	const workers = 2
	c := newCache(t, Options{PrefetchWorkers: workers})
	g := newGated([]byte("x"), nil)
	for i := range workers {
		c.Prefetch(fmt.Sprintf("run%d", i), g.fetch)
	}
	for range workers {
		waitStarted(t, g)
	}
	const extra = 30
	for i := range extra {
		c.Prefetch(fmt.Sprintf("q%d", i), g.fetch)
	}
	queueLen := prefetchQueuePerWorker * workers
	st := c.Stats()
	assert.EqualValues(t, extra-queueLen, st.PrefetchDropped)
	assert.EqualValues(t, workers, st.PrefetchStarted)

	close(g.gate)
	require.Eventually(t, func() bool { return c.Stats().Entries == workers+queueLen }, waitLimit, time.Millisecond)
	assert.EqualValues(t, workers+queueLen, g.calls.Load())
	assert.EqualValues(t, workers+queueLen, c.Stats().PrefetchStarted)
	// A dropped request left nothing behind: it can be fetched normally.
	var calls atomic.Int64
	_, err := c.GetOrFetch(context.Background(), fmt.Sprintf("q%d", extra-1), constFetch(&calls, []byte("y"), nil))
	require.NoError(t, err)
	assert.EqualValues(t, 1, calls.Load())
}

func TestCloseCancelsPrefetchesAndLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()

	c := New(Options{PrefetchWorkers: 2})
	g := newGated([]byte("x"), nil)
	c.Prefetch("run0", g.fetch)
	c.Prefetch("run1", g.fetch)
	waitStarted(t, g)
	waitStarted(t, g)
	for i := range 5 {
		c.Prefetch(fmt.Sprintf("queued%d", i), g.fetch)
	}
	// A reader waiting on a running prefetch, and a head in flight.
	readerErr := make(chan error, 1)
	go func() {
		_, err := c.GetOrFetch(context.Background(), "run0", g.fetch)
		readerErr <- err
	}()
	headErr := make(chan error, 1)
	go func() {
		_, err := c.SizeOrHead(context.Background(), "h", func(ctx context.Context) (int64, error) {
			<-ctx.Done()
			return 0, ctx.Err()
		})
		headErr <- err
	}()
	require.Eventually(t, func() bool { return c.Stats().Misses == 1 && c.Stats().Heads == 1 }, waitLimit, time.Millisecond)

	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(waitLimit):
		t.Fatal("Close did not return")
	}
	assert.ErrorIs(t, <-readerErr, context.Canceled)
	assert.ErrorIs(t, <-headErr, context.Canceled)
	assert.EqualValues(t, 2, g.calls.Load(), "queued prefetches never run")
	assert.Len(t, c.flights, 0)

	// After Close: misses fail, prefetch is a no-op, Close again is fine.
	_, err := c.GetOrFetch(context.Background(), "new", mustNotFetch(t))
	assert.ErrorIs(t, err, ErrClosed)
	_, err = c.SizeOrHead(context.Background(), "new", func(context.Context) (int64, error) { return 1, nil })
	assert.ErrorIs(t, err, ErrClosed)
	c.Prefetch("new", mustNotFetch(t))
	c.Close()

	// Polled by hand: require.Eventually runs its condition in goroutines of its own.
	after := runtime.NumGoroutine()
	for deadline := time.Now().Add(waitLimit); after > before && time.Now().Before(deadline); after = runtime.NumGoroutine() {
		time.Sleep(5 * time.Millisecond)
	}
	assert.LessOrEqual(t, after, before, "goroutines left running after Close")
}

func TestCloseReleasesWaiterOnQueuedPrefetch(t *testing.T) {
	c := New(Options{PrefetchWorkers: 1})
	busy := newGated(nil, nil)
	c.Prefetch("a", busy.fetch)
	waitStarted(t, busy)
	c.Prefetch("b", busy.fetch) // stays queued

	// SizeOrHead on a queued prefetch starts the body now rather than a HEAD.
	sizeErr := make(chan error, 1)
	go func() {
		_, err := c.SizeOrHead(context.Background(), "b", func(context.Context) (int64, error) {
			t.Error("head called while the body was queued")
			return 0, nil
		})
		sizeErr <- err
	}()
	require.Eventually(t, func() bool { return busy.calls.Load() == 2 }, waitLimit, time.Millisecond)
	c.Close()
	assert.ErrorIs(t, <-sizeErr, context.Canceled)
	assert.Zero(t, c.Stats().Heads)
}

func TestSizeOrHead(t *testing.T) {
	t.Run("answered from cache without head", func(t *testing.T) {
		c := newCache(t, Options{})
		var calls atomic.Int64
		_, err := c.GetOrFetch(context.Background(), "present", constFetch(&calls, []byte("abc"), nil))
		require.NoError(t, err)
		c.SetSize("sized", 7)
		c.SetMissing("missing")
		noHead := func(context.Context) (int64, error) {
			t.Error("head called for a key the cache knows")
			return 0, nil
		}
		tests := []struct {
			key      string
			wantSize int64
			wantErr  error
		}{
			{"present", 3, nil},
			{"sized", 7, nil},
			{"missing", 0, fs.ErrNotExist},
		}
		for _, tt := range tests {
			size, err := c.SizeOrHead(context.Background(), tt.key, noHead)
			if tt.wantErr != nil {
				assert.ErrorIs(t, err, tt.wantErr, tt.key)
			} else {
				assert.NoError(t, err, tt.key)
			}
			assert.Equal(t, tt.wantSize, size, tt.key)
		}
		assert.Zero(t, c.Stats().Heads)
	})

	t.Run("single flight and recorded", func(t *testing.T) {
		c := newCache(t, Options{})
		var waiting sync.WaitGroup // every caller waits on the shared head before it answers
		c.onWait = waiting.Done
		var calls atomic.Int64
		gate := make(chan struct{})
		head := func(ctx context.Context) (int64, error) {
			calls.Add(1)
			select {
			case <-gate:
				return 1234, nil
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
		const callers = 50
		waiting.Add(callers)
		sizes := make([]int64, callers)
		var wg sync.WaitGroup
		for i := range callers {
			wg.Go(func() {
				var err error
				sizes[i], err = c.SizeOrHead(context.Background(), "k", head)
				assert.NoError(t, err)
			})
		}
		waiting.Wait()
		close(gate)
		wg.Wait()
		assert.EqualValues(t, 1, calls.Load())
		for i := range callers {
			assert.EqualValues(t, 1234, sizes[i])
		}
		size, state := c.Stat("k")
		assert.Equal(t, StatSized, state)
		assert.EqualValues(t, 1234, size)
		assert.EqualValues(t, 1, c.Stats().Heads)
	})

	t.Run("results", func(t *testing.T) {
		tests := []struct {
			name      string
			size      int64
			err       error
			wantErr   string
			wantState StatState
			wantCalls int64 // after two calls
		}{
			{name: "not found remembered", err: fmt.Errorf("HEAD: %w", fs.ErrNotExist), wantErr: "file does not exist", wantState: StatMissing, wantCalls: 1},
			{name: "error not remembered", err: errors.New("502"), wantErr: "502", wantState: StatUnknown, wantCalls: 2},
			{name: "negative size rejected", size: -5, wantErr: "negative size -5", wantState: StatUnknown, wantCalls: 2},
			{name: "zero size", size: 0, wantState: StatSized, wantCalls: 1},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				c := newCache(t, Options{})
				var calls atomic.Int64
				head := func(context.Context) (int64, error) { calls.Add(1); return tt.size, tt.err }
				for range 2 {
					_, err := c.SizeOrHead(context.Background(), "k", head)
					if tt.wantErr != "" {
						assert.ErrorContains(t, err, tt.wantErr)
					} else {
						assert.NoError(t, err)
					}
				}
				_, state := c.Stat("k")
				assert.Equal(t, tt.wantState, state)
				assert.Equal(t, tt.wantCalls, calls.Load())
			})
		}
	})

	t.Run("waits for body fetch instead of head", func(t *testing.T) {
		c := newCache(t, Options{})
		g := newGated([]byte("12345678"), nil)
		go func() { _, _ = c.GetOrFetch(context.Background(), "k", g.fetch) }()
		waitStarted(t, g)
		res := make(chan int64, 1)
		go func() {
			size, err := c.SizeOrHead(context.Background(), "k", func(context.Context) (int64, error) {
				t.Error("head called during a body fetch")
				return 0, nil
			})
			assert.NoError(t, err)
			res <- size
		}()
		close(g.gate)
		select {
		case size := <-res:
			assert.EqualValues(t, 8, size)
		case <-time.After(waitLimit):
			t.Fatal("SizeOrHead did not return")
		}
	})

	t.Run("cancelled caller returns at once", func(t *testing.T) {
		c := newCache(t, Options{})
		gate := make(chan struct{})
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			_, err := c.SizeOrHead(ctx, "k", func(context.Context) (int64, error) { <-gate; return 9, nil })
			errc <- err
		}()
		require.Eventually(t, func() bool { return c.Stats().Heads == 1 }, waitLimit, time.Millisecond)
		cancel()
		assert.ErrorIs(t, <-errc, context.Canceled)
		close(gate)
		require.Eventually(t, func() bool { _, s := c.Stat("k"); return s == StatSized }, waitLimit, time.Millisecond,
			"the shared head still records its answer")
	})
}

func TestInvalidate(t *testing.T) {
	c := newCache(t, Options{})
	var calls atomic.Int64
	for _, k := range []string{"ds1/.zmetadata", "ds1/u/0.0", "ds2/.zmetadata"} {
		_, err := c.GetOrFetch(context.Background(), k, constFetch(&calls, []byte("1234"), nil))
		require.NoError(t, err)
	}
	c.SetSize("ds1/u/0.1", 10)
	c.SetMissing("ds1/u/0.2")
	c.SetMissing("ds2/u/0.2")

	// A fetch under way when invalidated answers its caller but is not kept.
	g := newGated([]byte("old"), nil)
	inflight := make(chan []byte, 1)
	go func() {
		v, err := c.GetOrFetch(context.Background(), "ds1/v/0", g.fetch)
		assert.NoError(t, err)
		inflight <- v
	}()
	waitStarted(t, g)

	c.Invalidate("ds1/")
	close(g.gate)
	assert.Equal(t, "old", string(<-inflight))

	tests := []struct {
		key  string
		want StatState
	}{
		{"ds1/.zmetadata", StatUnknown},
		{"ds1/u/0.0", StatUnknown},
		{"ds1/u/0.1", StatUnknown},
		{"ds1/u/0.2", StatUnknown},
		{"ds1/v/0", StatUnknown},
		{"ds2/.zmetadata", StatPresent},
		{"ds2/u/0.2", StatMissing},
	}
	for _, tt := range tests {
		_, state := c.Stat(tt.key)
		assert.Equal(t, tt.want, state, tt.key)
	}
	st := c.Stats()
	assert.EqualValues(t, 4, st.Bytes)
	assert.Equal(t, 1, st.Entries)

	c.Invalidate("")
	assert.Zero(t, c.Stats().Bytes)
	_, state := c.Stat("ds2/u/0.2")
	assert.Equal(t, StatUnknown, state)
}

func TestGetCountsHitsOnly(t *testing.T) {
	c := newCache(t, Options{})
	_, ok := c.Get("k")
	assert.False(t, ok)
	var calls atomic.Int64
	_, err := c.GetOrFetch(context.Background(), "k", constFetch(&calls, []byte("v"), nil))
	require.NoError(t, err)
	v, ok := c.Get("k")
	assert.True(t, ok)
	assert.Equal(t, "v", string(v))
	st := c.Stats()
	assert.EqualValues(t, 1, st.Hits)
	assert.EqualValues(t, 1, st.Misses, "only the GetOrFetch counts as a miss")
}

func TestHitAllocatesNothing(t *testing.T) {
	c := newCache(t, Options{})
	var calls atomic.Int64
	fetch := constFetch(&calls, make([]byte, 4096), nil)
	ctx := context.Background()
	_, err := c.GetOrFetch(ctx, "ds/var/0.0.0", fetch)
	require.NoError(t, err)
	allocs := testing.AllocsPerRun(1000, func() {
		_, _ = c.GetOrFetch(ctx, "ds/var/0.0.0", fetch)
	})
	assert.Zero(t, allocs)
}

func BenchmarkGetOrFetchHit(b *testing.B) {
	c := New(Options{MaxBytes: 64 << 20})
	defer c.Close()
	const keys = 1024
	names := make([]string, keys)
	ctx := context.Background()
	for i := range names {
		names[i] = fmt.Sprintf("ds/var/%d.0", i)
		_, err := c.GetOrFetch(ctx, names[i], func(context.Context, Sink) ([]byte, error) { return make([]byte, 1024), nil })
		require.NoError(b, err)
	}
	fetch := func(context.Context, Sink) ([]byte, error) { return nil, errors.New("unexpected fetch") }
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := c.GetOrFetch(ctx, names[i%keys], fetch); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

func BenchmarkGetOrFetchMissEvict(b *testing.B) {
	c := New(Options{MaxBytes: 1 << 20})
	defer c.Close()
	val := make([]byte, 64<<10)
	fetch := func(context.Context, Sink) ([]byte, error) { return val, nil }
	names := make([]string, 4096)
	for i := range names {
		names[i] = fmt.Sprintf("ds/var/%d.0", i)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := c.GetOrFetch(ctx, names[i%len(names)], fetch); err != nil {
			b.Fatal(err)
		}
	}
}

func TestMissingMarksExpire(t *testing.T) {
	// A sparse chunk written later, with no metadata change, must appear once MissingTTL has
	// passed; before that, its absence costs no request.
	clock := newFakeClock()
	c := newCache(t, Options{MissingTTL: time.Minute, Now: clock.Now})
	advance := clock.Advance

	var fetches, heads atomic.Int64
	headMissing := func(context.Context) (int64, error) { heads.Add(1); return 0, fs.ErrNotExist }
	headSized := func(context.Context) (int64, error) { heads.Add(1); return 7, nil }

	_, err := c.GetOrFetch(t.Context(), "fetched", constFetch(&fetches, nil, fs.ErrNotExist))
	require.ErrorIs(t, err, fs.ErrNotExist)
	_, err = c.SizeOrHead(t.Context(), "headed", headMissing)
	require.ErrorIs(t, err, fs.ErrNotExist)
	c.SetMissing("set")

	advance(59 * time.Second)
	for _, key := range []string{"fetched", "headed", "set"} {
		_, state := c.Stat(key)
		assert.Equal(t, StatMissing, state, key)
		_, err = c.GetOrFetch(t.Context(), key, mustNotFetch(t))
		assert.ErrorIs(t, err, fs.ErrNotExist, key)
		_, err = c.SizeOrHead(t.Context(), key, headSized)
		assert.ErrorIs(t, err, fs.ErrNotExist, key)
	}
	assert.Equal(t, int64(1), fetches.Load())
	assert.Equal(t, int64(1), heads.Load())

	advance(time.Second)
	for _, key := range []string{"fetched", "headed", "set"} {
		_, state := c.Stat(key)
		assert.Equal(t, StatUnknown, state, key)
	}
	v, err := c.GetOrFetch(t.Context(), "fetched", constFetch(&fetches, []byte("written"), nil))
	require.NoError(t, err)
	assert.Equal(t, "written", string(v))
	size, err := c.SizeOrHead(t.Context(), "headed", headSized)
	require.NoError(t, err)
	assert.Equal(t, int64(7), size)
	c.Prefetch("set", constFetch(&fetches, []byte("later"), nil))
	require.Eventually(t, func() bool { _, ok := c.Get("set"); return ok }, waitLimit, time.Millisecond)
	assert.Equal(t, int64(3), fetches.Load())
	assert.Equal(t, int64(2), heads.Load())
}

func TestPutReplacesWhatWasKnownOfAKey(t *testing.T) {
	c := New(Options{MaxBytes: 1 << 20})
	defer c.Close()
	c.SetMissing("k")
	c.Put("k", []byte("written"))
	size, st := c.Stat("k")
	assert.Equal(t, StatPresent, st)
	assert.Equal(t, int64(7), size)
	got, err := c.GetOrFetch(context.Background(), "k", func(context.Context, Sink) ([]byte, error) {
		t.Fatal("a key put is not fetched")
		return nil, nil
	})
	require.NoError(t, err)
	assert.Equal(t, "written", string(got))
}
