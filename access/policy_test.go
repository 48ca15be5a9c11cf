package access

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// grid is the key order of a one-dimensional array of n chunks named "0".."n-1".
func grid(n int) Order {
	return func(key string, k int) []string {
		i := 0
		if key != "" {
			fmt.Sscan(key, &i)
			i++
		}
		var out []string
		for ; i < n && len(out) < k; i++ {
			out = append(out, fmt.Sprint(i))
		}
		return out
	}
}

// step is one event and, for lookups and reads, the decision expected.
type step struct {
	at   time.Duration // since the start
	do   string        // "list", "lookup", "read", "nohead"
	key  string
	size int64
	// want: for a lookup, its Fetch and SizesAhead; for a read, the keys fetched ahead.
	fetch Fetch
	ahead []string
}

func TestPolicy(t *testing.T) {
	keys := func(from, to int) []string {
		var out []string
		for i := from; i <= to; i++ {
			out = append(out, fmt.Sprint(i))
		}
		return out
	}
	cases := []struct {
		name   string
		cfg    Config
		window int
		steps  []step
	}{
		{"reader stats then opens: a GET, nothing ahead", Config{Readahead: 4}, 0, []step{
			{do: "lookup", key: "5", fetch: Get},
			{do: "read", key: "5"},
		}},
		{"lister: HEADs, and sizes asked ahead", Config{Readahead: 3}, 0, []step{
			{do: "list"},
			{at: time.Millisecond, do: "lookup", key: "0", fetch: Head, ahead: keys(1, 3)},
			{at: 2 * time.Millisecond, do: "lookup", key: "1", fetch: Head, ahead: keys(2, 4)},
		}},
		{"a lister at work keeps its window open", Config{Readahead: 1}, 0, []step{
			{do: "list"},
			{at: 20 * time.Second, do: "lookup", key: "0", fetch: Head, ahead: keys(1, 1)},
			{at: 40 * time.Second, do: "lookup", key: "1", fetch: Head, ahead: keys(2, 2)},
			{at: 80 * time.Second, do: "lookup", key: "2", fetch: Get},
		}},
		{"a read ends the lister state", Config{Readahead: 2}, 0, []step{
			{do: "list"},
			{at: 2 * time.Second, do: "read", key: "7"},
			{at: 3 * time.Second, do: "lookup", key: "8", fetch: Get},
		}},
		{"copier: metadata read right after the listing fetches from the start", Config{Readahead: 3}, 0, []step{
			{do: "list"},
			{at: 100 * time.Millisecond, do: "read", key: "", ahead: keys(0, 2)},
			{at: 200 * time.Millisecond, do: "read", key: "0"},
			{at: 300 * time.Millisecond, do: "read", key: "1", ahead: keys(2, 4)},
		}},
		{"copier starting at a chunk includes it", Config{Readahead: 2}, 0, []step{
			{do: "list"},
			{at: 100 * time.Millisecond, do: "read", key: "4", ahead: []string{"4", "5", "6"}},
		}},
		{"a read long after the listing is not a copier", Config{Readahead: 2}, 0, []step{
			{do: "list"},
			{at: 5 * time.Second, do: "read", key: ""},
		}},
		{"sequential reader within the slack", Config{Readahead: 2}, 0, []step{
			{do: "read", key: "0"},
			{do: "read", key: "0"},
			{do: "read", key: "4", ahead: keys(5, 6)},
			{do: "read", key: "9"},
			{do: "read", key: "3"},
		}},
		{"readahead off", Config{}, 0, []step{
			{do: "list"},
			{do: "read", key: ""},
			{do: "read", key: "0"},
			{do: "read", key: "1"},
		}},
		{"the gateway's window deepens readahead", Config{Readahead: 2}, 5, []step{
			{do: "read", key: "0"},
			{do: "read", key: "1", ahead: keys(2, 6)},
		}},
		{"the budget bounds readahead by the chunk size", Config{Readahead: 8, Budget: 300}, 0, []step{
			{do: "read", key: "0", size: 100},
			{do: "read", key: "1", size: 100, ahead: keys(2, 4)},
			{do: "read", key: "2", size: 1000, ahead: keys(3, 3)},
		}},
		{"no HEAD support: lookups GET", Config{Readahead: 2}, 0, []step{
			{do: "list"},
			{do: "nohead"},
			{do: "lookup", key: "0", fetch: Get},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			now := start
			c.cfg.Now = func() time.Time { return now }
			if c.window > 0 {
				c.cfg.Window = func() int { return c.window }
			}
			p := New(c.cfg)
			order := grid(100)
			for i, s := range c.steps {
				now = start.Add(s.at)
				switch s.do {
				case "list":
					p.Listed("a")
				case "nohead":
					p.HeadUnsupported()
				case "lookup":
					got := p.LookedUp("a", order, s.key)
					assert.Equal(t, Lookup{Fetch: s.fetch, SizesAhead: s.ahead}, got, "step %d", i)
				case "read":
					assert.Equal(t, s.ahead, p.Read("a", order, s.key, s.size), "step %d", i)
				default:
					t.Fatalf("bad step %q", s.do)
				}
			}
		})
	}
}

func TestPolicyArraysAreSeparate(t *testing.T) {
	p := New(Config{Readahead: 2})
	p.Listed("a")
	assert.True(t, p.Lister("a"))
	assert.False(t, p.Lister("b"))
	assert.Equal(t, Get, p.LookedUp("b", grid(10), "0").Fetch)
	p.Forget()
	assert.False(t, p.Lister("a"))
}

func TestDepth(t *testing.T) {
	w := 10
	p := New(Config{Readahead: 4, Window: func() int { return w }, Budget: 1000})
	assert.Equal(t, 10, p.Depth(0))
	assert.Equal(t, 10, p.Depth(50))
	assert.Equal(t, 5, p.Depth(200))
	assert.Equal(t, 1, p.Depth(5000), "at least one chunk ahead")
	w = 2
	assert.Equal(t, 4, p.Depth(0), "never below --readahead")
	assert.Equal(t, 0, New(Config{Window: func() int { return 64 }}).Depth(0), "readahead off stays off")
}
