package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/oceanum-dmfs/dmfs/zarr"
)

// The write side of a --write mount. Files written through the mount form
// an overlay over each datasource's tree on the gateway: an overlay file
// wins over the gateway's file of the same name, so the mount reads its
// own writes at once and without a request. A file is spooled to local disk
// while it is written and uploaded whole, once, after it is closed:
//
//   - close() queues the upload (after --write-back, so that a tool that
//     renames its temporary file does so before anything is sent) and
//     returns; uploads run in parallel, up to WriteOptions.Uploads.
//   - A file named *.partial (zarr's DirectoryStore writes KEY.<hex>.partial
//     and renames it onto KEY) is never uploaded under that name: renaming
//     it onto its final name queues it at once.
//   - A rename of a file whose upload has not started moves it; one whose
//     content is on the gateway already is EXDEV (mv then copies).
//   - fsync() uploads the file now and returns the upload's error; a
//     store's consolidated metadata (.zmetadata, written last by to_zarr)
//     is uploaded only after every other file of its datasource, and its
//     close() or rename() fails with EIO if any of them failed: a
//     consolidated store is never committed over a failed chunk.

// partialSuffix marks a temporary file that is never uploaded under its
// name (zarr 2.13's DirectoryStore, rclone's, and others' convention).
const partialSuffix = ".partial"

// commitName is the metadata document written last by a consolidating
// writer: its upload waits for the rest of its datasource.
const commitName = ".zmetadata"

// defaultUploads bounds the uploads in flight: the gateway's real limit.
const defaultUploads = 64

// progressEvery is how often FinishWrites logs its progress.
const progressEvery = 2 * time.Second

// writer holds the write state of a mount: every overlay, the spool and
// the uploads. One mutex guards it all; transfers run outside it.
type writer struct {
	opt   *Options
	wo    WriteOptions
	slots chan struct{} // one per upload in flight
	life  context.Context
	stop  context.CancelFunc

	mu        sync.Mutex
	spoolUsed int64
	changed   chan struct{} // closed (and replaced) when spool space is freed or a job ends
	jobs      map[*job]struct{}
	inflight  map[string]*job // upload running per "id/key", to order uploads of one key
	uploaded  int
	failed    map[string]error // "id/key" -> why its upload failed for good
	finishing bool
	spoolWarn time.Time
	// idle are emptied spool files kept for reuse: creating a file per
	// file written (and unlinking it) is most of the write path's cost on
	// ext4, which searches for a free inode past the recently deleted.
	idle []*os.File
	// memUsed is the spool held in memory (see spool.go).
	memUsed int64
}

// overlay is what a datasource holds of the mount's writes. Guarded by
// writer.mu.
type overlay struct {
	files map[string]*wfile // by key
	dirs  map[string]*wdir  // by folder path: folders made here, and folders holding overlay entries
	gone  map[string]bool   // keys and folders deleted through the mount: hidden from the gateway's tree
	// created: the datasource was made by mkdir in this mount, so the
	// gateway holds nothing of it but what the mount uploaded.
	created  bool
	pending  int  // jobs not ended
	sent     bool // something was uploaded to it
	failures int  // uploads that failed for good
	firstErr string
}

type wdir struct {
	ino   uint64
	made  bool            // made by mkdir here (not a folder of the gateway's tree)
	names map[string]bool // overlay entries in it: name -> is a folder
}

// wfile is one file written through the mount. Its bytes are in its spool
// file, or (spool nil) on the gateway: uploaded, or the gateway's own value
// of a key opened for writing and not changed yet.
type wfile struct {
	mu  sync.Mutex // serialises changes of the content (writes, truncation)
	ds  *datasource
	ino uint64

	// Guarded by writer.mu.
	key      string
	spool    *spoolFile
	size     int64
	writers  int
	dirty    bool // changed since its last upload
	job      *job
	everSent bool // some version of it reached the gateway under key
	shadows  bool // the gateway had a value of key before this file
	err      error
	// writeErr is why a write to it failed (the spool was full, say): it
	// is not uploaded, and the mount not finalised, until it is truncated
	// or removed; its content is not what its writer meant.
	writeErr error
	mtime    time.Time
	detached bool // no longer in the overlay (replaced, removed)
	// renamed: moved into place while a handle was still open (FUSE's
	// RELEASE comes after close() returns, and may follow the rename): its
	// upload is queued without the write-back delay once the last handle
	// goes.
	renamed bool
}

// job is one upload of one wfile.
type job struct {
	f         *wfile
	timer     *time.Timer
	started   bool // the transfer is committed: the file's content is frozen until done
	cancelled bool
	done      chan struct{}
	err       error
}

func newWriter(opt *Options, wo WriteOptions) *writer {
	if wo.Uploads <= 0 {
		wo.Uploads = defaultUploads
	}
	if wo.SpoolSize <= 0 {
		wo.SpoolSize = 4 << 30
	}
	if wo.SpoolDir == "" {
		wo.SpoolDir = os.TempDir()
	}
	life, stop := context.WithCancel(context.Background())
	return &writer{opt: opt, wo: wo, slots: make(chan struct{}, wo.Uploads), life: life, stop: stop,
		changed: make(chan struct{}), jobs: map[*job]struct{}{}, inflight: map[string]*job{}, failed: map[string]error{}}
}

func newOverlay(created bool) *overlay {
	return &overlay{files: map[string]*wfile{}, dirs: map[string]*wdir{}, gone: map[string]bool{}, created: created}
}

// wakeLocked wakes everyone waiting for spool space or a job's end.
func (w *writer) wakeLocked() {
	close(w.changed)
	w.changed = make(chan struct{})
}

// isPartial reports whether key names a temporary file.
func isPartial(key string) bool { return strings.HasSuffix(key, partialSuffix) }

func isCommit(key string) bool { return path.Base(key) == commitName }

// file returns the overlay file at key, or nil.
func (w *writer) file(ds *datasource, key string) *wfile {
	w.mu.Lock()
	defer w.mu.Unlock()
	return ds.ov.files[key]
}

// dirLocked returns the index of folder p, made on demand.
func (w *writer) dirLocked(ov *overlay, p string) *wdir {
	d := ov.dirs[p]
	if d == nil {
		d = &wdir{ino: w.opt.inodes.one(), names: map[string]bool{}}
		ov.dirs[p] = d
	}
	return d
}

func splitKey(key string) (dir, name string) {
	if i := strings.LastIndexByte(key, '/'); i >= 0 {
		return key[:i], key[i+1:]
	}
	return "", key
}

// addLocked puts f into the overlay at key, replacing what was there.
func (w *writer) addLocked(f *wfile, key string) {
	ov := f.ds.ov
	if old := ov.files[key]; old != nil && old != f {
		w.detachLocked(old)
	}
	f.key, f.detached = key, false
	ov.files[key] = f
	delete(ov.gone, key)
	dir, name := splitKey(key)
	w.dirLocked(ov, dir).names[name] = false
}

// detachLocked takes f out of the overlay. A queued upload is cancelled
// and the spool freed, unless an upload is running (it ends on its own).
func (w *writer) detachLocked(f *wfile) {
	ov := f.ds.ov
	if ov.files[f.key] == f {
		delete(ov.files, f.key)
		dir, name := splitKey(f.key)
		if d := ov.dirs[dir]; d != nil {
			delete(d.names, name)
		}
	}
	f.detached = true
	if f.job != nil && !f.job.started {
		w.cancelLocked(f.job)
	}
	if f.job == nil {
		w.dropSpoolLocked(f)
	}
}

// newFile makes an overlay file at key: empty, or (size > 0, spool nil)
// standing for the gateway's value of key until changed.
func (w *writer) newFile(ds *datasource, key string, size int64, shadows bool) *wfile {
	f := &wfile{ds: ds, ino: w.opt.inodes.one(), size: size, shadows: shadows, mtime: w.opt.now()}
	w.mu.Lock()
	w.addLocked(f, key)
	w.mu.Unlock()
	return f
}

// --- spool ---

// reserveLocked takes n bytes of the spool budget, waiting while uploads
// can free space. ENOSPC when nothing can: every spooled byte belongs to a
// file still open or waiting to be renamed.
func (w *writer) reserveLocked(ctx context.Context, n int64) error {
	for {
		if w.spoolUsed+n <= w.wo.SpoolSize {
			w.spoolUsed += n
			return nil
		}
		if n > w.wo.SpoolSize || len(w.jobs) == 0 {
			if now := w.opt.now(); now.Sub(w.spoolWarn) > time.Minute {
				w.spoolWarn = now
				w.opt.Logger.Warn("write spool full: its space is held by files still open or not renamed yet; raise --write-spool-size",
					"spool_size", w.wo.SpoolSize, "asked", n)
			}
			return syscall.ENOSPC
		}
		w.kickLocked(nil)
		if err := w.waitChangedLocked(ctx); err != nil {
			return err
		}
	}
}

// waitChangedLocked waits, with w.mu released, until spool space is freed
// or a job ends, or ctx is done.
func (w *writer) waitChangedLocked(ctx context.Context) error {
	ch := w.changed
	w.mu.Unlock()
	defer w.mu.Lock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *writer) releaseLocked(n int64) {
	if n > 0 {
		w.spoolUsed -= n
		w.wakeLocked()
	}
}

// spoolLocked returns f's spool file, making an empty one (in memory
// until placeLocked moves it).
func (w *writer) spoolLocked(f *wfile) (*spoolFile, error) {
	if f.spool == nil {
		f.spool = &spoolFile{}
	}
	return f.spool, nil
}

// maxIdleSpools bounds the emptied spool files kept for reuse.
const maxIdleSpools = 256

// dropSpoolLocked frees f's spool (closed once its last reader is done).
func (w *writer) dropSpoolLocked(f *wfile) {
	sp := f.spool
	if sp == nil {
		return
	}
	f.spool = nil
	sp.dropped = true
	w.releaseLocked(sp.reserved)
	sp.reserved = 0
	if sp.refs == 0 {
		w.retireLocked(sp)
	}
}

func (w *writer) refLocked(sp *spoolFile) *spoolFile {
	if sp != nil {
		sp.refs++
	}
	return sp
}

func (w *writer) unref(sp *spoolFile) {
	if sp == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	sp.refs--
	if sp.refs == 0 && sp.dropped {
		w.retireLocked(sp)
	}
}

// --- content ---

// waitIdleLocked waits until no upload of f is running (its content is
// frozen while one is), cancelling a queued one: f is about to change.
func (w *writer) waitIdleLocked(ctx context.Context, f *wfile) error {
	for f.job != nil {
		j := f.job
		if !j.started {
			w.cancelLocked(j)
			return nil
		}
		w.mu.Unlock()
		select {
		case <-j.done:
		case <-ctx.Done():
			w.mu.Lock()
			return ctx.Err()
		}
		w.mu.Lock()
	}
	return nil
}

// materializeLocked copies f's value from the gateway into a spool file,
// for a change that keeps some of it. f.mu is held.
func (w *writer) materializeLocked(ctx context.Context, f *wfile) error {
	if f.spool != nil || f.size == 0 {
		return nil
	}
	key, size := f.key, f.size
	w.mu.Unlock()
	data, err := f.ds.opt.Cache.GetOrFetch(ctx, f.ds.cacheKey(key), f.ds.fetcher(key, false))
	w.mu.Lock()
	if err != nil {
		return err
	}
	if int64(len(data)) != size {
		return fmt.Errorf("%s/%s changed on the gateway while being opened for writing (%d bytes, expected %d)", f.ds.id, key, len(data), size)
	}
	sp, err := w.growLocked(ctx, f, size)
	if err != nil {
		return err
	}
	if _, err := sp.WriteAt(data, 0); err != nil {
		return fmt.Errorf("write spool: %w", err)
	}
	return nil
}

// write stores data at off in f.
func (w *writer) write(ctx context.Context, f *wfile, data []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w.mu.Lock()
	if err := w.prepareLocked(ctx, f); err != nil {
		w.mu.Unlock()
		return 0, err
	}
	end := off + int64(len(data))
	sp, err := w.growLocked(ctx, f, end)
	if err != nil {
		if ctx.Err() == nil {
			f.writeErr = err
		}
		w.mu.Unlock()
		return 0, err
	}
	w.refLocked(sp)
	w.mu.Unlock()
	n, err := sp.WriteAt(data, off)
	w.unref(sp)
	w.mu.Lock()
	f.size = max(f.size, off+int64(n))
	f.dirty, f.mtime = true, w.opt.now()
	if err != nil {
		err = fmt.Errorf("write spool: %w", err)
		f.writeErr = err
	}
	w.mu.Unlock()
	return n, err
}

// prepareLocked readies f for a change: no upload running, its gateway
// value copied in.
func (w *writer) prepareLocked(ctx context.Context, f *wfile) error {
	if f.err != nil && f.spool == nil && !f.dirty {
		// Its last upload failed and its bytes are gone: only a
		// truncation can start it anew.
		return f.err
	}
	if err := w.waitIdleLocked(ctx, f); err != nil {
		return err
	}
	return w.materializeLocked(ctx, f)
}

// growLocked makes f's spool hold end bytes, reserving the growth.
func (w *writer) growLocked(ctx context.Context, f *wfile, end int64) (*spoolFile, error) {
	sp, err := w.spoolLocked(f)
	if err != nil {
		return nil, err
	}
	if end > sp.reserved {
		need := end - sp.reserved
		if err := w.reserveLocked(ctx, need); err != nil {
			return nil, err
		}
		if f.spool != sp { // dropped while waiting (unlinked)
			w.releaseLocked(need)
			return nil, syscall.ENOENT
		}
		sp.reserved += need
	}
	if err := w.placeLocked(sp, end); err != nil {
		return nil, err
	}
	return sp, nil
}

// truncate sets f's size.
func (w *writer) truncate(ctx context.Context, f *wfile, size int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	if size == 0 {
		if err := w.waitIdleLocked(ctx, f); err != nil {
			return err
		}
		f.err, f.writeErr = nil, nil
		if f.size != 0 || f.spool != nil {
			w.dropSpoolLocked(f)
			f.size, f.dirty = 0, true
		}
		f.mtime = w.opt.now()
		return nil
	}
	if size == f.size {
		return nil
	}
	if err := w.prepareLocked(ctx, f); err != nil {
		return err
	}
	sp, err := w.growLocked(ctx, f, size)
	if err != nil {
		return err
	}
	if err := sp.Truncate(size); err != nil {
		return fmt.Errorf("write spool: %w", err)
	}
	f.size, f.dirty, f.mtime = size, true, w.opt.now()
	return nil
}

// read serves a read of f: from its spool, else from the cache or the
// gateway (an uploaded file, read back by the writer).
func (w *writer) read(ctx context.Context, f *wfile, dest []byte, off int64) ([]byte, error) {
	w.mu.Lock()
	sp, size, key, ferr := w.refLocked(f.spool), f.size, f.key, f.err
	w.mu.Unlock()
	if sp != nil {
		defer w.unref(sp)
		if off >= size {
			return nil, nil
		}
		n := min(int64(len(dest)), size-off)
		m, err := sp.ReadAt(dest[:n], off)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("write spool: %w", err)
		}
		return dest[:m], nil
	}
	if size == 0 {
		return nil, nil
	}
	if ferr != nil {
		return nil, ferr
	}
	data, err := f.ds.opt.Cache.GetOrFetch(ctx, f.ds.cacheKey(key), f.ds.fetcher(key, false))
	if err != nil {
		return nil, err
	}
	return sliceAt(data, off, len(dest)), nil
}

// --- uploads ---

// schedule queues f's upload after delay (none for a file renamed into
// place); a file already queued keeps its place.
func (w *writer) scheduleLocked(f *wfile, delay time.Duration) {
	if f.detached || isPartial(f.key) {
		return
	}
	if j := f.job; j != nil {
		if !j.started && delay == 0 && j.timer != nil && j.timer.Stop() {
			j.timer = nil
			go w.start(j)
		}
		return
	}
	j := &job{f: f, done: make(chan struct{})}
	f.job = j
	w.jobs[j] = struct{}{}
	f.ds.ov.pending++
	if delay > 0 && !w.finishing {
		j.timer = time.AfterFunc(delay, func() { w.start(j) })
		return
	}
	go w.start(j)
}

// kickLocked starts at once the queued uploads still waiting out their
// write-back delay: of datasource ds, or of all when ds is nil.
func (w *writer) kickLocked(ds *datasource) {
	for j := range w.jobs {
		if (ds == nil || j.f.ds == ds) && !j.started && j.timer != nil && j.timer.Stop() {
			j.timer = nil
			go w.start(j)
		}
	}
}

func (w *writer) cancelLocked(j *job) {
	if j.cancelled || j.started {
		return
	}
	j.cancelled = true
	if j.timer != nil {
		j.timer.Stop()
	}
	w.endLocked(j)
}

// endLocked retires j: it no longer counts as pending, and its waiters wake.
func (w *writer) endLocked(j *job) {
	delete(w.jobs, j)
	j.f.ds.ov.pending--
	if j.f.job == j {
		j.f.job = nil
	}
	close(j.done)
	w.wakeLocked()
}

// start runs j: it takes an upload slot (a rename while it waits for one
// still moves the file), waits for an earlier upload of the same key, and
// uploads the file's spooled bytes.
func (w *writer) start(j *job) {
	select {
	case w.slots <- struct{}{}:
	case <-w.life.Done():
		w.mu.Lock()
		defer w.mu.Unlock()
		if !j.cancelled && !j.started {
			j.started = true
			w.failLocked(j, j.f.key, fmt.Errorf("upload of %s/%s: %w", j.f.ds.id, j.f.key, context.Canceled))
			w.dropSpoolLocked(j.f)
			w.endLocked(j)
		}
		return
	}
	defer func() { <-w.slots }()
	w.mu.Lock()
	if j.cancelled || j.started {
		w.mu.Unlock()
		return
	}
	j.started = true
	f := j.f
	ck := f.ds.cacheKey(f.key)
	for {
		prev := w.inflight[ck]
		if prev == nil {
			break
		}
		w.mu.Unlock()
		<-prev.done
		w.mu.Lock()
	}
	w.inflight[ck] = j
	key, size, sp, writeErr := f.key, f.size, w.refLocked(f.spool), f.writeErr
	f.dirty = false
	w.mu.Unlock()

	var body io.ReaderAt
	var data []byte
	if sp != nil {
		body = sp
		if mem, ok := sp.bytes(); ok {
			// Sent from memory, then handed to the cache (the spool lets
			// it go), so that the mount reads its own writes as a fetched
			// chunk.
			data = mem[:size:size]
			body = bytes.NewReader(data)
		} else if size <= w.opt.cacheBytes/4 {
			// Read once: sent from memory, then kept in the cache.
			data = make([]byte, size)
			if _, rerr := sp.ReadAt(data, 0); rerr != nil && !errors.Is(rerr, io.EOF) {
				data = nil
			} else {
				body = bytes.NewReader(data)
			}
		}
		if data != nil && int64(len(data)) > w.opt.cacheBytes/4 {
			data = data[:0:0] // sent, but too large to keep: not cached
		}
	}
	var err error
	switch {
	case writeErr != nil:
		err = fmt.Errorf("%s/%s not uploaded: a write to it failed (%v); truncate or remove it", f.ds.id, key, writeErr)
	case f.ds.writer == nil:
		err = fmt.Errorf("%s/%s: %w", f.ds.id, key, zarr.ErrReadOnly)
	case sp == nil && size > 0:
		err = fmt.Errorf("%s/%s: nothing spooled to upload", f.ds.id, key)
	default:
		err = f.ds.writer.Put(w.life, key, body, size)
	}
	w.unref(sp)

	w.mu.Lock()
	defer w.mu.Unlock()
	if w.inflight[ck] == j {
		delete(w.inflight, ck)
	}
	if err != nil {
		w.failLocked(j, key, err)
	} else {
		w.uploaded++
		f.everSent, f.err = true, nil
		f.ds.ov.sent = true
		if data != nil {
			w.opt.Cache.Put(ck, data)
		} else {
			w.opt.Cache.Forget(ck)
		}
	}
	// Nothing changed f while its upload ran (changes wait for it).
	w.dropSpoolLocked(f)
	w.endLocked(j)
}

// failLocked records that j's upload of key failed for good.
func (w *writer) failLocked(j *job, key string, err error) {
	f := j.f
	j.err, f.err = err, err
	ov := f.ds.ov
	ov.failures++
	if ov.firstErr == "" {
		ov.firstErr = key
	}
	ck := f.ds.cacheKey(key)
	if _, ok := w.failed[ck]; !ok {
		w.failed[ck] = err
	}
	w.opt.Logger.Error("upload failed; the session will not be finalised", "datasource", f.ds.id, "key", key, "err", err)
}

// upload sends f now (no write-back delay) and waits for the result.
func (w *writer) upload(ctx context.Context, f *wfile) error {
	w.mu.Lock()
	if f.dirty && f.job == nil {
		w.scheduleLocked(f, 0)
	}
	j := f.job
	if j != nil && !j.started && j.timer != nil && j.timer.Stop() {
		j.timer = nil
		go w.start(j)
	}
	ferr := f.err
	w.mu.Unlock()
	if j == nil {
		return ferr
	}
	select {
	case <-j.done:
		if j.cancelled {
			return nil
		}
		return j.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// barrier uploads every queued file of ds but except now, waits for them,
// and says whether any upload of ds failed.
func (w *writer) barrier(ctx context.Context, ds *datasource, except *wfile) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if except != nil && except.job != nil {
		// except is about to be renamed onto, or is, the commit file:
		// its queued upload (under a temporary name) must not start
		// while the rest is waited for. The caller uploads it.
		w.cancelLocked(except.job)
	}
	w.kickLocked(ds)
	for {
		n := ds.ov.pending
		if except != nil && except.job != nil {
			n--
		}
		if n <= 0 {
			break
		}
		if err := w.waitChangedLocked(ctx); err != nil {
			return err
		}
	}
	if ds.ov.failures > 0 {
		return fmt.Errorf("%d upload(s) of datasource %s failed (first: %s): %w", ds.ov.failures, ds.id, ds.ov.firstErr, errUploadFailed)
	}
	return nil
}

var errUploadFailed = errors.New("upload failed")

// closed is called when a handle that wrote f is flushed (close()): the
// upload is queued, or for a store's consolidated metadata, sent after the
// rest of its datasource and waited for.
func (w *writer) closed(ctx context.Context, f *wfile) error {
	w.mu.Lock()
	key, dirty := f.key, f.dirty
	if !dirty || f.detached {
		w.mu.Unlock()
		return nil
	}
	if !isCommit(key) {
		if !isPartial(key) {
			delay := w.wo.WriteBack
			if f.renamed && f.writers == 0 {
				delay, f.renamed = 0, false
			}
			w.scheduleLocked(f, delay)
		}
		err := w.failedBeforeLocked(f.ds)
		w.mu.Unlock()
		return err
	}
	f.renamed = false
	w.mu.Unlock()
	return w.commit(ctx, f)
}

// failedBeforeLocked is the error of every later close and rename in a
// datasource where an upload failed for good, so that a writer that does
// not wait for uploads (dask threads writing chunks after the metadata, cp
// going on to the next file) still fails instead of finishing unaware; the
// session is not finalised anyway.
func (w *writer) failedBeforeLocked(ds *datasource) error {
	if ds.ov.failures == 0 {
		return nil
	}
	return fmt.Errorf("an earlier upload of datasource %s failed (%s; %d in all): the session will not be finalised: %w",
		ds.id, ds.ov.firstErr, ds.ov.failures, errUploadFailed)
}

// commit uploads a consolidated metadata file after everything else of its
// datasource; nothing if any of that failed.
func (w *writer) commit(ctx context.Context, f *wfile) error {
	if err := w.barrier(ctx, f.ds, f); err != nil {
		w.opt.Logger.Error("consolidated metadata not uploaded: the store it describes is incomplete",
			"datasource", f.ds.id, "key", f.key, "err", err)
		return err
	}
	return w.upload(ctx, f)
}

// FinishWrites ends the mount's writes: it uploads every file still
// waiting (no write-back delay), waits for all uploads, logging progress,
// and reports. Files still open, and temporary files never renamed, are
// not uploaded.
func (r *Root) FinishWrites(ctx context.Context) WriteSummary {
	w := r.opt.writer
	if w == nil {
		return WriteSummary{}
	}
	var sum WriteSummary
	w.mu.Lock()
	w.finishing = true
	r.mu.Lock()
	sources := make([]*datasource, 0, len(r.sources))
	for _, ds := range r.sources {
		sources = append(sources, ds)
	}
	r.mu.Unlock()
	// Everything but consolidated metadata first; then that, for the
	// datasources whose other uploads all succeeded.
	for _, commits := range []bool{false, true} {
		for _, ds := range sources {
			if ds.ov == nil {
				continue
			}
			for key, f := range ds.ov.files {
				switch {
				case !f.dirty || f.job != nil || isCommit(key) != commits:
				case f.writers > 0 || isPartial(key) || (commits && ds.ov.failures > 0):
					sum.NotUploaded = append(sum.NotUploaded, ds.id+"/"+key)
				default:
					w.scheduleLocked(f, 0)
				}
			}
		}
		if !w.waitAllLocked(ctx) {
			for j := range w.jobs {
				sum.NotUploaded = append(sum.NotUploaded, j.f.ds.id+"/"+j.f.key)
			}
			w.stop()
			break
		}
	}
	sum.Uploaded = w.uploaded
	for k, err := range w.failed {
		sum.Failed = append(sum.Failed, FailedUpload{Key: k, Err: err})
	}
	w.mu.Unlock()
	slices.SortFunc(sum.Failed, func(a, b FailedUpload) int { return strings.Compare(a.Key, b.Key) })
	slices.Sort(sum.NotUploaded)
	return sum
}

// waitAllLocked starts every queued upload and waits for all of them,
// logging progress; false if ctx ended first.
func (w *writer) waitAllLocked(ctx context.Context) bool {
	w.kickLocked(nil)
	last := w.opt.now()
	for len(w.jobs) > 0 {
		ch := w.changed
		left := len(w.jobs)
		w.mu.Unlock()
		select {
		case <-ch:
		case <-time.After(progressEvery):
		case <-ctx.Done():
			w.mu.Lock()
			return false
		}
		w.mu.Lock()
		if now := w.opt.now(); now.Sub(last) >= progressEvery {
			last = now
			w.opt.Logger.Info("waiting for uploads", "left", left, "uploaded", w.uploaded, "spooled_bytes", w.spoolUsed)
		}
	}
	return true
}

// shutdown stops what is left (the mount is gone without FinishWrites).
func (w *writer) shutdown() {
	w.stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, f := range w.idle {
		f.Close()
	}
	w.idle = nil
}
