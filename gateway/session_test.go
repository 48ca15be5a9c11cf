package gateway

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSessionStoreOpenCount drives the store with a fake clock through
// acquisitions, closes and expiries, checking the exact open count (what
// --max-sessions compares) and what is still known after each step.
func TestSessionStoreOpenCount(t *testing.T) {
	type step struct {
		acquire  time.Duration // acquire a session lasting this long (0: none)
		close    int           // close the session acquired at this step (1-based; 0: none)
		advance  time.Duration // then move the clock
		wantOpen int64
		wantErr  bool // the acquisition is refused (--max-sessions)
		wantKept int  // sessions still known (open, or retired less than sessionForget ago)
	}
	tests := []struct {
		name       string
		ttl        time.Duration
		max        int
		maxRetired int // 0: maxRetired
		steps      []step
	}{
		{"expiry in end order, not acquisition order", 0, 0, 0, []step{
			{acquire: 30 * time.Second, wantOpen: 1, wantKept: 1},
			{acquire: 10 * time.Second, wantOpen: 2, wantKept: 2},
			{acquire: 20 * time.Second, advance: 15 * time.Second, wantOpen: 2, wantKept: 3},
			{advance: 10 * time.Second, wantOpen: 1, wantKept: 3},
			{advance: 5 * time.Second, wantOpen: 0, wantKept: 3},
		}},
		{"end exactly now is expired", 0, 0, 0, []step{
			{acquire: time.Second, advance: time.Second, wantOpen: 0, wantKept: 1},
		}},
		{"close removes from the index once", 0, 0, 0, []step{
			{acquire: time.Minute, wantOpen: 1, wantKept: 1},
			{acquire: time.Minute, wantOpen: 2, wantKept: 2},
			{close: 1, wantOpen: 1, wantKept: 2},
			{close: 1, wantOpen: 1, wantKept: 2},
			{advance: time.Minute, wantOpen: 0, wantKept: 2},
			{close: 2, wantOpen: 0, wantKept: 2}, // already expired: no second retirement
		}},
		{"max sessions counts exactly", 0, 2, 0, []step{
			{acquire: 10 * time.Second, wantOpen: 1, wantKept: 1},
			{acquire: 20 * time.Second, wantOpen: 2, wantKept: 2},
			{acquire: time.Hour, wantErr: true, wantOpen: 2, wantKept: 2},
			{advance: 10 * time.Second, wantOpen: 1, wantKept: 2},
			{acquire: time.Hour, wantOpen: 2, wantKept: 3},
			{close: 2, wantOpen: 1, wantKept: 3},
			{acquire: time.Hour, wantOpen: 2, wantKept: 4},
			{acquire: time.Hour, wantErr: true, wantOpen: 2, wantKept: 4},
		}},
		{"ttl caps the duration", 5 * time.Second, 0, 0, []step{
			{acquire: time.Hour, advance: 5 * time.Second, wantOpen: 0, wantKept: 1},
		}},
		{"forgotten an hour after they stop being open", 0, 0, 0, []step{
			{acquire: 24 * time.Hour, wantOpen: 1, wantKept: 1}, // closed below, long before its end
			{acquire: time.Minute, wantOpen: 2, wantKept: 2},
			{acquire: 2 * time.Hour, wantOpen: 3, wantKept: 3},
			{close: 1, advance: time.Minute, wantOpen: 1, wantKept: 3}, // retired: the 1st at 0, the 2nd at 1 min
			{advance: sessionForget - time.Minute, wantOpen: 1, wantKept: 3},
			{advance: time.Nanosecond, wantOpen: 1, wantKept: 2},
			{advance: time.Minute, wantOpen: 1, wantKept: 1},
			{advance: 2 * time.Hour, wantOpen: 0, wantKept: 1}, // the 3rd, retired now
		}},
		{"at most maxRetired kept, the oldest forgotten first", 0, 0, 2, []step{
			{acquire: time.Hour, wantOpen: 1, wantKept: 1},
			{acquire: time.Hour, wantOpen: 2, wantKept: 2},
			{acquire: time.Hour, wantOpen: 3, wantKept: 3},
			{acquire: time.Hour, wantOpen: 4, wantKept: 4},
			{close: 1, wantOpen: 3, wantKept: 4},
			{close: 2, wantOpen: 2, wantKept: 4},
			{close: 3, wantOpen: 1, wantKept: 3},
			{close: 4, wantOpen: 0, wantKept: 2},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := newSessionStore(tc.ttl, 0, tc.max)
			if tc.maxRetired > 0 {
				st.maxRetired = tc.maxRetired
			}
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			st.now = func() time.Time { return now }
			ids := make([]string, len(tc.steps))
			for i, s := range tc.steps {
				if s.acquire > 0 {
					sess, err := st.acquire(s.acquire, false)
					if s.wantErr {
						assert.ErrorIs(t, err, errTooManySessions, "step %d", i+1)
					} else if assert.NoError(t, err, "step %d", i+1) {
						ids[i] = sess.id
					}
				}
				if s.close > 0 {
					st.close(ids[s.close-1])
				}
				now = now.Add(s.advance)
				assert.Equal(t, s.wantOpen, st.openCount(), "step %d: open", i+1)
				st.mu.Lock()
				kept, indexed := len(st.sessions), st.open.Len()
				st.mu.Unlock()
				assert.Equal(t, s.wantKept, kept, "step %d: known", i+1)
				assert.Equal(t, s.wantOpen, int64(indexed), "step %d: index", i+1)
			}
		})
	}
}

// TestSessionStoreScales acquires 100k sessions under --max-sessions and
// then more as they expire: each acquisition costs O(log n), where a scan
// of all sessions per acquisition took 13 minutes of CPU for 100k.
func TestSessionStoreScales(t *testing.T) {
	const n = 100_000
	st := newSessionStore(0, 0, n)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	st.now = func() time.Time { return now }
	start := time.Now()
	for i := range n {
		// Ends spread over 1..1000 s, out of acquisition order.
		_, err := st.acquire(time.Duration(1+i*7919%1000)*time.Second, false)
		require.NoError(t, err)
	}
	_, err := st.acquire(time.Hour, false)
	require.ErrorIs(t, err, errTooManySessions)
	now = now.Add(500 * time.Second) // about half have ended
	open := st.openCount()
	for range n - open {
		_, err := st.acquire(time.Hour, false)
		require.NoError(t, err)
	}
	_, err = st.acquire(time.Hour, false)
	require.ErrorIs(t, err, errTooManySessions)
	elapsed := time.Since(start)
	t.Logf("%d acquisitions (%d open at the half-way expiry) in %s", 2*n-int(open), open, elapsed.Round(time.Millisecond))
	assert.Equal(t, int64(n), st.openCount())
	// Linear work takes about a second under -race; the scan took minutes.
	assert.Less(t, elapsed, 20*time.Second)
}
