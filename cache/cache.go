// Package cache keeps fetched chunk bytes in memory, bounded by their total size, and makes sure
// each key is fetched at most once at a time however many readers ask for it.
//
// It also remembers what is known about a key without its bytes (its size from a HEAD, or that it
// does not exist) and runs bounded background prefetches for readahead. It knows nothing of Zarr,
// FUSE or HTTP: callers hand it fetch functions.
package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Defaults used for zero fields of Options.
const (
	DefaultMaxBytes        = 256 << 20
	DefaultMaxStatEntries  = 1 << 20
	DefaultPrefetchWorkers = 16
	DefaultFetchTimeout    = 2 * time.Minute
	DefaultMissingTTL      = 5 * time.Minute
)

// prefetchQueuePerWorker bounds the prefetch queue: readahead is a hint, so requests beyond
// this backlog are dropped rather than queued behind slow fetches.
const prefetchQueuePerWorker = 4

// ErrClosed is returned for fetches asked of, or cancelled by, a closed Cache.
var ErrClosed = errors.New("cache: closed")

// FetchFunc fetches the bytes of one key. An error that matches fs.ErrNotExist means the key
// does not exist; the cache remembers that.
type FetchFunc func(ctx context.Context) ([]byte, error)

// Options configures a Cache. Zero fields take the Default* values.
type Options struct {
	MaxBytes        int64         // budget for cached bytes (see Cache for one exception)
	MaxStatEntries  int           // number of keys whose size or absence is remembered
	PrefetchWorkers int           // concurrent background prefetches
	FetchTimeout    time.Duration // limit for each shared fetch or head, detached from callers
	// MissingTTL is how long a not-found answer is believed: a sparse chunk may be written
	// later without any metadata change, and must then appear.
	MissingTTL time.Duration
	Logger     *slog.Logger
	// Now is the clock for missing marks and entry ages (see Age); time.Now when nil. Tests,
	// and callers that share a clock with the cache, set it.
	Now func() time.Time
}

// StatState says what the cache knows about a key.
type StatState int

const (
	StatUnknown StatState = iota // nothing known
	StatPresent                  // bytes cached; size is their length
	StatSized                    // size known, bytes not cached
	StatMissing                  // the key does not exist
)

func (s StatState) String() string {
	switch s {
	case StatUnknown:
		return "unknown"
	case StatPresent:
		return "present"
	case StatSized:
		return "sized"
	case StatMissing:
		return "missing"
	}
	return fmt.Sprintf("StatState(%d)", int(s))
}

// Stats is a snapshot of the cache counters.
type Stats struct {
	Hits            int64 // GetOrFetch/Get answered from cache (bytes, or known missing)
	Misses          int64 // GetOrFetch calls that had to fetch or wait for a fetch
	Fetches         int64 // body fetches started (by GetOrFetch or prefetch)
	FetchErrors     int64 // body fetches that failed other than with not-found
	Heads           int64 // head calls started by SizeOrHead
	PrefetchStarted int64 // prefetches a worker began fetching
	PrefetchDropped int64 // prefetch requests dropped because the queue was full
	Evictions       int64 // entries evicted to respect MaxBytes
	Bytes           int64 // bytes currently cached within MaxBytes
	OversizeBytes   int64 // the one value larger than MaxBytes held besides, if any
	MaxBytes        int64
	Entries         int // values currently cached
}

// Cache is a byte-bounded LRU of fetched values with single-flight fetches. It is safe for
// concurrent use. Values it returns are shared: callers must not modify them.
//
// A value larger than the whole budget cannot live in the LRU; the most recent such value is
// held besides it (one at a time), so that a file read in many pieces, such as a big shard,
// is not fetched again for every piece.
type Cache struct {
	maxBytes   int64
	timeout    time.Duration
	missingTTL time.Duration
	log        *slog.Logger
	now        func() time.Time // Options.Now
	onWait     func()           // tests: called when a caller starts waiting for a shared call

	mu    sync.Mutex
	data  *simplelru.LRU[string, dataEntry]
	bytes int64
	// oversizeKey/oversize: the most recent value larger than maxBytes.
	oversizeKey string
	oversize    dataEntry
	stat        *simplelru.LRU[string, statEntry]
	flights     map[string]*flight     // body fetches queued or running
	heads       map[string]*headFlight // SizeOrHead calls running
	closed      bool

	queue     chan *flight
	closeCtx  context.Context
	closeFn   context.CancelFunc
	closeOnce sync.Once
	workers   sync.WaitGroup // prefetch workers
	running   sync.WaitGroup // fetch and head goroutines outside the workers

	hits, misses, fetches, fetchErrors, headCalls atomic.Int64
	prefetchStarted, prefetchDropped, evictions   atomic.Int64
}

// dataEntry is a cached value and when it was fetched.
type dataEntry struct {
	val []byte
	at  time.Time // when the fetch that got val started: val is at least that recent
}

type statEntry struct {
	size    int64
	missing bool
	at      time.Time // when this was learnt (for a fetch or head, when it started)
	until   time.Time // a missing mark is forgotten after this
}

// flight is one body fetch, shared by every caller that wants the key meanwhile.
type flight struct {
	key     string
	fetch   FetchFunc
	parent  context.Context // values for the fetch context; never its cancellation
	started bool            // guarded by Cache.mu; false while queued for a prefetch worker
	// stale is set, under Cache.mu, by Invalidate, which also takes the flight out of
	// Cache.flights: its result is not kept, and no caller after the invalidation joins it.
	stale bool
	at    time.Time // when the fetch started, for the entry's age
	done  chan struct{}
	val   []byte
	err   error
}

type headFlight struct {
	stale bool // guarded by Cache.mu; as flight.stale
	done  chan struct{}
	size  int64
	err   error
}

// New returns a Cache with its prefetch workers running. Call Close to stop them.
func New(opt Options) *Cache {
	if opt.MaxBytes <= 0 {
		opt.MaxBytes = DefaultMaxBytes
	}
	if opt.MaxStatEntries <= 0 {
		opt.MaxStatEntries = DefaultMaxStatEntries
	}
	if opt.PrefetchWorkers <= 0 {
		opt.PrefetchWorkers = DefaultPrefetchWorkers
	}
	if opt.FetchTimeout <= 0 {
		opt.FetchTimeout = DefaultFetchTimeout
	}
	if opt.MissingTTL <= 0 {
		opt.MissingTTL = DefaultMissingTTL
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	// The data LRU is bounded by bytes, which we enforce ourselves; its count bound is only
	// there because simplelru needs one. Both sizes are positive, so NewLRU cannot fail.
	data, err := simplelru.NewLRU[string, dataEntry](math.MaxInt, nil)
	if err != nil {
		panic(err)
	}
	stat, err := simplelru.NewLRU[string, statEntry](opt.MaxStatEntries, nil)
	if err != nil {
		panic(err)
	}
	closeCtx, closeFn := context.WithCancel(context.Background())
	c := &Cache{
		maxBytes:   opt.MaxBytes,
		timeout:    opt.FetchTimeout,
		missingTTL: opt.MissingTTL,
		log:        opt.Logger,
		now:        opt.Now,
		data:       data,
		stat:       stat,
		flights:    make(map[string]*flight),
		heads:      make(map[string]*headFlight),
		queue:      make(chan *flight, prefetchQueuePerWorker*opt.PrefetchWorkers),
		closeCtx:   closeCtx,
		closeFn:    closeFn,
	}
	c.workers.Add(opt.PrefetchWorkers)
	for range opt.PrefetchWorkers {
		go c.prefetchWorker()
	}
	return c
}

// statLocked returns what is remembered of key's size or absence, forgetting a missing mark
// that has expired. touch marks the entry as recently used. c.mu must be held.
func (c *Cache) statLocked(key string, touch bool) (statEntry, bool) {
	var st statEntry
	var ok bool
	if touch {
		st, ok = c.stat.Get(key)
	} else {
		st, ok = c.stat.Peek(key)
	}
	if ok && st.missing && !c.now().Before(st.until) {
		c.stat.Remove(key)
		return statEntry{}, false
	}
	return st, ok
}

// setMissingLocked remembers, for MissingTTL, that key does not exist. c.mu must be held.
func (c *Cache) setMissingLocked(key string) {
	now := c.now()
	c.stat.Add(key, statEntry{missing: true, at: now, until: now.Add(c.missingTTL)})
}

// notFound is what callers get for a key already known to be missing.
func notFound(key string) error {
	return &fs.PathError{Op: "fetch", Path: key, Err: fs.ErrNotExist}
}

// GetOrFetch returns the cached bytes of key, or fetches them with fetch, sharing one fetch
// among all concurrent callers (and with a prefetch of the same key). The fetch runs detached
// from ctx, under FetchTimeout, so a caller that gives up (ctx done, ctx.Err() returned at once)
// does not fail the others, and the result is still cached. Failures are not cached, except
// not-found, which is remembered (see Stat) and returned as an error matching fs.ErrNotExist.
// The returned slice is shared and must not be modified.
func (c *Cache) GetOrFetch(ctx context.Context, key string, fetch FetchFunc) ([]byte, error) {
	if fetch == nil {
		return nil, fmt.Errorf("cache: GetOrFetch %q: nil fetch func", key)
	}
	c.mu.Lock()
	if v, ok := c.getLocked(key, true); ok {
		c.mu.Unlock()
		c.hits.Add(1)
		return v, nil
	}
	if st, ok := c.statLocked(key, true); ok && st.missing {
		c.mu.Unlock()
		c.hits.Add(1)
		return nil, notFound(key)
	}
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	if err := ctx.Err(); err != nil { // nobody would wait for the fetch
		c.mu.Unlock()
		return nil, err
	}
	c.misses.Add(1)
	f, ok := c.flights[key]
	if !ok {
		f = &flight{key: key, fetch: fetch, parent: ctx, done: make(chan struct{})}
		c.flights[key] = f
	}
	if !f.started {
		f.fetch, f.parent = fetch, ctx
		c.startLocked(f)
	}
	c.mu.Unlock()

	c.waiting()
	select {
	case <-f.done:
		return f.val, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// waiting calls the test hook onWait.
func (c *Cache) waiting() {
	if c.onWait != nil {
		c.onWait()
	}
}

// startLocked runs f now in its own goroutine. f is new, or queued for a prefetch worker: a
// reader should not wait behind the readahead backlog, so the worker will skip it. c.mu must be
// held and the cache open.
func (c *Cache) startLocked(f *flight) {
	f.started = true
	c.running.Add(1)
	go func() {
		defer c.running.Done()
		c.runFetch(f)
	}()
}

// Get returns the cached bytes of key without fetching. A present key counts as a hit and as
// recently used; an absent one is not counted as a miss (nothing was asked of the network).
// The returned slice is shared and must not be modified.
func (c *Cache) Get(key string) ([]byte, bool) {
	c.mu.Lock()
	v, ok := c.getLocked(key, true)
	c.mu.Unlock()
	if ok {
		c.hits.Add(1)
	}
	return v, ok
}

// Prefetch starts fetching key in the background, for readahead, and returns at once. It does
// nothing if the key is cached, known missing or already being fetched, and drops the request
// if the prefetch queue is full or the cache is closed.
func (c *Cache) Prefetch(key string, fetch FetchFunc) {
	if fetch == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.getLocked(key, false); ok || c.closed || c.flights[key] != nil {
		return
	}
	if st, ok := c.statLocked(key, false); ok && st.missing {
		return
	}
	f := &flight{key: key, fetch: fetch, parent: context.Background(), done: make(chan struct{})}
	select {
	case c.queue <- f:
		c.flights[key] = f
	default:
		c.prefetchDropped.Add(1)
		c.log.Debug("cache: prefetch dropped, queue full", "key", key)
	}
}

func (c *Cache) prefetchWorker() {
	defer c.workers.Done()
	for {
		select {
		case <-c.closeCtx.Done():
			return
		case f := <-c.queue:
			c.mu.Lock()
			if f.started { // taken over by a GetOrFetch
				c.mu.Unlock()
				continue
			}
			if c.closed {
				c.abandonLocked(f, ErrClosed)
				c.mu.Unlock()
				continue
			}
			if f.stale { // invalidated while queued: nobody waits for it
				c.abandonLocked(f, errInvalidated)
				c.mu.Unlock()
				continue
			}
			f.started = true
			c.mu.Unlock()
			c.prefetchStarted.Add(1)
			c.runFetch(f)
		}
	}
}

// errInvalidated ends a queued prefetch that Invalidate made pointless. Nobody sees it: a caller
// who wanted the key would have started the flight.
var errInvalidated = errors.New("cache: invalidated")

// abandonLocked ends a queued flight that will never run. c.mu must be held.
func (c *Cache) abandonLocked(f *flight, err error) {
	if c.flights[f.key] == f {
		delete(c.flights, f.key)
	}
	f.err = err
	close(f.done)
}

// fetchContext is the context of a shared fetch: the values of parent, none of its
// cancellation, the fetch timeout, and cancelled by Close.
func (c *Cache) fetchContext(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), c.timeout)
	stop := context.AfterFunc(c.closeCtx, cancel)
	return ctx, func() { stop(); cancel() }
}

// runFetch performs f's fetch, records the result and releases its waiters.
func (c *Cache) runFetch(f *flight) {
	c.fetches.Add(1)
	f.at = c.now()
	ctx, cancel := c.fetchContext(f.parent)
	start := time.Now()
	val, err := callFetch(ctx, f.fetch)
	cancel()

	c.mu.Lock()
	if c.flights[f.key] == f {
		delete(c.flights, f.key)
	}
	switch {
	case err == nil:
		if !f.stale {
			c.addLocked(f.key, dataEntry{val: val, at: f.at})
			c.stat.Add(f.key, statEntry{size: int64(len(val)), at: f.at})
		}
	case errors.Is(err, fs.ErrNotExist):
		if !f.stale {
			c.setMissingLocked(f.key)
		}
	default:
		c.fetchErrors.Add(1)
	}
	f.val, f.err = val, err
	close(f.done)
	c.mu.Unlock()

	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		c.log.Debug("cache: fetch failed", "key", f.key, "duration", time.Since(start), "err", err)
	}
}

// callFetch turns a panic in a fetch func into an error: waiters must be released either way.
func callFetch(ctx context.Context, fetch FetchFunc) (val []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			val, err = nil, fmt.Errorf("cache: fetch panicked: %v", r)
		}
	}()
	return fetch(ctx)
}

// getLocked returns the cached bytes of key, from the LRU (marked as recently used when touch)
// or the oversize slot. c.mu must be held.
func (c *Cache) getLocked(key string, touch bool) ([]byte, bool) {
	e, ok := c.entryLocked(key, touch)
	return e.val, ok
}

// entryLocked is getLocked with the time of the fetch. c.mu must be held.
func (c *Cache) entryLocked(key string, touch bool) (dataEntry, bool) {
	var e dataEntry
	var ok bool
	if touch {
		e, ok = c.data.Get(key)
	} else {
		e, ok = c.data.Peek(key)
	}
	if !ok && c.oversize.val != nil && c.oversizeKey == key {
		e, ok = c.oversize, true
	}
	return e, ok
}

// dropLocked forgets the cached bytes of key. c.mu must be held.
func (c *Cache) dropLocked(key string) {
	if old, ok := c.data.Peek(key); ok {
		c.data.Remove(key)
		c.bytes -= int64(len(old.val))
	}
	if c.oversizeKey == key {
		c.oversizeKey, c.oversize = "", dataEntry{}
	}
}

// addLocked stores e under key and evicts the least recently used entries beyond the byte
// budget. A value larger than the whole budget replaces the oversize slot instead. c.mu must
// be held.
func (c *Cache) addLocked(key string, e dataEntry) {
	c.dropLocked(key)
	n := int64(len(e.val))
	if n > c.maxBytes {
		c.oversizeKey, c.oversize = key, e
		return
	}
	for c.bytes+n > c.maxBytes {
		_, old, ok := c.data.RemoveOldest()
		if !ok {
			break
		}
		c.bytes -= int64(len(old.val))
		c.evictions.Add(1)
	}
	c.data.Add(key, e)
	c.bytes += n
}

// Stat says what is known about key without fetching: its bytes are cached (size is their
// length), its size is known, it is missing, or nothing is known.
func (c *Cache) Stat(key string) (size int64, state StatState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok := c.getLocked(key, false); ok {
		return int64(len(v)), StatPresent
	}
	if st, ok := c.statLocked(key, true); ok {
		if st.missing {
			return 0, StatMissing
		}
		return st.size, StatSized
	}
	return 0, StatUnknown
}

// SetSize records the size of key, learnt elsewhere (a HEAD, a listing). A negative size is
// ignored.
func (c *Cache) SetSize(key string, n int64) {
	if n < 0 {
		c.log.Debug("cache: negative size ignored", "key", key, "size", n)
		return
	}
	c.mu.Lock()
	c.stat.Add(key, statEntry{size: n, at: c.now()})
	c.mu.Unlock()
}

// Age says how long ago what the cache knows of key was learnt: for cached bytes, the start of
// the fetch that got them; else for a known size or absence, when it was recorded (the start of
// the HEAD or fetch that told it). ok is false when nothing is known. A caller that wants
// bytes no older than some bound drops older ones with Forget and fetches again.
func (c *Cache) Age(key string) (age time.Duration, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var at time.Time
	if e, found := c.entryLocked(key, false); found {
		at = e.at
	} else if st, found := c.statLocked(key, false); found {
		at = st.at
	} else {
		return 0, false
	}
	return c.now().Sub(at), true
}

// SetMissing records that key does not exist, for MissingTTL, dropping any bytes cached for it.
func (c *Cache) SetMissing(key string) {
	c.mu.Lock()
	c.dropLocked(key)
	c.setMissingLocked(key)
	c.mu.Unlock()
}

// SizeOrHead returns the size of key from what the cache knows (bytes, size, missing), or else
// calls head, one call per key at a time shared by concurrent callers, and records its answer.
// If a body fetch of key is under way or queued for readahead, it waits for that (starting it
// if queued) instead of calling head. A missing key
// gives an error matching fs.ErrNotExist. Like GetOrFetch, a caller whose ctx is done returns
// ctx.Err() at once while the shared call goes on under FetchTimeout.
func (c *Cache) SizeOrHead(ctx context.Context, key string, head func(ctx context.Context) (int64, error)) (int64, error) {
	if head == nil {
		return 0, fmt.Errorf("cache: SizeOrHead %q: nil head func", key)
	}
	c.mu.Lock()
	if v, ok := c.getLocked(key, false); ok {
		c.mu.Unlock()
		return int64(len(v)), nil
	}
	if st, ok := c.statLocked(key, true); ok {
		c.mu.Unlock()
		if st.missing {
			return 0, notFound(key)
		}
		return st.size, nil
	}
	if c.closed {
		c.mu.Unlock()
		return 0, ErrClosed
	}
	if f, ok := c.flights[key]; ok {
		// The body is on its way (or queued for readahead, so about to be fetched anyway):
		// its length costs no extra request.
		if !f.started {
			c.startLocked(f)
		}
		c.mu.Unlock()
		c.waiting()
		select {
		case <-f.done:
			if f.err != nil {
				return 0, f.err
			}
			return int64(len(f.val)), nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	h, ok := c.heads[key]
	if !ok {
		h = &headFlight{done: make(chan struct{})}
		c.heads[key] = h
		c.running.Add(1)
		go func() {
			defer c.running.Done()
			c.runHead(ctx, key, h, head)
		}()
	}
	c.mu.Unlock()

	c.waiting()
	select {
	case <-h.done:
		return h.size, h.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (c *Cache) runHead(parent context.Context, key string, h *headFlight, head func(ctx context.Context) (int64, error)) {
	c.headCalls.Add(1)
	at := c.now()
	ctx, cancel := c.fetchContext(parent)
	size, err := callHead(ctx, head)
	cancel()
	if err == nil && size < 0 {
		size, err = 0, fmt.Errorf("cache: head %q: negative size %d", key, size)
	}

	c.mu.Lock()
	if c.heads[key] == h {
		delete(c.heads, key)
	}
	if !h.stale {
		switch {
		case err == nil:
			c.stat.Add(key, statEntry{size: size, at: at})
		case errors.Is(err, fs.ErrNotExist):
			c.setMissingLocked(key)
		}
	}
	h.size, h.err = size, err
	close(h.done)
	c.mu.Unlock()

	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		c.log.Debug("cache: head failed", "key", key, "err", err)
	}
}

func callHead(ctx context.Context, head func(ctx context.Context) (int64, error)) (size int64, err error) {
	defer func() {
		if r := recover(); r != nil {
			size, err = 0, fmt.Errorf("cache: head panicked: %v", r)
		}
	}()
	return head(ctx)
}

// Put stores val as the bytes of key, as a fetch would, replacing what was
// known of it (a value written through the mount). A fetch of key under way
// is not kept, and later callers do not join it.
func (c *Cache) Put(key string, val []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if f, ok := c.flights[key]; ok {
		f.stale = true
		delete(c.flights, key)
	}
	if h, ok := c.heads[key]; ok {
		h.stale = true
		delete(c.heads, key)
	}
	c.stat.Remove(key)
	c.addLocked(key, dataEntry{val: val, at: c.now()})
}

// Invalidate forgets every key that starts with prefix: bytes, sizes and missing marks. Fetches
// and heads under way for such keys still answer the callers already waiting for them, but
// their results are not kept, and callers that come after Invalidate start new ones rather than
// join them: once Invalidate returns, no answer obtained before it can be cached or handed to a
// new caller. Prefetches of such keys still queued are dropped.
func (c *Cache) Invalidate(prefix string) {
	c.invalidate(func(k string) bool { return strings.HasPrefix(k, prefix) })
}

// Forget is Invalidate for the one key given.
func (c *Cache) Forget(key string) {
	c.invalidate(func(k string) bool { return k == key })
}

func (c *Cache) invalidate(match func(key string) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range c.data.Keys() {
		if match(k) {
			c.dropLocked(k)
		}
	}
	if c.oversize.val != nil && match(c.oversizeKey) {
		c.dropLocked(c.oversizeKey)
	}
	for _, k := range c.stat.Keys() {
		if match(k) {
			c.stat.Remove(k)
		}
	}
	for k, f := range c.flights {
		if match(k) {
			f.stale = true
			delete(c.flights, k)
		}
	}
	for k, h := range c.heads {
		if match(k) {
			h.stale = true
			delete(c.heads, k)
		}
	}
}

// Stats returns a snapshot of the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	bytes, entries, oversize := c.bytes, c.data.Len(), int64(len(c.oversize.val))
	c.mu.Unlock()
	return Stats{
		Hits:            c.hits.Load(),
		Misses:          c.misses.Load(),
		Fetches:         c.fetches.Load(),
		FetchErrors:     c.fetchErrors.Load(),
		Heads:           c.headCalls.Load(),
		PrefetchStarted: c.prefetchStarted.Load(),
		PrefetchDropped: c.prefetchDropped.Load(),
		Evictions:       c.evictions.Load(),
		Bytes:           bytes,
		OversizeBytes:   oversize,
		MaxBytes:        c.maxBytes,
		Entries:         entries,
	}
}

// Close stops the prefetch workers, cancels queued prefetches and running fetches, and waits
// for every goroutine of the cache to end (fetch funcs must honour their ctx). Cached bytes stay readable; fetches asked after
// Close fail with ErrClosed. Close is idempotent.
func (c *Cache) Close() {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.closeFn()
		c.workers.Wait()
		c.running.Wait()
		// Nothing is queued after closed is set, and no worker is left to run what was.
		for {
			select {
			case f := <-c.queue:
				c.mu.Lock()
				if !f.started {
					c.abandonLocked(f, ErrClosed)
				}
				c.mu.Unlock()
			default:
				return
			}
		}
	})
}
