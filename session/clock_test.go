package session

import (
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock that moves only when a test advances it. Every timer
// it hands out is reported on armed, so a test can wait for the code under
// test to be waiting, and then know it cannot act before the next Advance.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
	armed  chan time.Duration
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock(now time.Time) *fakeClock {
	return &fakeClock{now: now, armed: make(chan time.Duration, 1024)}
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	f.mu.Lock()
	t := &fakeTimer{at: f.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.ch <- f.now
	} else {
		f.timers = append(f.timers, t)
	}
	f.mu.Unlock()
	f.armed <- d
	return t.ch, func() bool { return f.stop(t) }
}

func (f *fakeClock) stop(t *fakeTimer) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, x := range f.timers {
		if x == t {
			f.timers = append(f.timers[:i], f.timers[i+1:]...)
			return true
		}
	}
	return false
}

// Advance moves the clock by d and fires the timers that are then due.
func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	kept := f.timers[:0]
	for _, t := range f.timers {
		if t.at.After(f.now) {
			kept = append(kept, t)
			continue
		}
		t.ch <- f.now
	}
	f.timers = kept
}

// waitArmed waits (in real time, for something that must happen) until a
// timer for which match is true has been handed out, and returns its
// duration. Timers that do not match are skipped.
func (f *fakeClock) waitArmed(t *testing.T, match func(time.Duration) bool) time.Duration {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case d := <-f.armed:
			if match(d) {
				return d
			}
		case <-deadline:
			t.Fatal("no matching timer was armed")
		}
	}
}

// pending is the number of timers not yet fired or stopped.
func (f *fakeClock) pending() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.timers)
}

func is(want time.Duration) func(time.Duration) bool {
	return func(d time.Duration) bool { return d == want }
}

// advanceWhenArmed advances f by d once a timer of exactly d is armed, in the
// background: for a call that blocks on that timer.
func advanceWhenArmed(t *testing.T, f *fakeClock, d time.Duration) {
	done := make(chan struct{})
	t.Cleanup(func() { <-done })
	go func() {
		defer close(done)
		deadline := time.After(10 * time.Second)
		for {
			select {
			case got := <-f.armed:
				if got == d {
					f.Advance(d)
					return
				}
			case <-deadline:
				t.Errorf("no timer of %s was armed", d)
				return
			}
		}
	}()
}
