// Package cache keeps fetched chunk bytes in memory, bounded by their total size, and makes sure
// each key is fetched at most once at a time however many readers ask for it.
//
// It also remembers what is known about a key without its bytes (its size from a HEAD, or that it
// does not exist). It knows nothing of Zarr, FUSE or HTTP: callers hand it fetch and head
// functions.
//
// # Flights
//
// Every request the cache makes for a key is a flight: a body flight (a FetchFunc, which also
// tells the size) or a size flight (a HeadFunc). There is at most one flight per key, in
// Cache.flights, and whoever wants the key meanwhile waits for it. A flight is
//
//	queued  --worker or foreground caller-->  running  --> done
//	   \--Invalidate, Put, Close--> done (abandoned, never run)
//
// Background requests (Prefetch, PrefetchSize) are queued for the cache's one worker pool and
// dropped when the queue is full: they are hints. Foreground calls (GetOrFetch, SizeOrHead) start
// at once, in a goroutine of their own, taking a queued flight of the key out of the queue.
// Every goroutine is counted, so none outlives Close.
//
// A flight's answer is kept (cached, its size or absence recorded) only if it is still the key's
// flight when it ends: Invalidate, Put and a superseding flight take it out of Cache.flights, so
// no answer obtained before them is kept or handed to a caller who comes after them.
//
// A body answers a size question too, so the kinds meet:
//   - SizeOrHead waits for a body flight of the key (starting it if queued) instead of a HEAD.
//   - GetOrFetch turns a queued size flight into a body flight and starts it; a size flight
//     already running is superseded by a new body flight started at once (the HEAD's answer
//     goes to its own waiters only), so a reader never waits for a HEAD before its GET.
//   - Prefetch does the same without starting anything: a queued size flight becomes a body
//     flight in place; a running one is superseded by a queued body flight.
//   - PrefetchSize does nothing if anything is known of the key or any flight exists.
//
// # Disk tier
//
// With Options.Disk, a flight given OnDisk looks in the disk tier before it calls its fetch or
// head func (a hit is neither a fetch nor a head in Stats), and a body it fetched is written
// there in the background if the flight's answer is kept. See Disk.
package cache

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
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
	DefaultOwnFileMin      = 1 << 20
)

// prefetchQueuePerWorker bounds the background queue: prefetches are hints, so requests beyond
// this backlog are dropped rather than queued behind slow fetches.
const prefetchQueuePerWorker = 4

// ErrClosed is returned for fetches asked of, or cancelled by, a closed Cache.
var ErrClosed = errors.New("cache: closed")

// FetchFunc fetches the bytes of one key. When to is not nil and the size of the value is known
// before its bytes, it may write the value whole to the writer to gives for that size and
// return nil bytes (see Sink); otherwise it returns the bytes. An error that matches
// fs.ErrNotExist means the key does not exist; the cache remembers that.
type FetchFunc func(ctx context.Context, to Sink) ([]byte, error)

// A Sink is where a fetch writes a value of known size: given the size, it returns the writer
// that keeps the value (in the cache's memory file, out of the Go heap). It may be called again
// with the size of a retried answer, whose bytes are then written again from offset 0.
type Sink func(size int64) (io.WriterAt, error)

// HeadFunc asks the size of one key without its bytes. An error that matches fs.ErrNotExist
// means the key does not exist; the cache remembers that.
type HeadFunc func(ctx context.Context) (int64, error)

// Options configures a Cache. Zero fields take the Default* values.
type Options struct {
	MaxBytes       int64 // budget for cached bytes (see Cache for one exception)
	MaxStatEntries int   // number of keys whose size or absence is remembered
	// PrefetchWorkers bounds the background flights (Prefetch, PrefetchSize) running at once;
	// the queue holds a few times as many. Workers are started as work is queued and end when
	// the queue is empty, so a large bound costs nothing while idle.
	PrefetchWorkers int
	FetchTimeout    time.Duration // limit for each shared fetch or head, detached from callers
	// MissingTTL is how long a not-found answer is believed: a sparse chunk may be written
	// later without any metadata change, and must then appear.
	MissingTTL time.Duration
	Logger     *slog.Logger
	// Now is the clock for missing marks and entry ages (see Age); time.Now when nil. Tests,
	// and callers that share a clock with the cache, set it.
	Now func() time.Time
	// Disk is the disk tier under the memory (nil: none), used by requests given OnDisk. The
	// cache closes it in Close.
	Disk *Disk
	// HeapOnly keeps every value in the Go heap, none in a memory file (see memFile), as
	// happens anyway where memory files are not available.
	HeapOnly bool
	// OwnFileMin is the least size of a value kept in a memory file of its own, which OwnFile
	// can hand out; 0: the larger of DefaultOwnFileMin and MaxBytes/4096 (which bounds the
	// descriptors such files keep open); negative: none is, unless OwnFile asks for one.
	OwnFileMin int64
}

// A FetchOption says where a value is kept beyond memory; the zero FetchOption keeps it
// nowhere else.
type FetchOption struct {
	version, key string
	refresh      bool
	since        time.Time
}

// TrustedSince says the disk's value was checked against its source at t (its source's
// metadata was read then and named the same version): a value from the disk counts as fetched
// no earlier than t (see Age), though it may have been fetched long before.
func (o FetchOption) TrustedSince(t time.Time) FetchOption {
	o.since = t
	return o
}

// diskAt is when a value fetched at t and read from the disk counts as fetched.
func (o FetchOption) diskAt(t time.Time) time.Time {
	if o.since.After(t) {
		return o.since
	}
	return t
}

// OnDisk names a value in the disk tier (Options.Disk) by the version of its source and its
// key there: a fetch or size request is answered from the disk when it holds the name, and a
// fetched value is kept there. The same name must always mean the same bytes, so version must
// change whenever the source does. An empty version keeps nothing on disk.
func OnDisk(version, key string) FetchOption { return FetchOption{version: version, key: key} }

// RefreshOnDisk is OnDisk for a caller that doubts what is kept: the disk is not read, and the
// fetched value replaces what it holds under the name.
func RefreshOnDisk(version, key string) FetchOption {
	return FetchOption{version: version, key: key, refresh: true}
}

// fetchOption is the last option given that names something (zero if none).
func fetchOption(opts []FetchOption) FetchOption {
	var o FetchOption
	for _, x := range opts {
		if x.version != "" {
			o = x
		}
	}
	return o
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
	Hits            int64 // GetOrFetch/Get answered from memory (bytes, or known missing)
	Misses          int64 // GetOrFetch calls that had to fetch (or read the disk tier) or wait
	Fetches         int64 // body fetches started (foreground or background); not disk hits
	FetchErrors     int64 // body fetches that failed other than with not-found
	Heads           int64 // head calls started (by SizeOrHead or PrefetchSize); not disk hits
	PrefetchStarted int64 // background flights (Prefetch, PrefetchSize) a worker began
	PrefetchDropped int64 // background requests dropped because the queue was full
	Evictions       int64 // entries evicted to respect MaxBytes
	Bytes           int64 // bytes currently cached within MaxBytes
	OversizeBytes   int64 // the one value larger than MaxBytes held besides, if any
	MaxBytes        int64
	Entries         int // values currently cached
	PrefetchQueued  int // background flights waiting for a worker now
	Running         int // background flights a worker is running now
	Foreground      int // flights started by GetOrFetch or SizeOrHead running now
	Workers         int // worker goroutines alive now (at most Options.PrefetchWorkers)
	// MemFileBytes is what the memory file holds (values cached there, whole pages, and
	// values evicted but still being read or written to the disk tier).
	MemFileBytes int64
	// MemFilePeakBytes is the most the memory file ever held: with the process's peak RSS
	// (where the memory file is not counted), the cache's peak memory.
	MemFilePeakBytes int64

	// The disk tier (zero without one).
	DiskHits      int64 // bodies and sizes answered from the disk
	DiskWrites    int64 // values written to the disk
	DiskDropped   int64 // values not written: queue full, no room, an error, or closing
	DiskEvictions int64 // entries this process removed to keep the folder within its cap
	DiskCorrupt   int64 // entries found torn or damaged: removed, fetched again
	DiskBytes     int64 // the folder's size, all processes sharing it, as last counted here
	DiskMaxBytes  int64 // its cap
}

// Cache is a byte-bounded LRU of fetched values with single-flight fetches. It is safe for
// concurrent use. Values it returns are shared: callers must not modify them.
//
// A value larger than the whole budget cannot live in the LRU; the most recent such value is
// held besides it (one at a time), so that a file read in many pieces, such as a big shard,
// is not fetched again for every piece.
type Cache struct {
	// Constant after New.
	maxBytes   int64
	timeout    time.Duration
	missingTTL time.Duration
	maxWorkers int
	maxQueued  int
	log        *slog.Logger
	now        func() time.Time // Options.Now
	disk       *Disk            // Options.Disk
	mem        *memFile         // where fetched values are kept; nil: the heap
	onWait     func()           // tests: called when a caller starts waiting for a shared call
	closeCtx   context.Context  // cancelled by Close: ends every running flight
	closeFn    context.CancelFunc
	closeOnce  sync.Once
	// goroutines counts workers and foreground flights. Add is called only under mu while the
	// cache is open, and Close sets closed under mu before Wait, so no Add races the Wait.
	goroutines sync.WaitGroup

	mu    sync.Mutex // guards what follows, and the fields of every flight marked so
	data  *simplelru.LRU[string, dataEntry]
	bytes int64
	// reserved: bytes of the memory file written by fetches under way, which count against
	// the budget as soon as their size is known (see reserve).
	reserved int64
	// oversizeKey/oversize: the most recent value larger than maxBytes.
	oversizeKey string
	oversize    dataEntry
	stat        *simplelru.LRU[string, statEntry]
	flights     map[string]*flight // the flight of each key, queued or running
	queue       list.List          // of *flight: background flights waiting for a worker
	workers     int                // worker goroutines alive
	busy        int                // workers running a flight
	foreground  int                // flights running in goroutines of their own
	closed      bool

	hits, misses, fetches, fetchErrors, headCalls atomic.Int64
	prefetchStarted, prefetchDropped, evictions   atomic.Int64
}

// dataEntry is a cached value and when it was fetched. It holds a reference to its memory
// file extent, if any.
type dataEntry struct {
	value
	at time.Time // when the fetch that got the value started: it is at least that recent
}

// value is a value's bytes: in the heap, or a memory file extent (nil bytes).
type value struct {
	bytes []byte
	mem   *memValue
}

func (v value) size() int64 {
	if v.mem != nil {
		return v.mem.size
	}
	return int64(len(v.bytes))
}

// hold takes a reference to v's extent for a caller, who gives it back with release. The
// holder of a reference (or the lock guarding one) must be held.
func (v value) hold() value {
	if v.mem != nil {
		v.mem.acquire()
	}
	return v
}

func (v value) release() {
	if v.mem != nil {
		v.mem.release()
	}
}

// read returns the value's bytes (copied out of the memory file).
func (v value) read() ([]byte, error) {
	if v.mem != nil {
		return v.mem.bytes()
	}
	return v.bytes, nil
}

// piece is the piece of v from off, at most n bytes; it takes over v's reference.
func (v value) piece(off int64, n int) Piece {
	if v.mem == nil {
		return Piece{data: sliceAt(v.bytes, off, n)}
	}
	if off < 0 || off > v.mem.size {
		off = v.mem.size
	}
	return Piece{file: v.mem.f, ref: v.mem, off: v.mem.off + off, n: int(min(int64(n), v.mem.size-off))}
}

type statEntry struct {
	size    int64
	missing bool
	at      time.Time // when this was learnt (for a fetch or head, when it started)
	until   time.Time // a missing mark is forgotten after this
}

// flightKind says what a flight asks for.
type flightKind uint8

const (
	kindBody flightKind = iota // the bytes (and so the size) of the key: fetch
	kindSize                   // the size of the key only: head
)

func (k flightKind) String() string {
	if k == kindSize {
		return "head"
	}
	return "fetch"
}

// flight is one request for a key, shared by every caller that wants the key meanwhile.
type flight struct {
	key string
	// Guarded by Cache.mu until the flight starts, then read only by the goroutine running it.
	kind   flightKind
	fetch  FetchFunc       // kindBody
	head   HeadFunc        // kindSize
	parent context.Context // values for the request context; never its cancellation
	disk   FetchOption     // where the answer is also looked for and kept

	// Guarded by Cache.mu.
	queued     *list.Element // in Cache.queue while waiting for a worker
	started    bool
	foreground bool // run in a goroutine of its own rather than by a worker

	// Written before done is closed, read after.
	done chan struct{}
	val  value // kindBody
	size int64 // the size answered: val.size() for a body
	err  error
	// waiters counts callers waiting for the bytes (await); while some are, the flight holds a
	// reference to its extent (hold) for them to take theirs. Guarded by Cache.mu.
	waiters int
	hold    bool
	// inPlace: the body was found in the disk tier and checked there, to be read in place
	// (val is nil): nobody waiting asked for the bytes themselves (wantBytes).
	inPlace bool
	// wantBytes: a GetOrFetch caller asked for the bytes before the flight started. Guarded
	// by Cache.mu until then.
	wantBytes bool
}

// New returns a Cache. Its workers start as background work is queued; call Close to end them.
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
	switch {
	case opt.OwnFileMin == 0:
		opt.OwnFileMin = max(DefaultOwnFileMin, opt.MaxBytes/4096)
	case opt.OwnFileMin < 0:
		opt.OwnFileMin = math.MaxInt64
	}
	var mem *memFile
	if !opt.HeapOnly {
		if mem, err = openMemFile(opt.OwnFileMin); err != nil {
			opt.Logger.Info("cache: values kept in the heap: no memory file", "err", err)
		}
	}
	closeCtx, closeFn := context.WithCancel(context.Background())
	return &Cache{
		mem:        mem,
		maxBytes:   opt.MaxBytes,
		timeout:    opt.FetchTimeout,
		missingTTL: opt.MissingTTL,
		maxWorkers: opt.PrefetchWorkers,
		maxQueued:  prefetchQueuePerWorker * opt.PrefetchWorkers,
		log:        opt.Logger,
		now:        opt.Now,
		disk:       opt.Disk,
		data:       data,
		stat:       stat,
		flights:    make(map[string]*flight),
		closeCtx:   closeCtx,
		closeFn:    closeFn,
	}
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
// A queued prefetch of key is started at once; a size request of key does not delay the fetch
// (see the package comment). An OnDisk option has the disk tier answer before fetch is called,
// and keep what it fetches. The returned slice is shared and must not be modified.
func (c *Cache) GetOrFetch(ctx context.Context, key string, fetch FetchFunc, opts ...FetchOption) ([]byte, error) {
	v, err := c.get(ctx, key, fetch, opts, true)
	if err != nil {
		return nil, err
	}
	defer v.release()
	return v.read()
}

// get is GetOrFetch returning the value held for the caller (release it). wantBytes says the
// caller wants the value here, not read in place from the disk tier, and so starts a flight
// that reads the disk into memory rather than only checking it there.
func (c *Cache) get(ctx context.Context, key string, fetch FetchFunc, opts []FetchOption, wantBytes bool) (value, error) {
	if fetch == nil {
		return value{}, fmt.Errorf("cache: GetOrFetch %q: nil fetch func", key)
	}
	c.mu.Lock()
	if v, ok := c.heldLocked(key); ok {
		c.mu.Unlock()
		c.hits.Add(1)
		return v, nil
	}
	if st, ok := c.statLocked(key, true); ok && st.missing {
		c.mu.Unlock()
		c.hits.Add(1)
		return value{}, notFound(key)
	}
	if c.closed {
		c.mu.Unlock()
		return value{}, ErrClosed
	}
	if err := ctx.Err(); err != nil { // nobody would wait for the fetch
		c.mu.Unlock()
		return value{}, err
	}
	c.misses.Add(1)
	f := c.flights[key]
	if f == nil || (f.kind == kindSize && f.started) {
		f = &flight{key: key, done: make(chan struct{})}
		c.flights[key] = f // supersedes a running size flight: its answer is not kept
	}
	if !f.started {
		f.kind, f.fetch, f.head, f.parent, f.disk = kindBody, fetch, nil, ctx, fetchOption(opts)
		f.wantBytes = f.wantBytes || wantBytes
		c.startLocked(f)
	}
	f.waiters++
	c.mu.Unlock()

	c.waiting()
	v, inPlace, err := c.await(ctx, f)
	switch {
	case err == nil && inPlace && wantBytes: // a readahead left it on disk: this caller wants it here
		return c.get(ctx, key, fetch, opts, wantBytes)
	case err == nil && inPlace:
		return value{}, errLeftOnDisk
	}
	return v, err
}

// errLeftOnDisk tells ReadAt that the flight it joined checked the value on disk and left it
// there, to be read in place.
var errLeftOnDisk = errors.New("cache: left on disk")

// await waits for f, which counts the caller among its waiters, and returns its answer: the
// value held for the caller, or that it was left on disk to be read in place.
func (c *Cache) await(ctx context.Context, f *flight) (v value, inPlace bool, err error) {
	var drop value
	select {
	case <-f.done:
		c.mu.Lock()
		if f.err == nil {
			v = f.val.hold()
		}
		drop = c.leaveLocked(f)
		c.mu.Unlock()
		drop.release()
		return v, f.inPlace, f.err
	case <-ctx.Done():
		c.mu.Lock()
		drop = c.leaveLocked(f)
		c.mu.Unlock()
		drop.release()
		return value{}, false, ctx.Err()
	}
}

// leaveLocked counts a waiter of f out, and returns the flight's reference to give back when it
// was the last one. c.mu must be held.
func (c *Cache) leaveLocked(f *flight) value {
	f.waiters--
	if f.waiters == 0 && f.hold {
		f.hold = false
		return f.val
	}
	return value{}
}

// ReadAt returns at most n bytes of key's value from off, and the value's size: from memory;
// else, for a key given OnDisk (not RefreshOnDisk), read in place from the disk tier (the
// entry is checked whole when first opened) without loading it into memory; else fetched and
// kept as by GetOrFetch. Release the piece once its bytes are used.
func (c *Cache) ReadAt(ctx context.Context, key string, off int64, n int, fetch FetchFunc, opts ...FetchOption) (Piece, int64, error) {
	for try := 0; ; try++ {
		c.mu.Lock()
		v, ok := c.heldLocked(key)
		c.mu.Unlock()
		if ok {
			c.hits.Add(1)
			return v.piece(off, n), v.size(), nil
		}
		if df, ok := c.inPlace(key, opts); ok {
			c.hits.Add(1)
			return c.disk.filePiece(df, off, n), df.size, nil
		}
		// A flight that found the value on disk leaves it there; should the entry go
		// before it is opened here, the second try reads it into memory.
		v, err := c.get(ctx, key, fetch, opts, try > 0)
		if errors.Is(err, errLeftOnDisk) {
			continue
		}
		if err != nil {
			return Piece{}, 0, err
		}
		return v.piece(off, n), v.size(), nil
	}
}

// SizeInPlace returns the size of key's value when it is in memory, or when the disk tier
// holds it (OnDisk, not RefreshOnDisk) to be read in place: the entry is then opened and
// checked, ready for ReadAt. It fetches nothing.
func (c *Cache) SizeInPlace(key string, opts ...FetchOption) (int64, bool) {
	c.mu.Lock()
	e, ok := c.entryLocked(key, false)
	c.mu.Unlock()
	if ok {
		return e.size(), true
	}
	df, ok := c.inPlace(key, opts)
	if !ok {
		return 0, false
	}
	defer c.disk.release(df)
	return df.size, true
}

// inPlace opens the disk tier's entry of key to be read in place, for a key given OnDisk (not
// RefreshOnDisk), and records its size; release it with c.disk.release.
func (c *Cache) inPlace(key string, opts []FetchOption) (*diskFile, bool) {
	o := fetchOption(opts)
	if c.disk == nil || o.version == "" || o.refresh {
		return nil, false
	}
	df, ok := c.disk.acquire(o.version, o.key)
	if ok {
		c.knownSize(key, df.size, o.diskAt(df.at))
	}
	return df, ok
}

// knownSize records key's size, learnt at at, unless more is known.
func (c *Cache) knownSize(key string, size int64, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entryLocked(key, false); ok {
		return
	}
	if st, ok := c.stat.Peek(key); ok && !st.missing && st.size == size {
		return
	}
	c.stat.Add(key, statEntry{size: size, at: at})
}

// sliceAt returns up to n bytes of data from off, clamped to its length.
func sliceAt(data []byte, off int64, n int) []byte {
	if off < 0 || off >= int64(len(data)) {
		return nil
	}
	return data[off:min(off+int64(n), int64(len(data)))]
}

// waiting calls the test hook onWait.
func (c *Cache) waiting() {
	if c.onWait != nil {
		c.onWait()
	}
}

// Get returns the cached bytes of key without fetching. A present key counts as a hit and as
// recently used; an absent one is not counted as a miss (nothing was asked of the network).
// The returned slice is shared and must not be modified.
func (c *Cache) Get(key string) ([]byte, bool) {
	c.mu.Lock()
	v, ok := c.heldLocked(key)
	c.mu.Unlock()
	if !ok {
		return nil, false
	}
	defer v.release()
	b, err := v.read()
	if err != nil {
		c.log.Warn("cache: "+err.Error(), "key", key)
		return nil, false
	}
	c.hits.Add(1)
	return b, true
}

// Prefetch queues a background fetch of key, for readahead, and returns at once. It does
// nothing if the key is cached, known missing or its body already being fetched, and drops the
// request if the queue is full or the cache is closed. A size request of key queued meanwhile
// becomes this fetch (see the package comment). Options as for GetOrFetch.
func (c *Cache) Prefetch(key string, fetch FetchFunc, opts ...FetchOption) {
	if fetch == nil {
		return
	}
	o := fetchOption(opts)
	if c.disk != nil && o.version != "" && !o.refresh && c.disk.opened(o.version, o.key) {
		return // checked on disk, to be read in place
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entryLocked(key, false); ok || c.closed {
		return
	}
	if st, ok := c.statLocked(key, false); ok && st.missing {
		return
	}
	f := c.flights[key]
	switch {
	case f == nil || (f.kind == kindSize && f.started):
		c.enqueueLocked(&flight{key: key, kind: kindBody, fetch: fetch, parent: context.Background(), disk: o, done: make(chan struct{})})
	case f.kind == kindSize: // queued: the body will tell its size too
		f.kind, f.fetch, f.head, f.disk = kindBody, fetch, nil, fetchOption(opts)
	}
}

// PrefetchSize queues a background size request of key (a HEAD sent ahead of a lister) and
// returns at once. It does nothing if anything is known of the key (bytes, size, absence) or a
// flight of it exists, and drops the request if the queue is full or the cache is closed.
// Options as for SizeOrHead.
func (c *Cache) PrefetchSize(key string, head HeadFunc, opts ...FetchOption) {
	if head == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entryLocked(key, false); ok || c.closed || c.flights[key] != nil {
		return
	}
	if _, ok := c.statLocked(key, false); ok {
		return
	}
	c.enqueueLocked(&flight{key: key, kind: kindSize, head: head, parent: context.Background(), disk: fetchOption(opts), done: make(chan struct{})})
}

// enqueueLocked queues f, a new flight, for a worker and makes it key's flight, or drops it if
// the queue is full. It starts a worker if none is free to take f and the bound allows. c.mu
// must be held and the cache open.
func (c *Cache) enqueueLocked(f *flight) {
	if c.queue.Len() >= c.maxQueued {
		c.prefetchDropped.Add(1)
		c.log.Debug("cache: prefetch dropped, queue full", "key", f.key, "kind", f.kind)
		return
	}
	f.queued = c.queue.PushBack(f)
	c.flights[f.key] = f
	// Workers not busy are about to take from the queue; a worker ends only when it finds the
	// queue empty, under c.mu, so a queued flight always has a worker to come to it.
	if c.workers < c.maxWorkers && c.queue.Len() > c.workers-c.busy {
		c.workers++
		c.goroutines.Add(1)
		go c.worker()
	}
}

// worker runs queued flights, oldest first, and ends when the queue is empty or the cache is
// closed. Starting a goroutine costs far less than the request it runs, so none is kept idle.
func (c *Cache) worker() {
	defer c.goroutines.Done()
	c.mu.Lock()
	for {
		e := c.queue.Front()
		if e == nil || c.closed {
			c.workers--
			c.mu.Unlock()
			return
		}
		f := e.Value.(*flight)
		c.dequeueLocked(f)
		f.started = true
		c.busy++
		c.mu.Unlock()
		c.prefetchStarted.Add(1)
		c.run(f)
		c.mu.Lock()
		c.busy--
	}
}

// dequeueLocked takes f out of the queue, if it is there. c.mu must be held.
func (c *Cache) dequeueLocked(f *flight) {
	if f.queued != nil {
		c.queue.Remove(f.queued)
		f.queued = nil
	}
}

// startLocked runs f now in a goroutine of its own. f is new, or queued: a caller should not
// wait behind the background backlog, so f leaves the queue. c.mu must be held and the cache
// open.
func (c *Cache) startLocked(f *flight) {
	c.dequeueLocked(f)
	f.started, f.foreground = true, true
	c.foreground++
	c.goroutines.Add(1)
	go func() {
		defer c.goroutines.Done()
		c.run(f)
	}()
}

// errInvalidated ends a queued flight that Invalidate or Put made pointless. Nobody sees it: a
// caller who wanted the key would have started the flight.
var errInvalidated = errors.New("cache: invalidated")

// detachLocked makes f no longer key's flight: its answer will not be kept nor joined. A queued
// f never runs. c.mu must be held.
func (c *Cache) detachLocked(f *flight, err error) {
	if c.flights[f.key] == f {
		delete(c.flights, f.key)
	}
	if f.queued != nil {
		c.dequeueLocked(f)
		f.err = err
		close(f.done)
	}
}

// fetchContext is the context of a shared request: the values of parent, none of its
// cancellation, the fetch timeout, and cancelled by Close.
func (c *Cache) fetchContext(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), c.timeout)
	stop := context.AfterFunc(c.closeCtx, cancel)
	return ctx, func() { stop(); cancel() }
}

// run performs f's request, records the answer if f is still its key's flight, and releases
// its waiters.
func (c *Cache) run(f *flight) {
	at := c.now() // the answer is at least this recent
	ctx, cancel := c.fetchContext(f.parent)
	start := time.Now()
	var val value
	var size int64
	var err error
	disk := c.disk
	if f.disk.version == "" {
		disk = nil
	}
	fromDisk, inPlace := false, false
	switch f.kind {
	case kindBody:
		if disk != nil && !f.disk.refresh && !f.wantBytes {
			// A readahead, or a size, of a value on disk: checked there, to be read in
			// place (ReadAt).
			if df, ok := disk.acquire(f.disk.version, f.disk.key); ok {
				fromDisk, inPlace, size = true, true, df.size
				if t := f.disk.diskAt(df.at); t.Before(at) {
					at = t // as old as the fetch that got it
				}
				disk.release(df)
				break
			}
		}
		if disk != nil && !f.disk.refresh {
			var t time.Time
			if val.bytes, t, fromDisk = disk.get(f.disk.version, f.disk.key); fromDisk && f.disk.diskAt(t).Before(at) {
				at = f.disk.diskAt(t) // as old as the fetch that got it
			}
		}
		if !fromDisk {
			c.fetches.Add(1)
			val, err = c.fetchValue(ctx, f)
		}
		size = val.size()
	case kindSize:
		if disk != nil && !f.disk.refresh {
			var t time.Time
			if size, t, fromDisk = disk.size(f.disk.version, f.disk.key); fromDisk && f.disk.diskAt(t).Before(at) {
				at = f.disk.diskAt(t)
			}
		}
		if !fromDisk {
			c.headCalls.Add(1)
			size, err = call(ctx, f.kind, f.head)
		}
		if err == nil && size < 0 {
			size, err = 0, fmt.Errorf("cache: head %q: negative size %d", f.key, size)
		}
	}
	cancel()
	if err != nil {
		val, size = value{}, 0
	}

	keep := false // on disk: a body fetched, and still wanted
	owned := val  // the fetch's reference to val's extent, if it has one: the entry's, if kept
	c.mu.Lock()
	if c.flights[f.key] == f {
		delete(c.flights, f.key)
		keep = disk != nil && err == nil && f.kind == kindBody && !fromDisk
		switch {
		case err == nil && inPlace:
			c.stat.Add(f.key, statEntry{size: size, at: at})
		case err == nil && f.kind == kindBody:
			c.addLocked(f.key, dataEntry{value: val, at: at})
			c.stat.Add(f.key, statEntry{size: size, at: at})
			owned = value{}
		case err == nil:
			c.stat.Add(f.key, statEntry{size: size, at: at})
		case errors.Is(err, fs.ErrNotExist):
			c.setMissingLocked(f.key)
		}
	}
	if err != nil && f.kind == kindBody && !errors.Is(err, fs.ErrNotExist) {
		c.fetchErrors.Add(1)
	}
	if f.foreground {
		c.foreground--
	}
	f.val, f.size, f.err, f.inPlace = val, size, err, inPlace
	if val.mem != nil && f.waiters > 0 {
		// The waiters take their references from the flight's (see leaveLocked).
		if owned.mem == nil {
			val.hold()
		}
		f.hold, owned = true, value{}
	}
	var toDisk value
	if keep {
		toDisk = val.hold() // for the disk writer, which gives it back
	}
	close(f.done)
	c.mu.Unlock()
	owned.release()
	if keep {
		disk.put(f.disk.version, f.disk.key, toDisk, at, f.disk.refresh)
	}

	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		c.log.Debug("cache: "+f.kind.String()+" failed", "key", f.key, "duration", time.Since(start), "err", err)
	}
}

// fetchValue calls f's fetch func, with a sink into the memory file unless the caller wants
// the bytes in memory (or there is no memory file). The value returned holds the fetch's
// reference to its extent.
func (c *Cache) fetchValue(ctx context.Context, f *flight) (value, error) {
	if c.mem == nil || f.wantBytes {
		b, err := call(ctx, f.kind, func(ctx context.Context) ([]byte, error) { return f.fetch(ctx, nil) })
		return value{bytes: b}, err
	}
	// The sink is called by the fetch func, in this goroutine or one it waits for.
	var mu sync.Mutex
	var mem *memValue
	var reserved int64
	sink := func(size int64) (io.WriterAt, error) {
		mu.Lock()
		defer mu.Unlock()
		if mem != nil && mem.size == size {
			return mem, nil // a retry: written again from 0
		}
		if mem != nil {
			mem.release()
			mem = nil
		}
		c.unreserve(reserved)
		reserved = c.reserve(size)
		v, err := c.mem.alloc(size)
		if err != nil {
			return nil, err
		}
		mem = v
		return v, nil
	}
	b, err := call(ctx, f.kind, func(ctx context.Context) ([]byte, error) { return f.fetch(ctx, sink) })
	mu.Lock()
	defer mu.Unlock()
	c.unreserve(reserved) // the value is added (or dropped) next, within the budget as any other
	switch {
	case err != nil || b != nil || mem == nil:
		if mem != nil {
			mem.release()
		}
		return value{bytes: b}, err
	}
	return value{mem: mem}, nil
}

// call turns a panic in a fetch or head func into an error: waiters must be released either way.
func call[T any](ctx context.Context, kind flightKind, fn func(context.Context) (T, error)) (v T, err error) {
	defer func() {
		if r := recover(); r != nil {
			var zero T
			v, err = zero, fmt.Errorf("cache: %s panicked: %v", kind, r)
		}
	}()
	return fn(ctx)
}

// entryLocked returns the cached value of key, from the LRU (marked as recently used when
// touch) or the oversize slot. c.mu must be held.
func (c *Cache) entryLocked(key string, touch bool) (dataEntry, bool) {
	var e dataEntry
	var ok bool
	if touch {
		e, ok = c.data.Get(key)
	} else {
		e, ok = c.data.Peek(key)
	}
	if !ok && c.oversizeKey != "" && c.oversizeKey == key {
		e, ok = c.oversize, true
	}
	return e, ok
}

// heldLocked returns the cached value of key held for the caller (release it), marked as
// recently used. c.mu must be held.
func (c *Cache) heldLocked(key string) (value, bool) {
	e, ok := c.entryLocked(key, true)
	return e.hold(), ok
}

// dropLocked forgets the cached bytes of key. c.mu must be held.
func (c *Cache) dropLocked(key string) {
	if old, ok := c.data.Peek(key); ok {
		c.data.Remove(key)
		c.bytes -= old.size()
		old.release()
	}
	if c.oversizeKey == key {
		c.oversize.release()
		c.oversizeKey, c.oversize = "", dataEntry{}
	}
}

// addLocked stores e under key (with its reference) and evicts the least recently used entries
// beyond the byte budget. A value larger than the whole budget replaces the oversize slot
// instead. c.mu must be held.
func (c *Cache) addLocked(key string, e dataEntry) {
	c.dropLocked(key)
	n := e.size()
	if n > c.maxBytes {
		c.oversize.release()
		c.oversizeKey, c.oversize = key, e
		return
	}
	c.evictLocked(n)
	c.data.Add(key, e)
	c.bytes += n
}

// evictLocked evicts the least recently used entries until n more bytes fit in the budget
// beside what is cached and what fetches under way are writing. c.mu must be held.
func (c *Cache) evictLocked(n int64) {
	for c.bytes+c.reserved+n > c.maxBytes {
		_, old, ok := c.data.RemoveOldest()
		if !ok {
			break
		}
		c.bytes -= old.size()
		old.release()
		c.evictions.Add(1)
	}
}

// reserve counts n bytes that a fetch is about to write into the memory file against the
// budget, evicting to make room, so that the memory file holds no more than the budget while
// fetches are under way (a value larger than the whole budget is held besides, as in
// addLocked). Give the bytes back with unreserve.
func (c *Cache) reserve(n int64) int64 {
	if n > c.maxBytes {
		return 0
	}
	c.mu.Lock()
	c.evictLocked(n)
	c.reserved += n
	c.mu.Unlock()
	return n
}

func (c *Cache) unreserve(n int64) {
	if n == 0 {
		return
	}
	c.mu.Lock()
	c.reserved -= n
	c.mu.Unlock()
}

// Stat says what is known about key without fetching: its bytes are cached (size is their
// length), its size is known, it is missing, or nothing is known.
func (c *Cache) Stat(key string) (size int64, state StatState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entryLocked(key, false); ok {
		return e.size(), StatPresent
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
// If a body fetch of key is under way or queued, it waits for that (starting it if queued)
// instead of calling head; a queued size request of key is started at once. A missing key gives
// an error matching fs.ErrNotExist. Like GetOrFetch, a caller whose ctx is done returns
// ctx.Err() at once while the shared call goes on under FetchTimeout. An OnDisk option has
// the disk tier's entry tell the size before head is called.
func (c *Cache) SizeOrHead(ctx context.Context, key string, head HeadFunc, opts ...FetchOption) (int64, error) {
	if head == nil {
		return 0, fmt.Errorf("cache: SizeOrHead %q: nil head func", key)
	}
	c.mu.Lock()
	if e, ok := c.entryLocked(key, false); ok {
		c.mu.Unlock()
		return e.size(), nil
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
	if err := ctx.Err(); err != nil { // nobody would wait for the head
		c.mu.Unlock()
		return 0, err
	}
	f := c.flights[key]
	if f == nil {
		f = &flight{key: key, kind: kindSize, done: make(chan struct{})}
		c.flights[key] = f
	}
	if !f.started {
		// A body, even one queued for readahead, is about to be fetched anyway: its length
		// costs no extra request.
		if f.kind == kindSize {
			f.head, f.parent, f.disk = head, ctx, fetchOption(opts)
		}
		c.startLocked(f)
	}
	c.mu.Unlock()

	c.waiting()
	select {
	case <-f.done:
		return f.size, f.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Put stores val as the bytes of key, as a fetch would, replacing what was known of it (a value
// written through the mount). A flight of key under way is not kept, and later callers do not
// join it; a queued one is dropped.
func (c *Cache) Put(key string, val []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if f, ok := c.flights[key]; ok {
		c.detachLocked(f, errInvalidated)
	}
	c.stat.Remove(key)
	c.addLocked(key, dataEntry{value: value{bytes: val}, at: c.now()})
}

// Invalidate forgets every key that starts with prefix: bytes, sizes and missing marks. Fetches
// and heads under way for such keys still answer the callers already waiting for them, but
// their results are not kept, and callers that come after Invalidate start new ones rather than
// join them: once Invalidate returns, no answer obtained before it can be cached or handed to a
// new caller. Background requests of such keys still queued are dropped.
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
	if c.oversizeKey != "" && match(c.oversizeKey) {
		c.dropLocked(c.oversizeKey)
	}
	for _, k := range c.stat.Keys() {
		if match(k) {
			c.stat.Remove(k)
		}
	}
	for k, f := range c.flights {
		if match(k) {
			c.detachLocked(f, errInvalidated)
		}
	}
}

// Stats returns a snapshot of the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	st := Stats{
		Bytes:          c.bytes,
		OversizeBytes:  c.oversize.size(),
		Entries:        c.data.Len(),
		PrefetchQueued: c.queue.Len(),
		Running:        c.busy,
		Foreground:     c.foreground,
		Workers:        c.workers,
	}
	c.mu.Unlock()
	st.Hits = c.hits.Load()
	st.Misses = c.misses.Load()
	st.Fetches = c.fetches.Load()
	st.FetchErrors = c.fetchErrors.Load()
	st.Heads = c.headCalls.Load()
	st.PrefetchStarted = c.prefetchStarted.Load()
	st.PrefetchDropped = c.prefetchDropped.Load()
	st.Evictions = c.evictions.Load()
	st.MaxBytes = c.maxBytes
	if c.mem != nil {
		st.MemFileBytes = c.mem.allocated.Load()
		st.MemFilePeakBytes = c.mem.peak.Load()
	}
	if c.disk != nil {
		ds := c.disk.stats()
		st.DiskHits, st.DiskWrites, st.DiskDropped = ds.hits, ds.writes, ds.dropped
		st.DiskEvictions, st.DiskCorrupt = ds.evictions, ds.corrupt
		st.DiskBytes, st.DiskMaxBytes = ds.bytes, ds.maxBytes
	}
	return st
}

// Close drops queued background requests, cancels running flights, and waits for every
// goroutine of the cache (workers and foreground flights) to end; fetch and head funcs must
// honour their ctx. Then it closes the disk tier, which first writes what is queued for it.
// Cached bytes stay readable; requests made after Close fail with ErrClosed or are ignored.
// Close is idempotent.
func (c *Cache) Close() {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		for e := c.queue.Front(); e != nil; e = c.queue.Front() {
			c.detachLocked(e.Value.(*flight), ErrClosed)
		}
		c.mu.Unlock()
		c.closeFn()
		c.goroutines.Wait()
		if c.disk != nil {
			c.disk.Close()
		}
	})
}
