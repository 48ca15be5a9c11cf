package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"html"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
)

var errNoKey = errors.New("no key")

// pathUnescape decodes a percent-encoded path; "+" stays "+".
func pathUnescape(s string) (string, error) {
	out, err := url.PathUnescape(s)
	if err != nil {
		return "", fmt.Errorf("bad percent-encoding in %q", s)
	}
	return out, nil
}

// checkKey refuses keys that could name something outside the store.
func checkKey(key string) error {
	switch {
	case strings.ContainsRune(key, 0):
		return errors.New("key contains NUL")
	case strings.HasPrefix(key, "/"):
		return errors.New("key is an absolute path")
	case strings.ContainsRune(key, '\\'):
		return errors.New("key contains a backslash")
	}
	for _, seg := range strings.Split(strings.TrimSuffix(key, "/"), "/") {
		switch seg {
		case "..", ".":
			return errors.New("key contains a relative path segment")
		case "":
			if key != "" {
				return errors.New("key contains an empty path segment")
			}
		}
	}
	return nil
}

func (s *Server) serveCatalog(w http.ResponseWriter, r *http.Request, _ *request) {
	q := r.URL.Query()
	search := strings.ToLower(strings.TrimSpace(q.Get("search")))
	limit := -1
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeDetail(w, http.StatusBadRequest, fmt.Sprintf("limit must be a non-negative integer, not %q", v))
			return
		}
		limit = n
	}
	var buf bytes.Buffer
	buf.WriteString(`{"type":"FeatureCollection","features":[`)
	n := 0
	for _, id := range s.datasourceIDs() {
		if limit >= 0 && n >= limit {
			break
		}
		ds := s.lookup(id)
		if ds.gone() {
			continue
		}
		if search != "" && !strings.Contains(strings.ToLower(ds.id), search) &&
			!strings.Contains(strings.ToLower(ds.name), search) &&
			!strings.Contains(strings.ToLower(ds.description), search) {
			continue
		}
		if n > 0 {
			buf.WriteByte(',')
		}
		buf.Write(ds.featureJSON())
		n++
	}
	buf.WriteString("]}")
	writeRawJSON(w, http.StatusOK, buf.Bytes())
}

// liveDatasource returns datasource id, or answers 404 (unknown) or 410
// (its folder was removed since startup) and returns nil.
func (s *Server) liveDatasource(w http.ResponseWriter, id string) *datasource {
	ds := s.lookup(id)
	if ds == nil {
		writeDetail(w, http.StatusNotFound, fmt.Sprintf("Datasource %q not found", id))
		return nil
	}
	if ds.gone() {
		writeDetail(w, http.StatusGone, fmt.Sprintf("Datasource %q was removed", id))
		return nil
	}
	return ds
}

func (s *Server) serveDatasource(w http.ResponseWriter, _ *http.Request, q *request) {
	ds := s.liveDatasource(w, q.arg)
	if ds == nil {
		return
	}
	writeRawJSON(w, http.StatusOK, ds.featureJSON())
}

// zarrRequestOK answers a /zarr/ request that cannot be served (no
// session, an injected failure, no key part: notFound, a refused key) and
// says whether it can.
func (s *Server) zarrRequestOK(w http.ResponseWriter, q *request, notFound string) bool {
	if !s.checkZarrSession(w, q) {
		return false
	}
	if code := s.injectFailure(); code != 0 {
		s.writeInjectedFailure(w, code)
		return false
	}
	if errors.Is(q.keyErr, errNoKey) {
		writeDetail(w, http.StatusNotFound, notFound)
		return false
	}
	if q.keyErr != nil {
		writeDetail(w, http.StatusBadRequest, q.keyErr.Error())
		return false
	}
	if err := checkKey(q.key); err != nil {
		writeDetail(w, http.StatusBadRequest, fmt.Sprintf("refused key %q: %v", q.key, err))
		return false
	}
	return true
}

func (s *Server) serveZarr(w http.ResponseWriter, r *http.Request, q *request) {
	if !s.zarrRequestOK(w, q, "Not found.") {
		return
	}
	if st, d := s.writes.stageFor(q.sessionID, q.arg); st != nil {
		s.serveStagedOverlay(w, r, q, st, d) // unlocks st.mu
		return
	}
	ds := s.liveDatasource(w, q.arg)
	if ds == nil {
		return
	}
	if ds.table != nil {
		writeDetail(w, http.StatusNotFound, fmt.Sprintf("Datasource %q is a table (container %s): GET /data/%s", ds.id, ds.container, ds.id))
		return
	}
	if q.route == routeZarrList {
		s.serveListing(w, r, ds, strings.TrimSuffix(q.key, "/"))
		return
	}
	s.serveCommittedKey(w, r, q, ds)
}

// serveCommittedKey answers a GET or HEAD of a key from the store on disk.
func (s *Server) serveCommittedKey(w http.ResponseWriter, r *http.Request, q *request, ds *datasource) {
	if ds.escaping[q.key] {
		writeDetail(w, http.StatusBadRequest, fmt.Sprintf("refused key %q: it leads outside the datasource", q.key))
		return
	}
	if q.key == overridesFile {
		// The gateway's configuration of the datasource, not a key of it.
		writeDetail(w, http.StatusNotFound, fmt.Sprintf("Key %q not found in %q", q.key, q.arg))
		return
	}
	// The key is looked up on disk, not in the startup index: a chunk a
	// pipeline writes into the store later is served, as Datamesh serves a
	// store being written. os.Root refuses anything that would leave the
	// store, even a symlink planted after startup.
	path := q.key
	if target, ok := ds.links[q.key]; ok {
		path = target
	}
	ds.commitMu.RLock()
	f, err := ds.root.Open(path)
	ds.commitMu.RUnlock()
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) { // ENOTDIR: a key under a file
			writeDetail(w, http.StatusNotFound, fmt.Sprintf("Key %q not found in %q", q.key, q.arg))
			return
		}
		writeDetail(w, http.StatusBadRequest, fmt.Sprintf("refused key %q", q.key))
		return
	}
	s.serveFile(w, r, q, f)
}

// serveFile answers a GET or HEAD with f's bytes, and closes f.
func (s *Server) serveFile(w http.ResponseWriter, r *http.Request, q *request, f *os.File) {
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		writeDetail(w, http.StatusNotFound, fmt.Sprintf("Key %q not found in %q", q.key, q.arg))
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if r.Method == http.MethodHead && s.cfg.HeadWithoutLength {
		w = noLengthWriter{w}
	}
	// ServeContent sends Last-Modified (GET and HEAD), which clients use as
	// the key's stable mtime.
	http.ServeContent(w, r, "", fi.ModTime(), f)
}

// noLengthWriter drops Content-Length from an answer's headers, as gateways
// and proxies that stream do on HEAD, so that a client must not take a HEAD
// without one for a size. net/http adds none to a bodiless HEAD answer.
type noLengthWriter struct{ http.ResponseWriter }

func (w noLengthWriter) WriteHeader(code int) {
	w.Header().Del("Content-Length")
	w.ResponseWriter.WriteHeader(code)
}

func (w noLengthWriter) Write(p []byte) (int, error) {
	w.Header().Del("Content-Length") // headers go out with the first write
	return w.ResponseWriter.Write(p)
}

// serveListing writes the HTML index of one folder, in the shape that
// rclone's http backend and fsspec's HTTP filesystem parse.
func (s *Server) serveListing(w http.ResponseWriter, r *http.Request, ds *datasource, folder string) {
	ds.commitMu.RLock()
	entries, err := ds.listFolder(folder)
	ds.commitMu.RUnlock()
	if err != nil {
		writeDetail(w, http.StatusNotFound, fmt.Sprintf("Folder %q not found in %q", folder+"/", ds.id))
		return
	}
	writeListing(w, r, ds.id, folder, entries)
}

// writeListing writes the HTML index of one folder's entries.
func writeListing(w http.ResponseWriter, r *http.Request, id, folder string, entries []listEntry) {
	var b bytes.Buffer
	title := html.EscapeString(id + "/" + folder)
	fmt.Fprintf(&b, "<!DOCTYPE html>\n<html><head><title>%s</title></head><body>\n<h1>%s</h1>\n<ul>\n", title, title)
	for _, e := range entries {
		href, text := url.PathEscape(e.name), html.EscapeString(e.name)
		if strings.Contains(href, ":") {
			href = "./" + href // not a URL scheme
		}
		if e.isDir {
			href, text = href+"/", text+"/"
		}
		fmt.Fprintf(&b, "<li><a href=\"%s\">%s</a></li>\n", html.EscapeString(href), text)
	}
	b.WriteString("</ul>\n</body></html>\n")
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(b.Len()))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(b.Bytes())
	}
}
