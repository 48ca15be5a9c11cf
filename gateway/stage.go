package gateway

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Staged queries: POST /oceanql/stage/ answers a Stage for a Query, and
// the result is then read at /zarr/query/{qhash}/... (a dataset, as a Zarr
// store) or /oceanql/{qhash}?f=parquet (a table). A dataset query without
// filters or variables is the datasource itself and copies nothing; any
// other is materialised once per qhash in the query folder
// (Config.QueryDir): {qhash}/ (a Zarr v2 store with consolidated metadata)
// or {qhash}.parquet. The qhash digests what the answer depends on: for a
// dataset, the datasource, the files it reads (path, size, mtime) and the
// selection in index space; for a table, the normalised query and the
// file's size and mtime. So the same query staged twice gets the same qhash
// and is not computed again, and a changed datasource gets a new one.

// queryResult is one staged query.
type queryResult struct {
	qhash     string
	container string
	ds        *datasource // the datasource queried
	// store serves a dataset's result: ds itself for a query of the whole
	// store, else the materialised folder.
	store *datasource
	// tablePath is a filtered table's result file ("": ds's data.parquet).
	tablePath  string
	size, dlen int64
	coordmap   map[string]string
}

// stageJSON is the protocol's Stage.
type stageJSON struct {
	Query     queryJSON         `json:"query"`
	QHash     string            `json:"qhash"`
	Formats   []string          `json:"formats"`
	Size      int64             `json:"size"`
	DLen      int64             `json:"dlen"`
	CoordMap  map[string]string `json:"coordmap"`
	CoordKeys map[string]string `json:"coordkeys"`
	Container string            `json:"container"`
	Sig       string            `json:"sig"`
}

func (qr *queryResult) stage(q *oceanQuery) stageJSON {
	formats := []string{"zarr"}
	if qr.container != containerDataset {
		formats = []string{"parquet"}
	}
	keys := make(map[string]string, len(qr.coordmap))
	for k, v := range qr.coordmap {
		keys[v] = k
	}
	sig := sha256.Sum256(fmt.Appendf(nil, "%s\x00%s\x00%d\x00%d", qr.qhash, qr.container, qr.size, qr.dlen))
	return stageJSON{Query: q.normalised(), QHash: qr.qhash, Formats: formats, Size: qr.size, DLen: qr.dlen,
		CoordMap: qr.coordmap, CoordKeys: keys, Container: qr.container, Sig: hex.EncodeToString(sig[:16])}
}

// qhashRE is what a qhash looks like (sha224, hex).
var qhashRE = regexp.MustCompile(`^[0-9a-f]{56}$`)

// lookupQuery returns a staged query, or one materialised in the query
// folder by an earlier run (nil: unknown).
func (s *Server) lookupQuery(qhash string) *queryResult {
	if !qhashRE.MatchString(qhash) {
		return nil
	}
	s.queriesMu.Lock()
	qr := s.queries[qhash]
	s.queriesMu.Unlock()
	if qr != nil {
		return qr
	}
	dir := filepath.Join(s.queryDir, qhash)
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		store, err := openResultStore(qhash, dir)
		if err != nil {
			return nil
		}
		return s.rememberQuery(&queryResult{qhash: qhash, container: containerDataset, store: store})
	}
	if fi, err := os.Stat(dir + ".parquet"); err == nil && fi.Mode().IsRegular() {
		return s.rememberQuery(&queryResult{qhash: qhash, container: containerDataFrame, tablePath: dir + ".parquet", size: fi.Size()})
	}
	return nil
}

// rememberQuery records qr unless its qhash is already known; it returns
// the record kept.
func (s *Server) rememberQuery(qr *queryResult) *queryResult {
	s.queriesMu.Lock()
	defer s.queriesMu.Unlock()
	old := s.queries[qr.qhash]
	// A result found on disk (no ds: staged by an earlier run) gives way
	// to one staged now, which knows its sizes and coordinates.
	if old != nil && old.usable() && (old.ds != nil || qr.ds == nil) {
		if qr.store != nil && qr.store != qr.ds && qr.store != old.store {
			_ = qr.store.root.Close()
		}
		return old
	}
	if old != nil && old.store != nil && old.store != old.ds && old.store != qr.store {
		_ = old.store.root.Close()
	}
	s.queries[qr.qhash] = qr
	return qr
}

// usable tells whether a staged result can still be served.
func (qr *queryResult) usable() bool {
	switch {
	case qr.store != nil:
		return !qr.store.gone()
	case qr.tablePath != "":
		_, err := os.Stat(qr.tablePath)
		return err == nil
	}
	return qr.ds != nil && !qr.ds.gone()
}

// cachedQuery returns the usable result staged under qhash by this run.
func (s *Server) cachedQuery(qhash string) *queryResult {
	s.queriesMu.Lock()
	defer s.queriesMu.Unlock()
	if qr := s.queries[qhash]; qr != nil && qr.ds != nil && qr.usable() {
		return qr
	}
	return nil
}

// openResultStore opens a materialised result as a datasource, so that the
// zarr key and listing code serves it.
func openResultStore(qhash, dir string) (*datasource, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	return &datasource{id: "query/" + qhash, dir: dir, root: root, files: map[string]int64{},
		escaping: map[string]bool{}, links: map[string]string{}, container: containerDataset, metaFiles: rootMetadata}, nil
}

// readQueryBody reads a Query body (any Content-Type: the Python client
// sends none).
func readQueryBody(w http.ResponseWriter, r *http.Request) ([]byte, *queryError) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxQueryBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, &queryError{status: http.StatusRequestEntityTooLarge, detail: fmt.Sprintf("query larger than %d bytes", maxQueryBytes)}
		}
		return nil, &queryError{status: http.StatusBadRequest, detail: "cannot read the query"}
	}
	return body, nil
}

// stageQuery parses and stages a query. noData: nothing matches (204).
func (s *Server) stageQuery(ctx context.Context, body []byte) (q *oceanQuery, qr *queryResult, noData bool, qerr *queryError) {
	q, qerr = parseQuery(body, s.now())
	if qerr != nil {
		return nil, nil, false, qerr
	}
	start := time.Now()
	defer func() {
		s.counters.stage(q.pathName())
		switch {
		case qerr != nil:
			s.log.Info("query refused", "query", clip(q.pathName(), LogValueBytes), "status", qerr.status, "detail", clip(qerr.detail, LogValueBytes))
		case noData:
			s.log.Info("query has no data", "query", clip(q.pathName(), LogValueBytes))
		default:
			s.log.Info("query staged", "query", clip(q.pathName(), LogValueBytes), "qhash", qr.qhash,
				"container", qr.container, "duration", time.Since(start))
		}
	}()
	ds := s.lookup(q.Datasource)
	if ds == nil {
		return q, nil, false, &queryError{status: http.StatusNotFound, detail: fmt.Sprintf("Datasource %q not found", q.Datasource)}
	}
	if ds.gone() {
		return q, nil, false, &queryError{status: http.StatusGone, detail: fmt.Sprintf("Datasource %q was removed", q.Datasource)}
	}
	if ds.table != nil {
		qr, noData, qerr = s.stageTable(ds, q)
	} else {
		qr, noData, qerr = s.stageDataset(ctx, ds, q)
	}
	return q, qr, noData, qerr
}

// stageDataset stages a query on a Zarr store.
func (s *Server) stageDataset(ctx context.Context, ds *datasource, q *oceanQuery) (*queryResult, bool, *queryError) {
	if !q.filtered() {
		// The whole store: served from the datasource itself.
		qhash := qhashOf([]byte("whole"), []byte(ds.id), []byte(ds.modified().UTC().Format(time.RFC3339Nano)))
		if qr := s.cachedQuery(qhash); qr != nil {
			return qr, false, nil
		}
		size, dlen := wholeSizes(ds)
		coordmap := map[string]string{}
		if meta, err := readDatasetMeta(ds.root); err == nil {
			coordmap = meta.coordmap()
		}
		return s.rememberQuery(&queryResult{qhash: qhash, container: containerDataset, ds: ds, store: ds,
			size: size, dlen: dlen, coordmap: coordmap}), false, nil
	}
	// Commits wait while the result is computed, so that it is one state
	// of the store.
	ds.commitMu.RLock()
	defer ds.commitMu.RUnlock()
	plan, noData, qerr := planSubset(ds, q)
	if qerr != nil || noData {
		return nil, noData, qerr
	}
	version, err := plan.version()
	if err != nil {
		return nil, false, &queryError{status: 500, detail: fmt.Sprintf("cannot read %q: %v", ds.id, err)}
	}
	qhash := qhashOf([]byte("subset"), []byte(ds.id), []byte(version), plan.selectionJSON())
	if qr := s.cachedQuery(qhash); qr != nil {
		return qr, false, nil
	}
	v, err, _ := s.stageFlight.Do(qhash, func() (any, error) {
		if qr := s.cachedQuery(qhash); qr != nil {
			return qr, nil
		}
		final := filepath.Join(s.queryDir, qhash)
		if _, err := os.Stat(filepath.Join(final, ".zmetadata")); err != nil {
			tmp := filepath.Join(s.queryDir, ".tmp-"+qhash+"-"+randomHex(6))
			// Not the request's context: a client that gives up must not
			// leave other stagers of the same qhash with an error.
			if err := plan.materialise(context.WithoutCancel(ctx), tmp); err != nil {
				_ = os.RemoveAll(tmp)
				return nil, err
			}
			if err := os.Rename(tmp, final); err != nil {
				_ = os.RemoveAll(tmp)
				if _, serr := os.Stat(filepath.Join(final, ".zmetadata")); serr != nil {
					return nil, err
				}
			}
		}
		store, err := openResultStore(qhash, final)
		if err != nil {
			return nil, err
		}
		size, dlen := plan.sizes()
		return s.rememberQuery(&queryResult{qhash: qhash, container: containerDataset, ds: ds, store: store,
			size: size, dlen: dlen, coordmap: plan.meta.coordmap()}), nil
	})
	if err != nil {
		s.log.Error("query result not written", "datasource", ds.id, "qhash", qhash, "err", err)
		return nil, false, &queryError{status: 500, detail: fmt.Sprintf("cannot compute the query on %q: %v", ds.id, err)}
	}
	return v.(*queryResult), false, nil
}

// stageTable stages a query on a table.
func (s *Server) stageTable(ds *datasource, q *oceanQuery) (*queryResult, bool, *queryError) {
	f, pf, fi, err := openTable(ds.root)
	if err != nil {
		return nil, false, &queryError{status: 500, detail: fmt.Sprintf("cannot read table %q: %v", ds.id, err)}
	}
	rows := pf.NumRows()
	f.Close()
	nq, _ := json.Marshal(q.normalised())
	qhash := qhashOf([]byte("table"), []byte(ds.id), []byte(tableVersion(fi)), nq)
	if qr := s.cachedQuery(qhash); qr != nil {
		return qr, false, nil
	}
	coordmap := map[string]string{}
	for key, group := range map[string][]string{"t": tableTimeCols, "y": tableLatCols, "x": tableLonCols} {
		for _, c := range group {
			if slices.Contains(ds.table.columns, c) {
				coordmap[key] = c
				break
			}
		}
	}
	if !q.filtered() {
		if rows == 0 {
			return nil, true, nil
		}
		return s.rememberQuery(&queryResult{qhash: qhash, container: ds.container, ds: ds,
			size: fi.Size(), dlen: rows, coordmap: coordmap}), false, nil
	}
	type staged struct {
		qr     *queryResult
		noData bool
	}
	v, err, _ := s.stageFlight.Do(qhash, func() (any, error) {
		if qr := s.cachedQuery(qhash); qr != nil {
			return staged{qr: qr}, nil
		}
		final := filepath.Join(s.queryDir, qhash+".parquet")
		tmp := filepath.Join(s.queryDir, ".tmp-"+qhash+"-"+randomHex(6)+".parquet")
		n, qerr := filterTable(ds, q, tmp)
		if qerr != nil {
			_ = os.Remove(tmp)
			return nil, qerr
		}
		if n == 0 {
			_ = os.Remove(tmp)
			return staged{noData: true}, nil
		}
		if err := os.Rename(tmp, final); err != nil {
			_ = os.Remove(tmp)
			return nil, err
		}
		fi, err := os.Stat(final)
		if err != nil {
			return nil, err
		}
		return staged{qr: s.rememberQuery(&queryResult{qhash: qhash, container: ds.container, ds: ds, tablePath: final,
			size: fi.Size(), dlen: n, coordmap: coordmap})}, nil
	})
	if err != nil {
		var qe *queryError
		if errors.As(err, &qe) {
			return nil, false, qe
		}
		s.log.Error("query result not written", "datasource", ds.id, "qhash", qhash, "err", err)
		return nil, false, &queryError{status: 500, detail: fmt.Sprintf("cannot compute the query on %q: %v", ds.id, err)}
	}
	st := v.(staged)
	return st.qr, st.noData, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// serveStage answers POST /oceanql/stage/.
func (s *Server) serveStage(w http.ResponseWriter, r *http.Request, q *request) {
	if !s.checkZarrSession(w, q) {
		return
	}
	body, qerr := readQueryBody(w, r)
	if qerr != nil {
		writeDetail(w, qerr.status, qerr.detail)
		return
	}
	oq, qr, noData, qerr := s.stageQuery(r.Context(), body)
	switch {
	case qerr != nil:
		writeDetail(w, qerr.status, qerr.detail)
	case noData:
		w.WriteHeader(http.StatusNoContent)
	default:
		writeJSON(w, http.StatusOK, qr.stage(oq))
	}
}

// formats known to Datamesh that this gateway does not write.
var otherFormats = []string{"csv", "geojson", "json", "nc", "netcdf", "arrow", "zarr", "gpq", "gpkg", "shp", "xlsx"}

// serveOceanQL answers GET/HEAD /oceanql/{qhash}?f=FORMAT (a staged
// table's rows) and POST /oceanql/ (a query answered at once, as the
// Python client asks for tables).
func (s *Server) serveOceanQL(w http.ResponseWriter, r *http.Request, q *request) {
	if r.Method == http.MethodPost {
		body, qerr := readQueryBody(w, r)
		if qerr != nil {
			writeDetail(w, qerr.status, qerr.detail)
			return
		}
		_, qr, noData, qerr := s.stageQuery(r.Context(), body)
		switch {
		case qerr != nil:
			writeDetail(w, qerr.status, qerr.detail)
		case noData:
			w.WriteHeader(http.StatusNoContent)
		case qr.container == containerDataset:
			writeDetail(w, http.StatusUnsupportedMediaType, fmt.Sprintf(
				"dmfs serve does not write datasets as files: stage the query and read the Zarr store at /zarr/query/%s/", qr.qhash))
		case !acceptsParquet(r.Header.Get("Accept")):
			writeDetail(w, http.StatusNotAcceptable, "dmfs serve answers tables as application/parquet only")
		default:
			s.serveTableResult(w, r, qr)
		}
		return
	}
	qr := s.lookupQuery(q.arg)
	if qr == nil {
		writeDetail(w, http.StatusNotFound, "Query not found")
		return
	}
	format := strings.ToLower(r.URL.Query().Get("f"))
	if format == "" {
		format = "parquet"
		if qr.container == containerDataset {
			format = "zarr"
		}
	}
	switch {
	case qr.container == containerDataset:
		writeDetail(w, http.StatusUnsupportedMediaType, fmt.Sprintf(
			"query %s is a dataset: dmfs serve answers it as a Zarr store at /zarr/query/%s/, not as %q", qr.qhash, qr.qhash, format))
	case format == "parquet" || format == "pq":
		s.serveTableResult(w, r, qr)
	case slices.Contains(otherFormats, format):
		writeDetail(w, http.StatusUnsupportedMediaType, fmt.Sprintf("format %q is not available from dmfs serve; formats: parquet", format))
	default:
		writeDetail(w, http.StatusBadRequest, fmt.Sprintf("unknown format %q; formats: parquet", format))
	}
}

// serveTableResult answers a staged table's Parquet file.
func (s *Server) serveTableResult(w http.ResponseWriter, r *http.Request, qr *queryResult) {
	var f *os.File
	var err error
	if qr.tablePath != "" {
		f, err = os.Open(qr.tablePath)
	} else {
		f, err = qr.ds.root.Open(tableFile)
	}
	if err != nil {
		writeDetail(w, http.StatusNotFound, "Query result not found")
		return
	}
	serveParquet(w, r, f)
}

// serveQueryZarr answers GET/HEAD /zarr/query/{qhash}/{key}, with the same
// key and listing semantics as /zarr/{id}/.
func (s *Server) serveQueryZarr(w http.ResponseWriter, r *http.Request, q *request) {
	if !s.zarrRequestOK(w, q, "Query not found") {
		return
	}
	qr := s.lookupQuery(q.qhash)
	if qr == nil {
		writeDetail(w, http.StatusNotFound, "Query not found")
		return
	}
	if qr.store == nil {
		writeDetail(w, http.StatusNotFound, fmt.Sprintf("Query %s is a table: GET /oceanql/%s?f=parquet", qr.qhash, qr.qhash))
		return
	}
	if qr.store.gone() {
		if qr.store == qr.ds {
			writeDetail(w, http.StatusGone, fmt.Sprintf("Datasource %q was removed", qr.ds.id))
		} else {
			writeDetail(w, http.StatusNotFound, "Query not found")
		}
		return
	}
	if q.route == routeQueryZarrList {
		s.serveListing(w, r, qr.store, strings.TrimSuffix(q.key, "/"))
		return
	}
	s.serveCommittedKey(w, r, q, qr.store)
}

// routeQueryZarr routes /zarr/query/{qhash}/{key}; escaped is the path
// after /zarr/query/.
func routeQueryZarr(r *http.Request, escaped string, h func(http.ResponseWriter, *http.Request, *request)) *request {
	bad := &request{route: routeQuery, handler: func(w http.ResponseWriter, r *http.Request, q *request) {
		q.keyErr = errNoKey
		h(w, r, q)
	}}
	qhash, keyEsc, hasSlash := strings.Cut(escaped, "/")
	if !hasSlash || qhash == "" {
		return bad
	}
	q := &request{route: routeQueryZarrGet, handler: h, qhash: qhash, arg: "query/" + qhash}
	switch r.Method {
	case http.MethodGet:
	case http.MethodHead:
		q.route = routeQueryZarrHead
	default:
		return methodNotAllowed(routeQuery)
	}
	key, err := pathUnescape(keyEsc)
	if err != nil {
		q.keyErr = err
		return q
	}
	q.key = key
	if key == "" || strings.HasSuffix(key, "/") {
		q.route = routeQueryZarrList
	}
	return q
}

// removeOwnQueryDir removes the query folder New made.
func (s *Server) removeOwnQueryDir() error {
	s.queriesMu.Lock()
	for _, qr := range s.queries {
		if qr.store != nil && qr.store != qr.ds {
			_ = qr.store.root.Close()
		}
	}
	s.queries = map[string]*queryResult{}
	s.queriesMu.Unlock()
	if !s.ownQueryDir {
		return nil
	}
	err := os.RemoveAll(s.queryDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
