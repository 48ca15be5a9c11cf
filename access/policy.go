// Package access decides what reading a mount's chunk files should cost the gateway: whether a
// lookup of a chunk whose size is unknown sends a HEAD or a GET, and which chunks to fetch
// ahead of whoever reads them. The filesystem reports events (an array's chunks listed, a chunk
// looked up, a file read) and acts on the decisions; the policy does no I/O, so it is tested with
// tables of event sequences and an injected clock.
//
// Each array is in one of four states, from what was seen of it lately:
//
//		            Listed                      read of .zarray or a chunk
//		  (any) ----------> lister ----------------------------------------> copier
//		                      |   within copierWindow of the listing          |
//		                      |                                               | reads in key order
//		                      | read later than that                          v
//		                      +-------------------------> reader: sequential <-> random
//		                                                         in key order    out of order
//
//	  - lister (ls -l, du): its chunks were listed and nothing of the array was read since. A
//	    lookup costs a HEAD (it stats and reads nothing), and the sizes of the next chunks are
//	    asked ahead, so that a lister that stats one file at a time finds them known. Every
//	    lookup keeps the state, however long the folder (within listerWindow of the last one).
//	  - copier (cp -r, tar, rsync): the array's metadata or a chunk was read right after the
//	    listing: every chunk from there on is fetched ahead at once, as deep as allowed.
//	  - sequential reader (cp, a dask job walking an array): each chunk read is at most
//	    sequentialSlack keys after the previous one (parallel readers are slightly out of
//	    order): the chunks that follow are fetched ahead.
//	  - random reader (xarray selecting a region): nothing is fetched ahead.
//
// A lookup outside the lister state costs a GET: a reader (xarray, dask) stats then opens, and
// should pay exactly one request. Once a gateway's HEAD has answered without a size, every
// lookup costs a GET.
//
// How far ahead: Readahead chunks at least (0 turns readahead off), or the fetch window the
// gateway sustains (Config.Window: the adaptive concurrency limit), whichever is larger, so that
// the fetches in flight fill the window whatever the latency; and never more than Budget bytes
// of chunks of the size read, so that readahead never evicts what is being read.
package access

import (
	"slices"
	"sync"
	"time"
)

const (
	// listerWindow is how long after a listing of an array's chunks (or the lister's last
	// lookup) a lookup of an unknown chunk is taken to come from the lister.
	listerWindow = 30 * time.Second
	// copierWindow is how soon after the listing a read must come to be a tool copying the
	// whole folder, not a person.
	copierWindow = time.Second
	// sequentialSlack is how far after the previous read a chunk may be and still count as
	// reading in key order.
	sequentialSlack = 4
)

// Order gives an array's chunk keys in key order: After returns up to n keys after key ("" for
// the first ones). *zarr.Array's ChunkKeysAfter is one.
type Order func(key string, n int) []string

// Config configures a Policy. Zero values: no readahead, the system clock.
type Config struct {
	// Readahead is the least number of chunks fetched ahead (--readahead); 0 turns readahead off.
	Readahead int
	// Window is the number of fetches the gateway sustains at once, read at each decision
	// (nil: Readahead alone decides).
	Window func() int
	// Budget bounds the bytes fetched ahead (0: no bound), given the size of the chunk read.
	Budget int64
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Policy holds the access state of one datasource's arrays. It is safe for concurrent use.
type Policy struct {
	cfg Config

	mu     sync.Mutex
	noHead bool
	arrays map[string]*array
}

// array is what was seen of one array lately.
type array struct {
	listedAt time.Time // last listing of its chunks, or the lister's last lookup
	readAt   time.Time // last read of its metadata or a chunk
	lastRead string    // the chunk last read ("" for none)
}

// New returns a Policy with nothing seen.
func New(cfg Config) *Policy {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Policy{cfg: cfg, arrays: map[string]*array{}}
}

// Fetch is how a lookup learns a chunk's size.
type Fetch int

const (
	Get  Fetch = iota // the body, into the cache: a reader is about to open it
	Head              // the size alone: a lister reads nothing
)

func (f Fetch) String() string {
	if f == Head {
		return "HEAD"
	}
	return "GET"
}

// Lookup is the decision for a lookup of a chunk whose size is not known.
type Lookup struct {
	Fetch Fetch
	// SizesAhead are the chunks whose sizes to ask in the background (a lister's next stats).
	SizesAhead []string
}

// state returns the array's record, made on first use. p.mu must be held.
func (p *Policy) state(path string) *array {
	a := p.arrays[path]
	if a == nil {
		a = &array{}
		p.arrays[path] = a
	}
	return a
}

// listerLocked reports whether a is in the lister state at now. p.mu must be held.
func listerLocked(a *array, now time.Time) bool {
	return !a.listedAt.IsZero() && now.Sub(a.listedAt) < listerWindow && !a.readAt.After(a.listedAt)
}

// Listed records a listing of the array's chunks (a readdir of its chunk folder).
func (p *Policy) Listed(arrayPath string) {
	p.mu.Lock()
	p.state(arrayPath).listedAt = p.cfg.Now()
	p.mu.Unlock()
}

// HeadUnsupported records that the gateway's HEAD answered without a size: from now on a
// lookup costs a GET.
func (p *Policy) HeadUnsupported() {
	p.mu.Lock()
	p.noHead = true
	p.mu.Unlock()
}

// Lister reports whether lookups in the array now come from a lister (see the package
// comment), for callers that hold a chunk's bytes and must decide whether to check them.
func (p *Policy) Lister(arrayPath string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.noHead && listerLocked(p.state(arrayPath), p.cfg.Now())
}

// LookedUp decides how a lookup of chunk key of the array, whose size is not known, learns it.
// A lister's lookup keeps the lister state open.
func (p *Policy) LookedUp(arrayPath string, order Order, key string) Lookup {
	p.mu.Lock()
	a := p.state(arrayPath)
	now := p.cfg.Now()
	if p.noHead || !listerLocked(a, now) {
		p.mu.Unlock()
		return Lookup{Fetch: Get}
	}
	a.listedAt = now
	n := max(p.depthLocked(0), 1)
	p.mu.Unlock()
	return Lookup{Fetch: Head, SizesAhead: order(key, n)}
}

// Read records a read of the array: of its metadata (key "") or of chunk key (size bytes, 0 if
// unknown) from its start. It returns the chunks to fetch ahead, in key order; the caller
// fetches them unless already known.
func (p *Policy) Read(arrayPath string, order Order, key string, size int64) []string {
	p.mu.Lock()
	a := p.state(arrayPath)
	now := p.cfg.Now()
	copying := !a.listedAt.IsZero() && now.Sub(a.listedAt) < copierWindow && !a.readAt.After(a.listedAt)
	prev := a.lastRead
	a.readAt = now
	if key != "" {
		a.lastRead = key
	}
	n := p.depthLocked(size)
	p.mu.Unlock()
	if n <= 0 {
		return nil
	}
	switch {
	case copying && key == "":
		return order("", n)
	case copying:
		return append([]string{key}, order(key, n)...)
	case key != "" && prev != "" && prev != key && slices.Contains(order(prev, sequentialSlack), key):
		return order(key, n)
	}
	return nil
}

// Depth is how many chunks of size bytes (0: unknown) are fetched ahead now.
func (p *Policy) Depth(size int64) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.depthLocked(size)
}

func (p *Policy) depthLocked(size int64) int {
	n := p.cfg.Readahead
	if n <= 0 {
		return 0
	}
	if p.cfg.Window != nil {
		n = max(n, p.cfg.Window())
	}
	if p.cfg.Budget > 0 && size > 0 {
		n = int(min(int64(n), max(p.cfg.Budget/size, 1)))
	}
	return n
}

// Forget drops what was seen of every array (the datasource's tree was released).
func (p *Policy) Forget() {
	p.mu.Lock()
	p.arrays = map[string]*array{}
	p.mu.Unlock()
}
