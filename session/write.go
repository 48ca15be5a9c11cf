package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"slices"
	"sync"
)

// Writes are staged in the session that carried them and become final only
// when that session is closed with finalise_write=true. So the client keeps,
// per session, what it wrote, to finalise it at a planned renewal (a
// checkpoint), to name what was lost with a session the gateway dropped, and
// to report every key at unmount.

// WriteReport is what became of the writes made through a Client, each key
// named "DATASOURCE/KEY". A key written several times is listed once, under
// its latest outcome; a failure is never cleared by a later success.
type WriteReport struct {
	// Final are keys written and made final: at renewal checkpoints, and
	// by CloseFinal(ctx, true).
	Final []string
	// Staged are keys written in the current session, not final yet.
	Staged []string
	// Discarded are keys of a session closed without finalising.
	Discarded []string
	// Failed are writes (and deletes) that failed for good, including every
	// key staged in a session lost to a 401 or whose finalise failed.
	Failed []FailedWrite
}

// FailedWrite is one write that failed for good.
type FailedWrite struct {
	Key string // "DATASOURCE/KEY"; "DATASOURCE/" for a Clear
	Err error
}

// OK reports whether every write succeeded and none was discarded.
func (r WriteReport) OK() bool { return len(r.Failed) == 0 && len(r.Discarded) == 0 }

// sessionWrites are the mutations staged in one session: key -> deleted.
type sessionWrites struct {
	ops  map[string]bool
	lost bool // the gateway dropped it (401) with writes staged: nothing in it can be final
}

// writes tracks the mutations of a Client and gates them around checkpoints.
type writes struct {
	mu       sync.Mutex
	inflight int           // mutations between begin and end
	hold     chan struct{} // non-nil while a checkpoint or close holds new ones; closed on release
	drained  chan struct{} // closed when inflight drops to 0 while held

	sessions  map[string]*sessionWrites
	final     map[string]bool // key -> deleted, made final
	discarded map[string]bool
	failed    map[string]error
}

func newWrites() *writes {
	return &writes{sessions: map[string]*sessionWrites{}, final: map[string]bool{},
		discarded: map[string]bool{}, failed: map[string]error{}}
}

// begin waits while mutations are held, then counts one in flight. life
// ends with the client: a hold by Close is never released.
func (w *writes) begin(ctx, life context.Context) error {
	for {
		w.mu.Lock()
		h := w.hold
		if h == nil {
			w.inflight++
			w.mu.Unlock()
			return nil
		}
		w.mu.Unlock()
		select {
		case <-h:
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-life.Done():
			return ErrClosed
		}
	}
}

func (w *writes) end() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.inflight--
	if w.inflight == 0 && w.drained != nil {
		close(w.drained)
		w.drained = nil
	}
}

// holdAndDrain stops new mutations and waits for those in flight. The
// caller releases (also on error).
func (w *writes) holdAndDrain(ctx context.Context) error {
	w.mu.Lock()
	if w.hold == nil {
		w.hold = make(chan struct{})
	}
	if w.inflight == 0 {
		w.mu.Unlock()
		return nil
	}
	if w.drained == nil {
		w.drained = make(chan struct{})
	}
	d := w.drained
	w.mu.Unlock()
	select {
	case <-d:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

func (w *writes) release() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.hold != nil {
		close(w.hold)
		w.hold = nil
	}
}

func (w *writes) session(id string) *sessionWrites {
	s := w.sessions[id]
	if s == nil {
		s = &sessionWrites{ops: map[string]bool{}}
		w.sessions[id] = s
	}
	return s
}

// staged records a mutation the gateway accepted in session sid; false
// when that session was already lost (the write cannot become final).
func (w *writes) staged(sid, key string, deleted bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.session(sid)
	if s.lost {
		return false
	}
	if deleted && key[len(key)-1] == '/' {
		// A Clear: what was staged in this datasource is gone with it.
		for k := range s.ops {
			if len(k) >= len(key) && k[:len(key)] == key {
				delete(s.ops, k)
			}
		}
	}
	s.ops[key] = deleted
	return true
}

func (w *writes) fail(key string, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.failed[key]; !ok {
		w.failed[key] = err
	}
}

// hasStaged reports whether session sid has mutations staged.
func (w *writes) hasStaged(sid string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.sessions[sid]
	return s != nil && len(s.ops) > 0
}

// lost reports whether session sid was lost with writes staged in it.
func (w *writes) lost(sid string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.sessions[sid]
	return s != nil && s.lost
}

// lose marks session sid as dropped by the gateway. Its staged keys fail;
// so will any write it accepts later. It returns the number of keys failed.
func (w *writes) lose(sid string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.session(sid)
	n := 0
	if len(s.ops) > 0 {
		s.lost = true
		err := &Error{Op: "finalise", Err: fmt.Errorf("session %s: %w", sid, ErrSessionLost)}
		n = w.failLocked(s, err)
	}
	return n
}

func (w *writes) failLocked(s *sessionWrites, err error) int {
	n := len(s.ops)
	for k := range s.ops {
		if _, ok := w.failed[k]; !ok {
			w.failed[k] = err
		}
	}
	clear(s.ops)
	return n
}

// settle ends session sid's staging: final (finalised), failed with err
// (a finalise that failed), or discarded (closed without finalising). It
// returns how many keys were written and deleted in it.
func (w *writes) settle(sid string, final bool, err error) (keys, deletes int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.sessions[sid]
	if s == nil {
		return 0, 0
	}
	delete(w.sessions, sid)
	for _, del := range s.ops {
		if del {
			deletes++
		} else {
			keys++
		}
	}
	switch {
	case err != nil:
		w.failLocked(s, err)
	case final:
		for k, del := range s.ops {
			w.final[k] = del
			delete(w.discarded, k)
		}
	default:
		for k, del := range s.ops {
			if !del {
				w.discarded[k] = true
			}
		}
	}
	return keys, deletes
}

func (w *writes) report(current string) WriteReport {
	w.mu.Lock()
	defer w.mu.Unlock()
	var r WriteReport
	staged := map[string]bool{}
	if s := w.sessions[current]; s != nil {
		for k, del := range s.ops {
			staged[k] = del
		}
	}
	for k, del := range w.final {
		if _, later := staged[k]; !later && !del && w.failed[k] == nil {
			r.Final = append(r.Final, k)
		}
	}
	for k, del := range staged {
		if !del && w.failed[k] == nil {
			r.Staged = append(r.Staged, k)
		}
	}
	for k := range w.discarded {
		if w.failed[k] == nil {
			r.Discarded = append(r.Discarded, k)
		}
	}
	for k, err := range w.failed {
		r.Failed = append(r.Failed, FailedWrite{Key: k, Err: err})
	}
	slices.Sort(r.Final)
	slices.Sort(r.Staged)
	slices.Sort(r.Discarded)
	slices.SortFunc(r.Failed, func(a, b FailedWrite) int {
		switch {
		case a.Key < b.Key:
			return -1
		case a.Key > b.Key:
			return 1
		}
		return 0
	})
	return r
}

// WriteReport returns what became of every write made through c, for the
// message at unmount.
func (c *Client) WriteReport() WriteReport { return c.writes.report(c.Info().ID) }

// Put writes key's value, the size bytes of body from offset 0, with POST
// as the Python client does. The body is streamed (never held in memory)
// and read again from its start for each retry, so it must stay unchanged
// until Put returns: a spool file fits. Retries are those of reads. The
// DATAMESH_CHUNK_WRITE_TIMEOUT bounds each wait for progress, sending or
// answering, never the whole transfer.
//
// errors.Is(err, ErrLocked) when another session holds the datasource for
// writing (409; the gateway's detail is in the *Error), fs.ErrPermission for
// 401/403, ErrSessionLost when the session dropped with writes staged in it,
// ErrReadOnly unless Config.Write. Every failure is recorded in WriteReport.
func (s *Store) Put(ctx context.Context, key string, body io.ReaderAt, size int64) error {
	if err := s.queryReadOnly("put", http.MethodPost, key); err != nil {
		return err
	}
	if size < 0 || (body == nil && size > 0) {
		err := &Error{Op: "put", Method: http.MethodPost, URL: redactURL(s.keyURL(key, false)),
			Err: fmt.Errorf("invalid body: %d bytes", size)}
		s.c.writes.fail(s.id+"/"+key, err)
		return err
	}
	return s.mutate(ctx, "put", http.MethodPost, key, body, size)
}

// Delete removes key. A key that does not exist is fs.ErrNotExist and not
// a failed write.
func (s *Store) Delete(ctx context.Context, key string) error {
	return s.mutate(ctx, "delete", http.MethodDelete, key, nil, 0)
}

// Clear removes every key of the datasource (DELETE /zarr/{id}/).
func (s *Store) Clear(ctx context.Context) error {
	return s.mutate(ctx, "clear", http.MethodDelete, "", nil, 0)
}

// queryReadOnly refuses a write to a query store: its results are the
// gateway's, not a datasource. Not a failed write of the mount: nothing was
// staged or sent.
func (s *Store) queryReadOnly(op, method, key string) error {
	if !s.query {
		return nil
	}
	return &Error{Op: op, Method: method, URL: redactURL(s.keyURL(key, false)),
		Err: fmt.Errorf("query results are read-only: %w", ErrReadOnly)}
}

// mutate sends one write, records its outcome, and returns its error.
func (s *Store) mutate(ctx context.Context, op, method, key string, body io.ReaderAt, size int64) error {
	if err := s.queryReadOnly(op, method, key); err != nil {
		return err
	}
	name := s.id + "/" + key
	err := s.mutateOnce(ctx, op, method, key, body, size, name)
	if err != nil && !(method == http.MethodDelete && errors.Is(err, fs.ErrNotExist)) {
		s.c.writes.fail(name, err)
		s.c.log.Warn("datamesh write failed", "op", op, "datasource", s.id, "key", key, "error", err.Error())
	}
	return err
}

func (s *Store) mutateOnce(ctx context.Context, op, method, key string, body io.ReaderAt, size int64, name string) error {
	clearAll := op == "clear"
	r := request{op: op, key: key, method: method, url: s.keyURL(key, clearAll), timeout: s.c.cfg.ChunkWriteTimeout}
	if method == http.MethodDelete {
		// As the Python client: deletes answer fast, within the API timeout.
		r.timeout = s.c.cfg.ReadTimeout
	} else {
		r.body, r.bodySize = body, size
	}
	if clearAll {
		r.url = s.keyURL("", false)
	}
	if !s.c.cfg.Write {
		return s.c.errorFor(r, 0, "", ErrReadOnly)
	}
	if s.invalid != nil {
		return s.c.errorFor(r, 0, "", s.invalid)
	}
	if err := checkKey(key, clearAll); err != nil {
		return s.c.errorFor(r, 0, "", err)
	}
	w := s.c.writes
	for try := 0; ; try++ {
		if err := w.begin(ctx, s.c.life); err != nil {
			return s.c.errorFor(r, 0, "", err)
		}
		id, err := s.c.sessionID()
		if err != nil {
			w.end()
			return s.c.errorFor(r, 0, "", err)
		}
		r.sessionID = id
		resp, err := s.c.do(ctx, r)
		if err == nil && resp.status/100 == 2 {
			ok := w.staged(id, name, method == http.MethodDelete)
			w.end()
			if !ok {
				return s.c.errorFor(r, resp.status, "", fmt.Errorf("session %s: %w", id, ErrSessionLost))
			}
			return nil
		}
		// Not in flight while renewing: a checkpoint waiting for in-flight
		// writes holds the renewal lock this may need.
		w.end()
		if err != nil {
			return err
		}
		if resp.status != http.StatusUnauthorized || try > 0 {
			return s.c.statusError(r, resp)
		}
		// The session is gone. What it staged can never be final: fail it
		// (and this write) rather than redo it in a new session, which
		// would finalise a partial result.
		if w.hasStaged(id) {
			if n := w.lose(id); n > 0 {
				s.c.log.Error("datamesh session lost with writes staged in it; they fail", "session", id, "keys", n)
			}
		}
		rerr := s.c.recoverUnauthorized(ctx, id)
		if w.lost(id) {
			// No status: a lost session is a failed write (EIO), not a
			// permission problem.
			return s.c.errorFor(r, 0, s.c.detail(resp.body), fmt.Errorf("session %s: %w", id, ErrSessionLost))
		}
		if rerr != nil {
			if ctx.Err() != nil || errors.Is(rerr, ErrClosed) {
				return s.c.errorFor(r, 0, "", rerr)
			}
			return fmt.Errorf("datamesh %s %s %s: session refused and not renewed: %w", op, method, redactURL(r.url), rerr)
		}
	}
}

// progressBody is an upload's body; each read (the transport taking more
// to send) is progress, which pushes the attempt's timeout back.
type progressBody struct {
	r        io.Reader
	progress func()
}

func (p *progressBody) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.progress()
	}
	return n, err
}

func (p *progressBody) Close() error { return nil }
