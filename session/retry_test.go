package session

import (
	"sync"
	"time"
)

// autoClock is a retry clock on which every wait ends at once, moving the
// clock by its length: minutes of retries take no real time, and their
// count is exact.
type autoClock struct {
	mu  sync.Mutex
	now time.Time
}

func (a *autoClock) Now() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.now
}

func (a *autoClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	a.mu.Lock()
	a.now = a.now.Add(d)
	now := a.now
	a.mu.Unlock()
	ch := make(chan time.Time, 1)
	ch <- now
	return ch, func() bool { return false }
}

// instantRetries puts c's retries on an autoClock, with waits of exactly
// the backoff (no jitter). It returns the clock.
func instantRetries(c *Client) *autoClock {
	clk := &autoClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	c.retryClock = clk
	c.jitter = func(d time.Duration) time.Duration { return d }
	return clk
}
