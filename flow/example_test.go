package flow_test

import (
	"context"
	"fmt"

	"github.com/oceanum-dmfs/dmfs/flow"
)

// Each attempt of a request holds a permit while it is sent and its answer
// read, and releases it with what the answer says of the gateway's load.
func ExampleLimiter() {
	l, err := flow.New(flow.Config{Max: 256})
	if err != nil {
		fmt.Println(err)
		return
	}
	p, err := l.Acquire(context.Background(), false) // a reader waits for this one
	if err != nil {
		return // cancelled while waiting: nothing to release
	}
	// ... send the request, read the answer: 200 or 404 ...
	p.Release(flow.Success, 0)
	// ... or 429 with Retry-After: 2 -> p.Release(flow.Overload, 2*time.Second)

	st := l.Stats()
	fmt.Println(l.Limit(), l.Max(), st.InFlight, st.Acquired)
	// Output: 16 256 0 1
}
