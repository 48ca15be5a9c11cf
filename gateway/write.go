package gateway

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultMaxWriteBytes bounds the body of one key written (413 beyond).
const DefaultMaxWriteBytes = 1 << 30

// newIDRule is what Datamesh enforces on the id of a datasource a write
// creates (DESIGN §3); existing ids outside it are still served.
var newIDRule = regexp.MustCompile(`^[a-z0-9_-]{3,80}$`)

// A session's writes live in a stage on disk until the session is closed
// with finalise_write=true (committed into the served folder) or ends
// otherwise (discarded). Staged files are named by a sequence number, so
// that no client-chosen path ever touches the staging folder.

// dsStage is what one session staged on one datasource.
type dsStage struct {
	id string
	// keys maps each staged key to its staged file and size.
	keys map[string]stagedFile
	// deleted holds keys deleted in the session; prefixes holds deleted
	// folders ("" is the whole store, DELETE /zarr/{id}/). A staged key
	// always wins over a deletion: the deletion came first.
	deleted  map[string]bool
	prefixes map[string]bool
	// pending counts writes that passed the lock check and are still
	// being staged: they hold the datasource already, so that two
	// sessions cannot both pass the check at once.
	pending int
}

type stagedFile struct {
	path string
	size int64
}

func (d *dsStage) empty() bool {
	return len(d.keys) == 0 && len(d.deleted) == 0 && len(d.prefixes) == 0
}

// hidden tells whether key, not staged, is deleted in the session.
func (d *dsStage) hidden(key string) bool {
	if d.deleted[key] {
		return true
	}
	for p := range d.prefixes {
		if p == "" || strings.HasPrefix(key, p+"/") {
			return true
		}
	}
	return false
}

func (d *dsStage) bytes() int64 {
	var n int64
	for _, f := range d.keys {
		n += f.size
	}
	return n
}

// sessionStage is one session's staging folder and stages.
type sessionStage struct {
	id         string
	dir        string
	allowMulti bool

	// mu orders staging, reading and committing of this session's writes.
	mu   sync.Mutex
	seq  int
	byDS map[string]*dsStage
	done bool // committed or discarded: no more writes
}

// writeStore holds the stages of all sessions.
type writeStore struct {
	base string // the staging folder

	mu       sync.Mutex
	sessions map[string]*sessionStage
	// claimMu makes the lock check and the claim one step.
	claimMu sync.Mutex
}

func newWriteStore(base string) *writeStore {
	return &writeStore{base: base, sessions: map[string]*sessionStage{}}
}

// get returns the session's stage, creating it when create is set.
func (ws *writeStore) get(id string, allowMulti, create bool) (*sessionStage, error) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if st, ok := ws.sessions[id]; ok || !create {
		return st, nil
	}
	dir, err := os.MkdirTemp(ws.base, "session-")
	if err != nil {
		return nil, err
	}
	st := &sessionStage{id: id, dir: dir, allowMulti: allowMulti, byDS: map[string]*dsStage{}}
	ws.sessions[id] = st
	return st, nil
}

// has tells whether session id has a stage.
func (ws *writeStore) has(id string) bool {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	_, ok := ws.sessions[id]
	return ok
}

// remove forgets a session's stage and deletes its folder.
func (ws *writeStore) remove(st *sessionStage) {
	ws.mu.Lock()
	if ws.sessions[st.id] == st {
		delete(ws.sessions, st.id)
	}
	ws.mu.Unlock()
	_ = os.RemoveAll(st.dir)
}

// claim checks that no other session holds dsID for writing that st may
// not write beside (both must allow multiwrite), and holds it for one write
// (release with st.release). False: 409.
func (ws *writeStore) claim(st *sessionStage, dsID string) bool {
	ws.claimMu.Lock()
	defer ws.claimMu.Unlock()
	if ws.conflict(st, dsID) {
		return false
	}
	st.mu.Lock()
	st.dsStage(dsID).pending++
	st.mu.Unlock()
	return true
}

// release ends the write claim took; callers hold st.mu.
func (st *sessionStage) release(dsID string) {
	if d := st.byDS[dsID]; d != nil && d.pending > 0 {
		d.pending--
	}
}

// conflict tells whether another session holds dsID for writing that st
// may not write beside.
func (ws *writeStore) conflict(st *sessionStage, dsID string) bool {
	ws.mu.Lock()
	others := make([]*sessionStage, 0, len(ws.sessions))
	for _, o := range ws.sessions {
		if o != st {
			others = append(others, o)
		}
	}
	ws.mu.Unlock()
	for _, o := range others {
		o.mu.Lock()
		d := o.byDS[dsID]
		holds := !o.done && d != nil && (!d.empty() || d.pending > 0)
		o.mu.Unlock()
		if holds && !(st.allowMulti && o.allowMulti) {
			return true
		}
	}
	return false
}

// stageFor returns what session id staged on dsID, or nil. The caller
// reads it under the returned session's mu.
func (ws *writeStore) stageFor(id, dsID string) (*sessionStage, *dsStage) {
	if id == "" {
		return nil, nil
	}
	ws.mu.Lock()
	st := ws.sessions[id]
	ws.mu.Unlock()
	if st == nil {
		return nil, nil
	}
	st.mu.Lock()
	d := st.byDS[dsID]
	if d == nil || st.done {
		st.mu.Unlock()
		return nil, nil
	}
	return st, d
}

// reapWrites discards the stages of sessions that ended without a close
// (expired, or ended idle), so that their writes and locks go.
func (s *Server) reapWrites() {
	s.sessions.openCount() // moves ended sessions out of the open heap
	s.endedMu.Lock()
	ended := s.ended
	s.ended = nil
	s.endedMu.Unlock()
	for _, id := range ended {
		if st, _ := s.writes.get(id, false, false); st != nil {
			s.discardSession(st, "expired")
		}
	}
}

// ReapExpired discards the writes of sessions that expired or ended idle.
// Requests do it too; `dmfs serve` also calls it periodically, so that an
// idle gateway frees the staging space.
func (s *Server) ReapExpired() { s.reapWrites() }

func (s *Server) discardSession(st *sessionStage, why string) {
	st.mu.Lock()
	if st.done {
		st.mu.Unlock()
		return
	}
	st.done = true
	var keys, bytes, dels int64
	for _, d := range st.byDS {
		keys += int64(len(d.keys))
		bytes += d.bytes()
		dels += int64(len(d.deleted) + len(d.prefixes))
	}
	st.mu.Unlock()
	s.writes.remove(st)
	s.counters.writesDiscarded(st.id, keys, bytes, dels)
	s.log.Info("session writes discarded", "session", st.id, "keys", keys, "bytes", bytes, "deletes", dels, "reason", why)
}

// writeFailure answers the write fault flags: a seeded fraction of
// retryable 503s, and keys that always fail with 500.
func (s *Server) writeFailure(w http.ResponseWriter, dsID, key string) bool {
	for _, g := range s.cfg.WriteFailKeys {
		if ok, _ := path.Match(g, key); ok {
			writeDetail(w, http.StatusInternalServerError, fmt.Sprintf("injected permanent write failure for %q", key))
			return true
		}
		if ok, _ := path.Match(g, dsID+"/"+key); ok {
			writeDetail(w, http.StatusInternalServerError, fmt.Sprintf("injected permanent write failure for %q", key))
			return true
		}
	}
	if s.cfg.WriteFailRate > 0 {
		s.failMu.Lock()
		fail := s.writeRng.Float64() < s.cfg.WriteFailRate
		s.failMu.Unlock()
		if fail {
			s.writeInjectedFailure(w, http.StatusServiceUnavailable)
			return true
		}
	}
	return false
}

// serveZarrWrite answers POST/PUT (stage a key) and DELETE (stage a
// deletion of a key, a folder, or the whole store).
func (s *Server) serveZarrWrite(w http.ResponseWriter, r *http.Request, q *request) {
	if !s.checkZarrSession(w, q) {
		return
	}
	s.counters.writeSession(q.sessionID)
	s.reapWrites()
	if code := s.injectFailure(); code != 0 {
		s.writeInjectedFailure(w, code)
		return
	}
	if q.keyErr != nil {
		writeDetail(w, http.StatusBadRequest, q.keyErr.Error())
		return
	}
	isDelete := r.Method == http.MethodDelete
	folder := q.key == "" || strings.HasSuffix(q.key, "/")
	if !isDelete && folder {
		writeDetail(w, http.StatusBadRequest, fmt.Sprintf("cannot write a folder key %q", q.key))
		return
	}
	key := strings.TrimSuffix(q.key, "/")
	if err := checkKey(key); err != nil {
		writeDetail(w, http.StatusBadRequest, fmt.Sprintf("refused key %q: %v", q.key, err))
		return
	}
	ds := s.lookup(q.arg)
	switch {
	case ds != nil && ds.gone():
		writeDetail(w, http.StatusGone, fmt.Sprintf("Datasource %q was removed", q.arg))
		return
	case ds != nil && ds.table != nil:
		writeDetail(w, http.StatusBadRequest, fmt.Sprintf("Datasource %q is a table: dmfs serve writes Zarr stores only", q.arg))
		return
	case ds == nil && !newIDRule.MatchString(q.arg):
		writeDetail(w, http.StatusBadRequest,
			fmt.Sprintf("Invalid datasource id %q: a new id must match ^[a-z0-9_-]{3,80}$", q.arg))
		return
	case ds != nil && (ds.escaping[key] || ds.links[key] != ""):
		writeDetail(w, http.StatusBadRequest, fmt.Sprintf("refused key %q: it is a symlink in the datasource", key))
		return
	}
	if ds != nil && key != "" && path.Dir(key) != "." {
		// A parent that leads out of the store (a symlink) is refused now,
		// not at commit.
		if _, err := ds.root.Stat(path.Dir(key)); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
			writeDetail(w, http.StatusBadRequest, fmt.Sprintf("refused key %q: it leads outside the datasource", key))
			return
		}
	}
	if s.writeFailure(w, q.arg, key) {
		return
	}
	sess, _, live := s.sessions.get(q.sessionID)
	if !live {
		writeDetail(w, http.StatusUnauthorized, "Session closed")
		return
	}
	st, err := s.writes.get(q.sessionID, sess.allowMulti, true)
	if err != nil {
		s.log.Error("cannot create a staging folder", "err", err)
		writeDetail(w, http.StatusInternalServerError, "cannot stage the write")
		return
	}
	if !s.writes.claim(st, q.arg) {
		s.counters.writeConflict()
		writeDetail(w, http.StatusConflict,
			fmt.Sprintf("Datasource %q is being written by another session; both sessions need allow_multiwrite=true", q.arg))
		return
	}
	defer func() {
		st.mu.Lock()
		st.release(q.arg)
		st.mu.Unlock()
	}()
	if isDelete {
		s.stageDelete(w, st, q.arg, key, folder)
		return
	}
	s.stageKey(w, r, st, q.arg, key)
}

// stageKey reads the body into the session's staging folder, bounded by
// MaxWriteBytes, with ReadTimeout bounding each stall rather than the
// whole body, as WriteTimeout does for answers.
func (s *Server) stageKey(w http.ResponseWriter, r *http.Request, st *sessionStage, dsID, key string) {
	f, err := os.CreateTemp(st.dir, "body-")
	if err != nil {
		writeStageError(w, st, err)
		return
	}
	tmp := f.Name()
	body := http.MaxBytesReader(w, r.Body, s.cfg.MaxWriteBytes)
	rc := http.NewResponseController(w)
	n, err := io.CopyBuffer(f, &deadlineReader{r: body, rc: rc, timeout: s.cfg.ReadTimeout}, make([]byte, 256<<10))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeDetail(w, http.StatusRequestEntityTooLarge,
				fmt.Sprintf("key %q is larger than %d bytes", key, s.cfg.MaxWriteBytes))
			return
		}
		writeDetail(w, http.StatusBadRequest, "cannot read the request body")
		return
	}
	st.mu.Lock()
	if st.done {
		st.mu.Unlock()
		_ = os.Remove(tmp)
		writeDetail(w, http.StatusUnauthorized, "Session closed")
		return
	}
	d := st.dsStage(dsID)
	st.seq++
	final := filepath.Join(st.dir, strconv.Itoa(st.seq))
	if err := os.Rename(tmp, final); err != nil {
		st.mu.Unlock()
		_ = os.Remove(tmp)
		writeStageError(w, st, err)
		return
	}
	var replaced int64 = -1
	if old, ok := d.keys[key]; ok {
		replaced = old.size
		_ = os.Remove(old.path)
	}
	d.keys[key] = stagedFile{path: final, size: n}
	st.mu.Unlock()
	s.counters.writeStaged(n, replaced)
	w.WriteHeader(http.StatusOK)
}

func writeStageError(w http.ResponseWriter, st *sessionStage, err error) {
	if errors.Is(err, syscall.ENOSPC) {
		writeDetail(w, http.StatusInsufficientStorage, "no space left to stage the write")
		return
	}
	writeDetail(w, http.StatusInternalServerError, "cannot stage the write")
}

func (st *sessionStage) dsStage(dsID string) *dsStage {
	d := st.byDS[dsID]
	if d == nil {
		d = &dsStage{id: dsID, keys: map[string]stagedFile{}, deleted: map[string]bool{}, prefixes: map[string]bool{}}
		st.byDS[dsID] = d
	}
	return d
}

// stageDelete records a deletion; staged keys it covers are dropped.
func (s *Server) stageDelete(w http.ResponseWriter, st *sessionStage, dsID, key string, folder bool) {
	st.mu.Lock()
	if st.done {
		st.mu.Unlock()
		writeDetail(w, http.StatusUnauthorized, "Session closed")
		return
	}
	d := st.dsStage(dsID)
	var dropped, droppedBytes int64
	for k, f := range d.keys {
		if k == key && !folder || folder && (key == "" || strings.HasPrefix(k, key+"/")) {
			_ = os.Remove(f.path)
			delete(d.keys, k)
			dropped++
			droppedBytes += f.size
		}
	}
	if folder {
		d.prefixes[key] = true
	} else {
		d.deleted[key] = true
	}
	st.mu.Unlock()
	s.counters.deleteStaged(dropped, droppedBytes)
	w.WriteHeader(http.StatusNoContent)
}

// deadlineReader moves the connection's read deadline forward before each
// read, so that a large body that keeps arriving is not cut off.
type deadlineReader struct {
	r       io.Reader
	rc      *http.ResponseController
	timeout time.Duration
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	if d.timeout > 0 {
		_ = d.rc.SetReadDeadline(time.Now().Add(d.timeout)) // unsupported outside net/http's server
	}
	return d.r.Read(p)
}

// finalise commits every stage of st into the served folder. On error the
// stage keeps what was not committed yet, so that a retried close goes on.
func (s *Server) finalise(st *sessionStage) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.done {
		return nil
	}
	ids := make([]string, 0, len(st.byDS))
	for id := range st.byDS {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if err := s.commitDS(st.byDS[id]); err != nil {
			return fmt.Errorf("datasource %q: %w", id, err)
		}
		delete(st.byDS, id)
	}
	st.done = true
	return nil
}

// commitDS puts one datasource's staged writes into the served folder.
// Each key is renamed into place, so a key is never seen half written; and
// the renames and deletions happen under the datasource's commit lock,
// which every read of it takes to open a key or list a folder, so through
// the gateway other sessions see all of the commit or none of it.
func (s *Server) commitDS(d *dsStage) error {
	if d.empty() || len(d.keys) == 0 && s.lookup(d.id) == nil {
		return nil // nothing to do; deletions in an id never created create nothing
	}
	ds, created, err := s.datasourceForCommit(d.id)
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(d.keys))
	for k := range d.keys {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	// Staged files on another file system than the store are copied next
	// to it first, outside the lock, so that the commit itself only renames.
	prep, err := os.MkdirTemp(s.dir, ".dmfs-commit-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(prep)
	srcs := make(map[string]string, len(keys))
	for i, k := range keys {
		src := d.keys[k].path
		probe := filepath.Join(prep, "p"+strconv.Itoa(i))
		if err := os.Link(src, probe); err == nil {
			srcs[k] = probe
			continue
		}
		if err := copyFile(src, probe); err != nil {
			return err
		}
		srcs[k] = probe
	}

	ds.commitMu.Lock()
	var trash []string
	// moveAside takes a key (or, for folders, a whole folder) out of the
	// store into prep, to be removed after the lock.
	moveAside := func(rel string, folder bool) error {
		fi, err := ds.root.Lstat(rel)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				return nil
			}
			return err
		}
		if fi.IsDir() && !folder {
			return nil // a deleted key names no folder
		}
		dst := filepath.Join(prep, "t"+strconv.Itoa(len(trash)))
		if err := os.Rename(filepath.Join(ds.dir, filepath.FromSlash(rel)), dst); err != nil {
			return err
		}
		trash = append(trash, dst)
		return nil
	}
	err = func() error {
		prefixes := make([]string, 0, len(d.prefixes))
		for p := range d.prefixes {
			prefixes = append(prefixes, p)
		}
		sort.Strings(prefixes)
		for _, p := range prefixes {
			if p != "" {
				if err := moveAside(p, true); err != nil {
					return err
				}
				continue
			}
			entries, err := os.ReadDir(ds.dir)
			if err != nil {
				return err
			}
			for _, e := range entries {
				if err := moveAside(e.Name(), true); err != nil {
					return err
				}
			}
		}
		for k := range d.deleted {
			if err := moveAside(k, false); err != nil {
				return err
			}
		}
		for _, k := range keys {
			if dir := path.Dir(k); dir != "." {
				// Through os.Root: a parent that is a symlink out of the
				// store is refused.
				if err := ds.root.MkdirAll(dir, 0o755); err != nil {
					return err
				}
			}
			if err := os.Rename(srcs[k], filepath.Join(ds.dir, filepath.FromSlash(k))); err != nil {
				return err
			}
		}
		return nil
	}()
	ds.commitMu.Unlock()
	if err != nil {
		return err
	}
	var bytes int64
	for _, k := range keys {
		bytes += d.keys[k].size
		_ = os.Remove(d.keys[k].path)
	}
	s.counters.writesCommitted(int64(len(keys)), bytes, int64(len(d.deleted)+len(d.prefixes)))
	if created {
		s.registerNew(ds)
	}
	return nil
}

// datasourceForCommit returns the datasource a commit goes into, creating
// its folder for a new id; created tells it is new.
func (s *Server) datasourceForCommit(id string) (*datasource, bool, error) {
	if ds := s.lookup(id); ds != nil {
		if ds.gone() {
			return nil, false, fmt.Errorf("datasource was removed")
		}
		return ds, false, nil
	}
	dir := filepath.Join(s.dir, id)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, false, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, false, err
	}
	return &datasource{id: id, dir: dir, root: root, files: map[string]int64{}, container: containerDataset, metaFiles: rootMetadata,
		escaping: map[string]bool{}, links: map[string]string{}}, true, nil
}

// registerNew indexes a datasource a commit created and adds it to the
// catalog.
func (s *Server) registerNew(tmp *datasource) {
	ds, err := loadDatasource(tmp.id, tmp.dir)
	_ = tmp.root.Close()
	if err != nil {
		s.log.Warn("committed datasource cannot be indexed", "datasource", tmp.id, "err", err)
		return
	}
	s.dsMu.Lock()
	defer s.dsMu.Unlock()
	if _, ok := s.datasources[ds.id]; ok {
		return
	}
	s.datasources[ds.id] = ds
	i := sort.SearchStrings(s.ids, ds.id)
	s.ids = append(s.ids, "")
	copy(s.ids[i+1:], s.ids[i:])
	s.ids[i] = ds.id
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// serveStagedOverlay answers a GET or HEAD by the session that staged
// writes on the datasource: its own writes and deletions over the
// committed store. Called with st.mu held; unlocks it before sending.
func (s *Server) serveStagedOverlay(w http.ResponseWriter, r *http.Request, q *request, st *sessionStage, d *dsStage) {
	ds := s.lookup(q.arg)
	if ds != nil && ds.gone() {
		st.mu.Unlock()
		writeDetail(w, http.StatusGone, fmt.Sprintf("Datasource %q was removed", q.arg))
		return
	}
	if q.route == routeZarrList {
		folder := strings.TrimSuffix(q.key, "/")
		entries, ok := overlayListing(ds, d, folder)
		st.mu.Unlock()
		if !ok {
			writeDetail(w, http.StatusNotFound, fmt.Sprintf("Folder %q not found in %q", folder+"/", q.arg))
			return
		}
		writeListing(w, r, q.arg, folder, entries)
		return
	}
	if sf, ok := d.keys[q.key]; ok {
		f, err := os.Open(sf.path)
		st.mu.Unlock() // the open file outlives a later replace or commit
		if err != nil {
			writeDetail(w, http.StatusInternalServerError, "cannot read the staged key")
			return
		}
		s.serveFile(w, r, q, f)
		return
	}
	hidden := d.hidden(q.key)
	st.mu.Unlock()
	if hidden || ds == nil {
		writeDetail(w, http.StatusNotFound, fmt.Sprintf("Key %q not found in %q", q.key, q.arg))
		return
	}
	s.serveCommittedKey(w, r, q, ds)
}

// overlayListing lists folder as the writing session sees it; false when
// the folder exists neither committed nor staged.
func overlayListing(ds *datasource, d *dsStage, folder string) ([]listEntry, bool) {
	child := func(name string) string {
		if folder == "" {
			return name
		}
		return folder + "/" + name
	}
	byName := map[string]listEntry{}
	found := false
	if ds != nil && (folder == "" || !d.hidden(folder+"/")) {
		ds.commitMu.RLock()
		entries, err := ds.listFolder(folder)
		ds.commitMu.RUnlock()
		if err == nil {
			found = true
			for _, e := range entries {
				k := child(e.name)
				if e.isDir && !d.hidden(k+"/") || !e.isDir && !d.hidden(k) {
					byName[e.name] = e
				}
			}
		}
	}
	prefix := ""
	if folder != "" {
		prefix = folder + "/"
	}
	for k := range d.keys {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		found = true
		name, _, isDir := strings.Cut(rest, "/")
		byName[name] = listEntry{name: name, isDir: isDir}
	}
	if !found {
		return nil, folder == "" && ds != nil
	}
	out := make([]listEntry, 0, len(byName))
	for _, e := range byName {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, true
}
