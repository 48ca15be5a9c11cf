// Package flow bounds the requests in flight to one gateway with a limit
// that adapts to what the gateway can take, instead of a fixed width.
//
// A Limiter hands out permits. Each request attempt holds one from just
// before it is sent until its answer is read, then releases it with its
// Outcome: Success (any answer that is not congestion, 404 included),
// Overload (429, 503), Failure (timeout, connection error, 502, 504) or
// Dropped (cancelled by its caller). Waiting callers are served in order,
// foreground (someone is waiting for the bytes) always before background
// (readahead), so readahead never makes a reader queue behind it.
//
// # Control law
//
// The limit follows the round-trip time (RTT) of successful requests,
// measured from the permit's grant to its release, transfer included:
//
//   - No-load RTT: the minimum RTT over the current and the previous
//     30-second window. Each window begins with a probe: for as many
//     requests as half the limit, at most half the limit may be in flight,
//     so that a queue the limiter itself keeps standing at the gateway
//     drains and the true minimum is measured again. Without it the minimum
//     would creep up with that queue and the limit with it. The first
//     requests of a Limiter are such a probe.
//   - Rounds: once per limit's worth of successes (about one RTT), the
//     round's lower quartile RTT (a queue at the gateway delays every
//     request, noise only some) less the no-load RTT is the queueing delay.
//     Its allowance is a quarter of the no-load RTT, at least 2 ms (below
//     that, scheduling noise is not congestion). Within the allowance the
//     limit grows, if the round used at least half of it (an unused limit
//     never grows): doubling per round at first (slow start, until the
//     first sign of congestion), then by one per round. Past four
//     allowances (2x the no-load RTT), or past one in slow start (the
//     doubling overshot), it shrinks in proportion, to where the delay
//     would be back at the allowance, at most halving per round, and goes
//     on shrinking round after round until the delay is within the
//     allowance. Between one and four allowances, reached by growing, it
//     holds: jitter pushes it neither way.
//   - Overload or Failure: the limit is multiplied by 0.7, at most once per
//     batch of requests sent at one limit: answers to requests granted
//     before the last cut do not cut again, so a burst of 429s costs one
//     step, not a collapse to the minimum. A Retry-After holds back every
//     new grant, foreground too, until it passes (at most 30 s), when at
//     least half of the last 32 answers were refused; otherwise it delays
//     only the retry of its own request (which the caller waits for), so
//     that a few throttled answers among many good ones do not stall
//     every reader.
//
// The limit stays within [Config.Min, Config.Max]. On a gateway that queues
// requests beyond a capacity C, RTT = service time x in-flight / C past C,
// so the limit settles between 1.25 C and 2 C, near the first: the gateway
// is kept busy behind a short queue (the tests drive a simulated gateway of
// capacity 32 and see about 1.35 C). Requests of very different sizes
// (HEADs beside large chunks) make the RTT noisier; the quartile and the
// window's re-probe, which relearns the minimum of the mix in use, bound
// the harm.
package flow
