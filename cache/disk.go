package cache

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// The disk tier.
//
// A Disk is a folder of fetched values that outlives the process, under the memory LRU (see
// Options.Disk and OnDisk): a value the memory does not hold is looked for there before it is
// fetched, and fetched values are written there in the background. Every process of the user
// that opens the same folder shares it safely.
//
// The folder (created 0700; refused when it is a symbolic link, not the user's, or writable by
// group or others) holds:
//
//	lock            flock(2)ed around accounting and eviction; holds the folder's counted size
//	entries/NAME    one value: a 64-byte header, then its bytes; NAME is the hex SHA-256 of
//	                (origin, version, key)
//	tmp/OWNER.lock  flock(2)ed by process OWNER for its life
//	tmp/OWNER.N     an entry being written by OWNER, renamed into entries/ once whole
//
// A reader sees a whole entry or none (rename), and checks every entry it reads: magic, name,
// length, and CRC-32C of the header and of the bytes. An entry torn by a power loss or damaged
// later is removed and the value fetched again, never served. So entries are not fsynced: a lost
// write is a miss, not a wrong answer, and an fsync per chunk costs more than the fetch.
//
// The cap holds for what `du -sb` says of the folder, entries, temp files and directories
// included, whichever processes write. The lock file counts the bytes of the files: exactly (a
// scan) at open and at each eviction; in between, each write adds its entry's size before its
// temp file is made (at full size at once), under the lock. The directories' own sizes are read
// at each write, with room kept for what the renames not yet seen may add (dirHeadroom). Temp
// files of a crashed writer (its OWNER.lock not held) are removed at open. Eviction removes the
// least recently used entries (by mtime, which a hit refreshes) until a tenth of the cap is free
// beyond the entry to write, so that scans stay rare. One writer goroutine writes the queued
// values in order, so that a refreshed value is never overwritten by an older one.

// Defaults used for zero fields of DiskOptions.
const (
	DefaultDiskMaxBytes   = 10 << 30
	DefaultDiskQueueBytes = 16 << 20
)

const (
	diskMagic      = "dmfsdc01" // format of an entry; another format is a miss
	diskHeaderSize = 64
	// dirHeadroom is room kept for the growth of the directories that the renames under way
	// may cause before the next write sees it: ext4 grows a directory a 4 KiB block at a time
	// (8 KiB when it turns into an indexed one).
	dirHeadroom = 16 << 10
	// diskTouchAfter: a hit refreshes an entry's mtime (its LRU position) at most this often.
	diskTouchAfter = time.Minute
	// diskFlushTimeout bounds how long Close writes what is still queued.
	diskFlushTimeout = 2 * time.Second
	// blobCopyBuffer is the piece a blob is copied by.
	blobCopyBuffer = 1 << 20

	lockFileName = "lock"
	entriesDir   = "entries"
	tmpDir       = "tmp"
	ownerSuffix  = ".lock"
)

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// ErrUnsafeDir is returned by OpenDisk for a folder it refuses: a symbolic link, not a
// directory, owned by another user, or writable by group or others.
var ErrUnsafeDir = errors.New("cache: unsafe folder")

// DiskOptions configures a Disk. Zero fields take the Default* values.
type DiskOptions struct {
	Dir      string // the folder; created (mode 0700) if missing, its parent must exist
	MaxBytes int64  // cap on the folder's size (du -sb), shared by every process using it
	// Origin is where values come from (a gateway URL): part of every entry's name, so that
	// two origins sharing a folder share no entry.
	Origin string
	// QueueBytes bounds the bytes waiting to be written; more are dropped (a write is a
	// hint). A value larger than the bound is queued only alone.
	QueueBytes int64
	Logger     *slog.Logger
	Now        func() time.Time // entry times and LRU; time.Now when nil
}

// Disk is the disk tier of a Cache, as described at the top of this file. Open one with
// OpenDisk and give it to New in Options.Disk; the Cache closes it. Its methods are safe for
// concurrent use.
type Disk struct {
	// Constant after OpenDisk.
	dir, entries, tmp string
	maxBytes          int64
	origin            string
	queueMax          int64
	log               *slog.Logger
	now               func() time.Time
	touchAfter        time.Duration
	owner             string   // names this process's temp files
	ownerLock         *os.File // tmp/OWNER.lock, flocked while open
	lockFile          *os.File // the folder's lock and size counter

	// lockMu and flock(lockFile) together: one accounting change at a time, in this process
	// (flock does not exclude goroutines sharing one open file) and across processes.
	lockMu sync.Mutex

	// The entries open for reading in place (see diskread.go).
	filesMu     sync.Mutex
	files       *simplelru.LRU[[32]byte, *diskFile]
	filesClosed bool

	mu      sync.Mutex // guards what follows
	wake    *sync.Cond // on mu: a job was queued, or the Disk closed
	queue   []diskJob
	queued  int64 // bytes queued or being written
	closed  bool  // no more jobs are taken
	abandon bool  // Close's deadline passed: the writer drops what is left
	// stopping is abandon for the write under way: a blob being copied stops.
	stopping atomic.Bool

	writer    sync.WaitGroup
	closeOnce sync.Once
	seq       atomic.Uint64
	warned    atomic.Bool // a failed write was logged at warn level once

	counted                                        atomic.Int64 // the folder's size (files and directories) when this process last saw it
	hits, writes, dropped, evictions, corruptCount atomic.Int64
}

// diskJob is a value waiting to be written: val, or prefix then n bytes of src (a blob, read
// from its holder's memory or file as it is written).
type diskJob struct {
	sum    [32]byte
	val    []byte
	prefix []byte
	src    io.ReaderAt
	n      int64
	// ref, when set, is the job's own reference to src (a value in the memory file), given
	// back once the job is written or dropped.
	ref     interface{ release() }
	at      time.Time
	replace bool // replace an entry already there (a refresh)
}

// length is the job's value's length on disk.
func (j diskJob) length() int64 { return int64(len(j.val)+len(j.prefix)) + j.n }

// held is what the job holds in memory of its own: a blob's src belongs to its caller.
func (j diskJob) held() int64 {
	n := int64(len(j.val) + len(j.prefix))
	if j.ref != nil {
		n += j.n
	}
	return n
}

// done gives back the job's reference, if it has one.
func (j diskJob) done() {
	if j.ref != nil {
		j.ref.release()
	}
}

// diskStats is a snapshot of a Disk's counters.
type diskStats struct {
	hits, writes, dropped, evictions, corrupt, bytes, maxBytes int64
}

// OpenDisk opens (creating it if missing) the disk tier folder, removes what crashed writers
// left, and counts its size.
func OpenDisk(o DiskOptions) (*Disk, error) {
	if o.Dir == "" {
		return nil, errors.New("cache: disk tier: no folder given")
	}
	d := &Disk{
		dir:        filepath.Clean(o.Dir),
		maxBytes:   o.MaxBytes,
		origin:     o.Origin,
		queueMax:   o.QueueBytes,
		log:        o.Logger,
		now:        o.Now,
		touchAfter: diskTouchAfter,
	}
	if d.maxBytes <= 0 {
		d.maxBytes = DefaultDiskMaxBytes
	}
	if d.queueMax <= 0 {
		d.queueMax = DefaultDiskQueueBytes
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.now == nil {
		d.now = time.Now
	}
	d.entries, d.tmp = filepath.Join(d.dir, entriesDir), filepath.Join(d.dir, tmpDir)
	d.files = newOpenFiles(d.fileEvicted)
	d.wake = sync.NewCond(&d.mu)
	for _, p := range []string{d.dir, d.entries, d.tmp} {
		if err := privateDir(p); err != nil {
			return nil, err
		}
	}
	var err error
	if d.lockFile, err = openPrivateFile(filepath.Join(d.dir, lockFileName)); err != nil {
		return nil, err
	}
	if err := d.start(); err != nil {
		d.lockFile.Close()
		if d.ownerLock != nil {
			os.Remove(d.ownerLock.Name())
			d.ownerLock.Close()
		}
		return nil, err
	}
	d.writer.Add(1)
	go d.write()
	return d, nil
}

// privateDir makes path (mode 0700) if missing and checks that it is a directory of this user
// that group and others cannot write to, not a symbolic link.
func privateDir(path string) error {
	if err := os.Mkdir(path, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("disk cache folder: %w", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("disk cache folder: %w", err)
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	var problem string
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		problem = "is a symbolic link; give the folder itself"
	case !fi.IsDir():
		problem = "is not a directory"
	case st == nil:
		problem = "has no owner this system can tell"
	case st.Uid != uint32(os.Geteuid()):
		problem = fmt.Sprintf("is owned by uid %d, not by you (uid %d)", st.Uid, os.Geteuid())
	case fi.Mode().Perm()&0o022 != 0:
		problem = fmt.Sprintf("is writable by group or others (mode %s); run 'chmod go-w %s' or choose another folder", fi.Mode().Perm(), path)
	default:
		return nil
	}
	return fmt.Errorf("disk cache folder %s %s: %w", path, problem, ErrUnsafeDir)
}

// openPrivateFile opens (creating, mode 0600) a regular file of this user, not through a
// symbolic link.
func openPrivateFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("disk cache folder: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("disk cache folder: %w", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !fi.Mode().IsRegular() || !ok || st.Uid != uint32(os.Geteuid()) {
		f.Close()
		return nil, fmt.Errorf("disk cache folder: %s is not a regular file of yours: %w", path, ErrUnsafeDir)
	}
	return f, nil
}

// start takes this process's place in the folder (its owner lock, made under the folder's lock
// so that no other process's clean-up takes it for a dead one's), removes dead writers' temp
// files, and counts the folder.
func (d *Disk) start() error {
	var rnd [8]byte
	rand.Read(rnd[:]) // never fails (crypto/rand)
	d.owner = hex.EncodeToString(rnd[:])
	if err := d.lock(); err != nil {
		return err
	}
	defer d.unlock()
	f, err := os.OpenFile(filepath.Join(d.tmp, d.owner+ownerSuffix), os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("disk cache folder: %w", err)
	}
	if err := flock(f, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		os.Remove(f.Name())
		f.Close()
		return fmt.Errorf("disk cache folder: locking %s: %w", f.Name(), err)
	}
	d.ownerLock = f
	d.removeDeadTemps()
	_, files, err := d.scan()
	if err != nil {
		return err
	}
	d.setCount(files)
	d.log.Info("disk cache opened", "dir", d.dir, "bytes", d.counted.Load(), "max_bytes", d.maxBytes)
	return nil
}

// removeDeadTemps removes the temp files of processes that are gone (their owner lock is
// free, or missing). The folder's lock must be held.
func (d *Disk) removeDeadTemps() {
	names, err := readDirNames(d.tmp)
	if err != nil {
		d.log.Warn("disk cache: listing temp files", "err", err)
		return
	}
	live := map[string]bool{d.owner: true}
	for _, name := range names {
		owner, ok := strings.CutSuffix(name, ownerSuffix)
		if !ok || owner == d.owner {
			continue
		}
		p := filepath.Join(d.tmp, name)
		f, err := os.OpenFile(p, os.O_RDWR|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
		if err != nil {
			live[owner] = true // cannot tell: leave its files
			continue
		}
		if flock(f, syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			os.Remove(p) // its process is gone
		} else {
			live[owner] = true
		}
		f.Close() // our own open: the owner's lock, if held, stays
	}
	removed := 0
	for _, name := range names {
		owner, _, _ := strings.Cut(name, ".")
		if live[owner] || strings.HasSuffix(name, ownerSuffix) {
			continue
		}
		if os.Remove(filepath.Join(d.tmp, name)) == nil {
			removed++
		}
	}
	if removed > 0 {
		d.log.Info("disk cache: removed temp files of writers that are gone", "files", removed)
	}
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// diskEntry is one entry as a scan found it.
type diskEntry struct {
	path string
	size int64
	used time.Time
}

// scan lists the entries and counts the bytes of the folder's files (the directories
// themselves apart: see dirBytes). The folder's lock must be held.
func (d *Disk) scan() (list []diskEntry, total int64, err error) {
	names, err := readDirNames(d.dir)
	if err != nil {
		return nil, 0, fmt.Errorf("disk cache: %w", err)
	}
	for _, name := range names { // the lock, and anything else put there
		if name == entriesDir || name == tmpDir {
			continue
		}
		if fi, err := os.Lstat(filepath.Join(d.dir, name)); err == nil {
			total += fi.Size()
		}
	}
	for _, dir := range []string{d.entries, d.tmp} {
		names, err := readDirNames(dir)
		if err != nil {
			return nil, 0, fmt.Errorf("disk cache: %w", err)
		}
		for _, name := range names {
			p := filepath.Join(dir, name)
			fi, err := os.Lstat(p)
			if err != nil {
				continue // removed meanwhile (a reader dropping a corrupt entry)
			}
			total += fi.Size()
			if dir == d.entries && fi.Mode().IsRegular() {
				list = append(list, diskEntry{path: p, size: fi.Size(), used: fi.ModTime()})
			}
		}
	}
	return list, total, nil
}

// lock takes the folder's lock.
func (d *Disk) lock() error {
	d.lockMu.Lock()
	if err := flock(d.lockFile, syscall.LOCK_EX); err != nil {
		d.lockMu.Unlock()
		return fmt.Errorf("disk cache: locking the folder: %w", err)
	}
	return nil
}

func (d *Disk) unlock() {
	flock(d.lockFile, syscall.LOCK_UN)
	d.lockMu.Unlock()
}

func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			return err
		}
	}
}

// count reads the counted bytes of the folder's files; a counter that cannot be read is
// recounted. The folder's lock must be held.
func (d *Disk) count() int64 {
	var b [8]byte
	if n, err := d.lockFile.ReadAt(b[:], 0); n == len(b) && err == nil {
		if v := int64(binary.LittleEndian.Uint64(b[:])); v >= 0 {
			return v
		}
	}
	_, files, err := d.scan()
	if err != nil {
		d.log.Warn("disk cache: counting the folder", "err", err)
		return d.maxBytes // counts as full: nothing is written until a scan works
	}
	d.setCount(files)
	return files
}

// setCount writes the counted bytes of the folder's files. The folder's lock must be held.
func (d *Disk) setCount(files int64) {
	files = max(files, 0)
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(files))
	if _, err := d.lockFile.WriteAt(b[:], 0); err != nil {
		d.log.Warn("disk cache: writing the folder's size", "err", err)
	}
	d.counted.Store(files + d.dirBytes())
}

// dirBytes is the size of the folder's directories themselves, as du -sb counts them.
func (d *Disk) dirBytes() int64 {
	var n int64
	for _, p := range []string{d.dir, d.entries, d.tmp} {
		if fi, err := os.Lstat(p); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// room is what the files may take now: the cap less the directories and their headroom.
func (d *Disk) room() int64 { return d.maxBytes - d.dirBytes() - dirHeadroom }

// name is the entry name of (version, key): the SHA-256 of the origin, version and key.
func (d *Disk) name(version, key string) [32]byte {
	h := sha256.New()
	for _, s := range []string{d.origin, version, key} {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		io.WriteString(h, s)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

func (d *Disk) path(sum [32]byte) string {
	return filepath.Join(d.entries, hex.EncodeToString(sum[:]))
}

// header is an entry's first diskHeaderSize bytes.
type header struct {
	sum    [32]byte
	length int64
	at     time.Time // when the fetch that got the bytes started
	crc    uint32    // CRC-32C of the bytes
}

func (h header) encode() []byte {
	b := make([]byte, diskHeaderSize)
	copy(b, diskMagic)
	copy(b[8:40], h.sum[:])
	binary.LittleEndian.PutUint64(b[40:48], uint64(h.length))
	binary.LittleEndian.PutUint64(b[48:56], uint64(h.at.UnixNano()))
	binary.LittleEndian.PutUint32(b[56:60], h.crc)
	binary.LittleEndian.PutUint32(b[60:64], crc32.Checksum(b[:60], crc32c))
	return b
}

// decodeHeader checks an entry's header against the name it was opened by and its file size.
func decodeHeader(b []byte, sum [32]byte, fileSize int64) (header, error) {
	switch {
	case len(b) < diskHeaderSize:
		return header{}, errors.New("shorter than its header")
	case string(b[:8]) != diskMagic:
		return header{}, errors.New("not an entry of this format")
	case binary.LittleEndian.Uint32(b[60:64]) != crc32.Checksum(b[:60], crc32c):
		return header{}, errors.New("header checksum mismatch")
	case [32]byte(b[8:40]) != sum:
		return header{}, errors.New("the entry of another name")
	}
	h := header{
		sum:    sum,
		length: int64(binary.LittleEndian.Uint64(b[40:48])),
		at:     time.Unix(0, int64(binary.LittleEndian.Uint64(b[48:56]))),
		crc:    binary.LittleEndian.Uint32(b[56:60]),
	}
	if h.length < 0 || h.length != fileSize-diskHeaderSize {
		return header{}, fmt.Errorf("%d bytes on disk for a value of %d", fileSize-diskHeaderSize, h.length)
	}
	return h, nil
}

// open opens the entry of sum, or says it is not there.
func (d *Disk) open(sum [32]byte) (*os.File, int64, time.Time, bool) {
	f, err := os.OpenFile(d.path(sum), os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			d.log.Debug("disk cache: opening an entry", "err", err)
		}
		return nil, 0, time.Time{}, false
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, time.Time{}, false
	}
	return f, fi.Size(), fi.ModTime(), true
}

// get returns the value of (version, key) and when it was fetched, if the folder holds it
// whole and intact; a damaged entry is removed. The header is checked before the value is
// read, so that a damaged one cannot make it allocate what its file size says.
func (d *Disk) get(version, key string) ([]byte, time.Time, bool) {
	sum := d.name(version, key)
	f, size, mtime, ok := d.open(sum)
	if !ok {
		return nil, time.Time{}, false
	}
	defer f.Close()
	var hb [diskHeaderSize]byte
	if _, err := io.ReadFull(f, hb[:]); err != nil {
		d.drop(sum, "reading its header: "+err.Error())
		return nil, time.Time{}, false
	}
	h, err := decodeHeader(hb[:], sum, size)
	if err != nil {
		d.drop(sum, err.Error())
		return nil, time.Time{}, false
	}
	val := make([]byte, h.length)
	if _, err := io.ReadFull(f, val); err != nil {
		d.drop(sum, "reading: "+err.Error())
		return nil, time.Time{}, false
	}
	if crc32.Checksum(val, crc32c) != h.crc {
		d.drop(sum, "checksum mismatch")
		return nil, time.Time{}, false
	}
	d.hits.Add(1)
	d.touch(sum, mtime)
	return val, h.at, true
}

// size returns the size of the value of (version, key) and when it was fetched, from the
// entry's header, if the folder holds the entry whole (its bytes are checked when read).
func (d *Disk) size(version, key string) (int64, time.Time, bool) {
	sum := d.name(version, key)
	f, size, _, ok := d.open(sum)
	if !ok {
		return 0, time.Time{}, false
	}
	defer f.Close()
	var b [diskHeaderSize]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		return 0, time.Time{}, false
	}
	h, err := decodeHeader(b[:], sum, size)
	if err != nil {
		return 0, time.Time{}, false // the body read that follows drops it
	}
	d.hits.Add(1)
	return h.length, h.at, true
}

// touch marks an entry recently used (its mtime) for eviction, at most every touchAfter.
func (d *Disk) touch(sum [32]byte, mtime time.Time) {
	now := d.now()
	if now.Sub(mtime) < d.touchAfter {
		return
	}
	if err := os.Chtimes(d.path(sum), now, now); err != nil && !errors.Is(err, fs.ErrNotExist) {
		d.log.Debug("disk cache: marking an entry used", "err", err)
	}
}

// drop removes a damaged entry. The folder's count is not lowered: it stays above the truth
// (the safe side for the cap) until the next scan.
func (d *Disk) drop(sum [32]byte, why string) {
	d.corruptCount.Add(1)
	p := d.path(sum)
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		d.log.Warn("disk cache: removing a damaged entry", "path", p, "err", err)
		return
	}
	d.log.Warn("disk cache: damaged entry removed; fetching it again", "path", p, "why", why)
}

// put queues the value of (version, key), fetched at at, to be written; replace replaces an
// entry already there. A value that does not fit the queue is dropped.
func (d *Disk) put(version, key string, val value, at time.Time, replace bool) {
	j := diskJob{sum: d.name(version, key), val: val.bytes, at: at, replace: replace}
	if val.mem != nil {
		j.src, j.n, j.ref = val.mem, val.mem.size, val.mem
	}
	d.enqueue(j)
}

// enqueue queues j unless the queue is full or the Disk closed.
func (d *Disk) enqueue(j diskJob) {
	n := j.held()
	d.mu.Lock()
	if d.closed || (d.queued > 0 && d.queued+n > d.queueMax) {
		d.mu.Unlock()
		d.dropped.Add(1)
		j.done()
		return
	}
	d.queue = append(d.queue, j)
	d.queued += n
	d.wake.Signal()
	d.mu.Unlock()
}

// write writes queued values, in order, until the Disk closes and the queue is empty (or
// abandoned).
func (d *Disk) write() {
	defer d.writer.Done()
	d.mu.Lock()
	for {
		for len(d.queue) == 0 && !d.closed {
			d.wake.Wait()
		}
		if len(d.queue) == 0 || d.abandon {
			d.mu.Unlock()
			return
		}
		j := d.queue[0]
		d.queue[0] = diskJob{}
		d.queue = d.queue[1:]
		d.mu.Unlock()
		d.writeEntry(j)
		j.done()
		d.mu.Lock()
		d.queued -= j.held()
	}
}

// writeEntry writes one entry: room is made and counted, and its temp file made at full size,
// under the folder's lock; then the bytes are written and the file renamed into place.
func (d *Disk) writeEntry(j diskJob) {
	need := diskHeaderSize + j.length()
	if need > d.maxBytes-dirHeadroom {
		d.dropped.Add(1)
		return
	}
	path := d.path(j.sum)
	tmp, err := d.reserve(path, need, j)
	if tmp == nil {
		if err != nil {
			d.failed(err)
		}
		return
	}
	err = d.writeValue(tmp, j)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		if d.lock() == nil {
			d.setCount(d.count() - need)
			d.unlock()
		}
		d.failed(err)
		return
	}
	d.forgetFile(j.sum) // a reader in place of a replaced entry takes the new one from now on
	d.writes.Add(1)
}

// writeValue writes j's header and value into tmp (made at full size by reserve).
func (d *Disk) writeValue(tmp *os.File, j diskJob) error {
	crc := crc32.New(crc32c)
	if _, err := tmp.Seek(diskHeaderSize, io.SeekStart); err != nil {
		return err
	}
	w := io.MultiWriter(tmp, crc)
	for _, b := range [][]byte{j.prefix, j.val} {
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	if j.src != nil {
		bp := checkBuffers.Get().(*[]byte)
		defer checkBuffers.Put(bp)
		buf := *bp
		for off := int64(0); off < j.n; {
			if d.stopping.Load() {
				return errors.New("closing: blob write abandoned")
			}
			k, err := j.src.ReadAt(buf[:min(int64(len(buf)), j.n-off)], off)
			if k > 0 {
				if _, werr := w.Write(buf[:k]); werr != nil {
					return werr
				}
				off += int64(k)
			}
			if k == 0 && err == nil {
				err = io.ErrNoProgress
			}
			if err != nil && !(errors.Is(err, io.EOF) && off == j.n) {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				return fmt.Errorf("reading the blob: %w", err)
			}
		}
	}
	h := header{sum: j.sum, length: j.length(), at: j.at, crc: crc.Sum32()}
	_, err := tmp.WriteAt(h.encode(), 0)
	return err
}

// errNoRoom is a write that would not fit even after eviction.
var errNoRoom = errors.New("no room within the cap")

// reserve makes room for an entry of need bytes (evicting if the count says the folder is
// full), counts it, and creates its temp file at full size. It returns no file and no error
// when the entry is there already (unless j.replace).
func (d *Disk) reserve(path string, need int64, j diskJob) (*os.File, error) {
	if err := d.lock(); err != nil {
		return nil, err
	}
	defer d.unlock()
	if !j.replace {
		if _, err := os.Lstat(path); err == nil {
			return nil, nil // another process wrote it meanwhile
		}
	}
	used, room := d.count(), d.room()
	if used+need > room {
		used = d.evict(need, room)
	}
	if used+need > room {
		return nil, errNoRoom
	}
	name := filepath.Join(d.tmp, d.owner+"."+strconv.FormatUint(d.seq.Add(1), 10))
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(diskHeaderSize + j.length()); err != nil {
		f.Close()
		os.Remove(name)
		return nil, err
	}
	d.setCount(used + need)
	return f, nil
}

// evict counts the folder's files and removes the least recently used entries until need
// bytes and a tenth of the cap are free within room. It returns the new count. The folder's
// lock must be held.
func (d *Disk) evict(need, room int64) int64 {
	list, total, err := d.scan()
	if err != nil {
		d.log.Warn("disk cache: counting the folder", "err", err)
		return d.maxBytes
	}
	slices.SortFunc(list, func(a, b diskEntry) int { return a.used.Compare(b.used) })
	target := max(room-need-d.maxBytes/10, 0)
	removed := 0
	for _, e := range list {
		if total <= target {
			break
		}
		err := os.Remove(e.path)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		total -= e.size
		if err == nil {
			removed++
		}
	}
	d.evictions.Add(int64(removed))
	d.setCount(total)
	d.log.Debug("disk cache: evicted", "entries", removed, "bytes_now", total)
	return total
}

// failed counts a write that failed and logs it: at warn level the first time, then at debug
// (a full file system would otherwise flood the log).
func (d *Disk) failed(err error) {
	d.dropped.Add(1)
	if errors.Is(err, errNoRoom) {
		d.log.Debug("disk cache: value not written", "err", err)
		return
	}
	if d.warned.CompareAndSwap(false, true) {
		d.log.Warn("disk cache: writing an entry failed (further failures are logged at debug level)", "err", err)
		return
	}
	d.log.Debug("disk cache: writing an entry failed", "err", err)
}

func (d *Disk) stats() diskStats {
	return diskStats{
		hits:      d.hits.Load(),
		writes:    d.writes.Load(),
		dropped:   d.dropped.Load(),
		evictions: d.evictions.Load(),
		corrupt:   d.corruptCount.Load(),
		bytes:     d.counted.Load(),
		maxBytes:  d.maxBytes,
	}
}

// Close writes what is queued (for at most diskFlushTimeout; the rest is dropped), waits for
// the writers, and leaves the folder. Close is idempotent.
func (d *Disk) Close() {
	d.closeOnce.Do(func() {
		d.mu.Lock()
		d.closed = true
		d.wake.Broadcast()
		d.mu.Unlock()
		done := make(chan struct{})
		go func() {
			d.writer.Wait()
			close(done)
		}()
		timer := time.NewTimer(diskFlushTimeout)
		defer timer.Stop()
		select {
		case <-done:
		case <-timer.C:
			d.mu.Lock()
			d.abandon = true
			d.stopping.Store(true)
			d.dropped.Add(int64(len(d.queue)))
			for _, j := range d.queue {
				d.queued -= j.held()
				j.done()
			}
			d.queue = nil
			d.mu.Unlock()
			d.log.Warn("disk cache: writes still queued at close were dropped")
			<-done // a chunk being written is local and short; a blob stops at its next piece
		}
		d.closeFiles()
		os.Remove(d.ownerLock.Name())
		d.ownerLock.Close()
		d.lockFile.Close()
	})
}
