package cache

import (
	"context"
	"io/fs"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestInvalidateRacingFetch checks that a fetch or head that started before an invalidation
// can never bring its (old) answer back: not into the cache, not to a caller who asks after
// the invalidation. Only the callers already waiting for it may get it. Every step is ordered
// by channels, so each interleaving is exercised as named.
func TestInvalidateRacingFetch(t *testing.T) {
	const key = "ds/u/0.0"
	tests := []struct {
		name     string
		queued   bool // the old fetch is a prefetch still queued behind a busy worker
		oldFirst bool // the old fetch ends before the new one
	}{
		{name: "old fetch ends first", oldFirst: true},
		{name: "old fetch ends last"},
		{name: "queued prefetch", queued: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache(t, Options{PrefetchWorkers: 1})
			old := newGated([]byte("old"), nil)
			oldAnswer := make(chan result, 1)
			busy := newGated([]byte("busy"), nil)
			var queued *flight
			if tt.queued {
				c.Prefetch("other", busy.fetch)
				waitStarted(t, busy) // the only worker is taken
				c.Prefetch(key, old.fetch)
				c.mu.Lock()
				queued = c.flights[key]
				c.mu.Unlock()
				require.NotNil(t, queued)
			} else {
				go func() { oldAnswer <- getOrFetch(c, key, old.fetch) }()
				waitStarted(t, old)
			}

			c.Invalidate("ds/")

			fresh := newGated([]byte("fresh"), nil)
			newAnswer := make(chan result, 1)
			go func() { newAnswer <- getOrFetch(c, key, fresh.fetch) }()
			waitStarted(t, fresh) // a new fetch, not the old one joined
			if tt.oldFirst {
				close(old.gate)
				assert.Equal(t, result{val: "old"}, <-oldAnswer, "its own caller may have the old bytes")
				close(fresh.gate)
			} else {
				close(fresh.gate)
				assert.Equal(t, result{val: "fresh"}, <-newAnswer)
				close(old.gate)
				if !tt.queued {
					assert.Equal(t, result{val: "old"}, <-oldAnswer)
				}
			}
			if tt.oldFirst {
				assert.Equal(t, result{val: "fresh"}, <-newAnswer)
			}
			// The old fetch has ended (its caller has its answer), or never runs: whichever
			// order, the cache holds the fresh bytes.
			v, err := c.GetOrFetch(context.Background(), key, mustNotFetch(t))
			require.NoError(t, err)
			assert.Equal(t, "fresh", string(v))
			size, state := c.Stat(key)
			assert.Equal(t, StatPresent, state)
			assert.EqualValues(t, len("fresh"), size)
			if tt.queued {
				close(busy.gate) // the worker comes to the stale prefetch
				select {
				case <-queued.done:
				case <-time.After(waitLimit):
					t.Fatal("the invalidated prefetch was never ended")
				}
				assert.Zero(t, old.calls.Load(), "an invalidated prefetch is not run")
			}
		})
	}
}

// TestInvalidateRacingHead is TestInvalidateRacingFetch for sizes: a HEAD or a body fetch
// under way when the key is invalidated does not answer later callers nor record its size.
func TestInvalidateRacingHead(t *testing.T) {
	const key = "ds/u/0.0"
	tests := []struct {
		name string
		body bool // the size would come from a body fetch rather than a HEAD
	}{
		{name: "head"},
		{name: "body", body: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache(t, Options{})
			oldGate, oldStarted := make(chan struct{}), make(chan struct{})
			oldDone := make(chan struct{})
			if tt.body {
				go func() {
					defer close(oldDone)
					_, _ = c.GetOrFetch(context.Background(), key, func(ctx context.Context, _ Sink) ([]byte, error) {
						close(oldStarted)
						select {
						case <-oldGate:
							return []byte("old bytes"), nil
						case <-ctx.Done():
							return nil, ctx.Err()
						}
					})
				}()
			} else {
				go func() {
					defer close(oldDone)
					_, _ = c.SizeOrHead(context.Background(), key, func(ctx context.Context) (int64, error) {
						close(oldStarted)
						select {
						case <-oldGate:
							return 100, nil
						case <-ctx.Done():
							return 0, ctx.Err()
						}
					})
				}()
			}
			<-oldStarted
			c.Invalidate("ds/")

			var heads atomic.Int64
			ctx, cancel := context.WithTimeout(context.Background(), waitLimit) // not joined to the old call
			defer cancel()
			size, err := c.SizeOrHead(ctx, key, func(context.Context) (int64, error) {
				heads.Add(1)
				return 7, nil
			})
			require.NoError(t, err)
			assert.EqualValues(t, 7, size, "asked after the invalidation: a new HEAD")
			assert.EqualValues(t, 1, heads.Load())

			close(oldGate)
			<-oldDone
			size, state := c.Stat(key)
			assert.Equal(t, StatSized, state)
			assert.EqualValues(t, 7, size, "the old answer is not recorded")
		})
	}
}

// result is what a GetOrFetch answered, to be checked by the test's own goroutine.
type result struct {
	val string
	err error
}

func getOrFetch(c *Cache, key string, fetch FetchFunc) result {
	v, err := c.GetOrFetch(context.Background(), key, fetch)
	return result{string(v), err}
}

func TestForgetIsExact(t *testing.T) {
	c := newCache(t, Options{})
	var calls atomic.Int64
	for _, k := range []string{"ds/u/0.1", "ds/u/0.10"} {
		_, err := c.GetOrFetch(context.Background(), k, constFetch(&calls, []byte(k), nil))
		require.NoError(t, err)
	}
	c.SetMissing("ds/u/0.1x")
	c.Forget("ds/u/0.1")
	tests := []struct {
		key  string
		want StatState
	}{
		{"ds/u/0.1", StatUnknown},
		{"ds/u/0.10", StatPresent},
		{"ds/u/0.1x", StatMissing},
	}
	for _, tt := range tests {
		_, state := c.Stat(tt.key)
		assert.Equal(t, tt.want, state, tt.key)
	}
}

// TestAge checks the age of what the cache knows, on a clock that moves only when told.
func TestAge(t *testing.T) {
	clock := newFakeClock()
	c := newCache(t, Options{Now: clock.Now, MissingTTL: time.Hour})
	var calls atomic.Int64

	_, err := c.GetOrFetch(context.Background(), "fetched", constFetch(&calls, []byte("abc"), nil))
	require.NoError(t, err)
	_, err = c.GetOrFetch(context.Background(), "missing", constFetch(&calls, nil, fs.ErrNotExist))
	require.ErrorIs(t, err, fs.ErrNotExist)
	_, err = c.SizeOrHead(context.Background(), "headed", func(context.Context) (int64, error) { return 5, nil })
	require.NoError(t, err)
	clock.Advance(time.Minute)
	c.SetSize("sized", 9)
	clock.Advance(time.Minute)

	// A slow fetch is as old as its start: the bytes may have been read any time after it.
	slow := newGated([]byte("slow"), nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := c.GetOrFetch(context.Background(), "slow", slow.fetch)
		assert.NoError(t, err)
	}()
	waitStarted(t, slow)
	clock.Advance(30 * time.Second)
	close(slow.gate)
	<-done

	tests := []struct {
		key    string
		want   time.Duration
		wantOK bool
	}{
		{"fetched", 2*time.Minute + 30*time.Second, true},
		{"missing", 2*time.Minute + 30*time.Second, true},
		{"headed", 2*time.Minute + 30*time.Second, true},
		{"sized", time.Minute + 30*time.Second, true},
		{"slow", 30 * time.Second, true},
		{"unknown", 0, false},
	}
	for _, tt := range tests {
		age, ok := c.Age(tt.key)
		assert.Equal(t, tt.wantOK, ok, tt.key)
		assert.Equal(t, tt.want, age, tt.key)
	}

	// Fetched again after Forget: young again.
	c.Forget("fetched")
	_, ok := c.Age("fetched")
	assert.False(t, ok)
	_, err = c.GetOrFetch(context.Background(), "fetched", constFetch(&calls, []byte("abcd"), nil))
	require.NoError(t, err)
	age, ok := c.Age("fetched")
	assert.True(t, ok)
	assert.Zero(t, age)
}

// TestAgeOfOversizeValue covers the value held outside the LRU.
func TestAgeOfOversizeValue(t *testing.T) {
	clock := newFakeClock()
	c := newCache(t, Options{Now: clock.Now, MaxBytes: 4})
	var calls atomic.Int64
	_, err := c.GetOrFetch(context.Background(), "big", constFetch(&calls, []byte("too big"), nil))
	require.NoError(t, err)
	clock.Advance(time.Second)
	age, ok := c.Age("big")
	assert.True(t, ok)
	assert.Equal(t, time.Second, age)
}
