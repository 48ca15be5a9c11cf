package session

import "time"

// clock is the time the session lifecycle runs on (when a session was
// acquired, when to renew it); tests replace it to prove what does not
// happen without waiting for it. HTTP timeouts and retry waits use real time.
type clock interface {
	Now() time.Time
	// NewTimer returns a channel that receives once d has passed, and a
	// function that stops it.
	NewTimer(d time.Duration) (<-chan time.Time, func() bool)
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}
