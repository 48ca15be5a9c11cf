package session

import (
	"context"
	"errors"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"

	"github.com/oceanum-dmfs/dmfs/zarr"
)

// Store reads the Zarr keys of one datasource, or of one staged query's
// results, through the gateway, with the client's current session, and
// writes a datasource's keys when Config.Write is set (see Put). It
// satisfies zarr.Store, zarr.SinkGetter and zarr.Lister.
type Store struct {
	c *Client
	// id is the datasource id, or the qhash of a query store.
	id string
	// path is the store's folder below the gateway URL, escaped, with a
	// trailing "/": "/zarr/{id}/" or "/zarr/query/{qhash}/".
	path string
	// invalid, when set, says why id may not be sent: every call fails
	// with it before anything is sent.
	invalid error
	// query marks a query store: read-only.
	query bool
	// goneLogged makes a 410 (datasource removed) one log line, not one per key.
	goneLogged sync.Once
}

var _ zarr.SinkGetter = (*Store)(nil)

// Store returns the key store of datasource id: {gateway}/zarr/{id}/. An id
// that ValidID refuses makes every call fail.
func (c *Client) Store(id string) *Store {
	return &Store{c: c, id: id, path: "/zarr/" + pathEscape(id) + "/", invalid: checkID(id)}
}

// QueryStore returns the key store of the results of a staged query (see
// Stage): {gateway}/zarr/query/{qhash}/, read with the same limits, timeouts,
// retries and status semantics as a datasource's Store. It is read-only:
// Put, Delete and Clear fail with ErrReadOnly. A qhash that Stage would
// refuse makes every call fail, without a request.
func (c *Client) QueryStore(qhash string) *Store {
	return &Store{c: c, id: qhash, path: "/zarr/query/" + pathEscape(qhash) + "/", invalid: checkQHash(qhash), query: true}
}

// Get returns the whole value of key: at most Config.MaxObjectSize bytes, or
// the caller's smaller limit carried by ctx; a larger value fails with
// ErrTooLarge, at once and without retries.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	return s.GetTo(ctx, key, nil)
}

// GetTo is Get that writes a value whose size its answer tells before its
// bytes (a Content-Length, or the total of a value fetched in parts) to the
// writer sink returns, through reused buffers, and then returns nil bytes;
// a value without one is returned as Get returns it, and sink is not
// called. sink is called once per attempt that gets as far as the body,
// with the size that attempt announced, after the size checks: a value
// over the limit never reaches it. Its failure, or its writer's, fails the
// read without retry. A nil sink is Get.
func (s *Store) GetTo(ctx context.Context, key string, sink zarr.Sink) ([]byte, error) {
	limit := s.c.cfg.MaxObjectSize
	if n, ok := ctxLimit(ctx); ok && n < limit {
		limit = max(n, 0)
	}
	if hint, ok := zarr.SizeHint(ctx); ok && hint >= rangeThreshold && limit >= rangeThreshold {
		b, err := s.getParts(ctx, key, limit, sink)
		if err != nil {
			s.noteGone(err)
		}
		return b, err
	}
	resp, err := s.requestPart(ctx, "get", http.MethodGet, key, limit, nil, nil, sink)
	if err != nil {
		s.noteGone(err)
		return nil, err
	}
	return resp.body, nil
}

// Head returns the size of key's value from its Content-Length.
func (s *Store) Head(ctx context.Context, key string) (int64, error) {
	resp, err := s.request(ctx, "head", http.MethodHead, key, -1)
	if err != nil {
		s.noteGone(err)
		return 0, err
	}
	if resp.size < 0 {
		return 0, &Error{Op: "head", Method: http.MethodHead, URL: redactURL(s.keyURL(key, false)),
			Status: resp.status, Err: fmt.Errorf("answer has no Content-Length: %w", zarr.ErrSizeUnknown)}
	}
	return resp.size, nil
}

// List returns the entries of folder prefix ("" for the root): names
// relative to the folder, folders with a trailing "/".
func (s *Store) List(ctx context.Context, prefix string) ([]string, error) {
	prefix = strings.TrimSuffix(prefix, "/")
	resp, err := s.request(ctx, "list", http.MethodGet, prefix, maxListingBody)
	if err != nil {
		return nil, err
	}
	return parseListing(resp.body), nil
}

// noteGone logs, once, that the gateway says the datasource no longer
// exists: callers see a failed read (ErrGone, not "not found") for each
// key, this says why.
func (s *Store) noteGone(err error) {
	if errors.Is(err, ErrGone) {
		s.goneLogged.Do(func() {
			what := "datasource"
			if s.query {
				what = "query"
			}
			s.c.log.Warn("datamesh "+what+" is gone (410); reads of its keys fail", what, s.id, "error", err.Error())
		})
	}
}

// keyURL is the gateway URL of key, or of folder key when list is set.
func (s *Store) keyURL(key string, list bool) string {
	u := s.c.gateway + s.path
	if key != "" {
		u += escapeKey(key)
		if list {
			u += "/"
		}
	}
	return u
}

// ctxLimit is the caller's bound on the size of one value, if ctx has one:
// zarr's metadata cap is zarr's policy, carried in the context.
func ctxLimit(ctx context.Context) (int64, bool) { return zarr.SizeLimit(ctx) }

// request sends one zarr request with the current session and reads a 2xx
// body of at most maxBody bytes (none when maxBody < 0). On a 401 the
// session is renewed once (see sessionDo) and the request is retried once.
func (s *Store) request(ctx context.Context, op, method, key string, maxBody int64) (*response, error) {
	return s.requestPart(ctx, op, method, key, maxBody, nil, nil, nil)
}

// requestPart is request with extra headers (a Range), a place for the body
// of a 206 answer (a 206 is then an answer like a 200), and a sink for a 200
// body with a Content-Length (see request.part and request.sink).
func (s *Store) requestPart(ctx context.Context, op, method, key string, maxBody int64, header http.Header, part *span, sink zarr.Sink) (*response, error) {
	list := op == "list"
	// Every zarr request, .zmetadata and listings included, gets the chunk
	// read timeout, as in the Python client: metadata can be large too.
	r := request{op: op, key: key, method: method, url: s.keyURL(key, list), readBody: maxBody >= 0,
		maxBody: maxBody, timeout: s.c.cfg.ChunkReadTimeout,
		limited: s.c.limiter != nil, background: zarr.IsReadahead(ctx), header: header, part: part, sink: sink}
	if s.invalid != nil {
		return nil, s.c.errorFor(r, 0, "", s.invalid)
	}
	if err := checkKey(key, list); err != nil {
		return nil, s.c.errorFor(r, 0, "", err)
	}
	resp, err := s.c.sessionDo(ctx, r)
	if err != nil {
		return nil, err
	}
	if resp.status != http.StatusOK && (header == nil || resp.status != http.StatusPartialContent) {
		return nil, s.c.statusError(r, resp)
	}
	return resp, nil
}

// sessionDo sends r with the current session (see do) and returns the last
// answer, whatever its status. On a 401 the session is renewed once (shared
// with every concurrent caller that saw the same session refused) and r is
// sent again, once, with the new session.
func (c *Client) sessionDo(ctx context.Context, r request) (*response, error) {
	for try := 0; ; try++ {
		id, err := c.sessionID()
		if err != nil {
			return nil, c.errorFor(r, 0, "", err)
		}
		r.sessionID = id
		resp, err := c.do(ctx, r)
		if err != nil {
			return nil, err
		}
		if resp.status != http.StatusUnauthorized || try > 0 {
			return resp, nil
		}
		if err := c.recoverUnauthorized(ctx, id); err != nil {
			if ctx.Err() != nil || errors.Is(err, ErrClosed) {
				return nil, c.errorFor(r, 0, "", err)
			}
			// The renewal's own error says why (bad token: permission;
			// gateway down: neither).
			return nil, fmt.Errorf("datamesh %s %s %s: session refused and not renewed: %w",
				r.op, r.method, redactURL(r.url), err)
		}
	}
}

// checkKey rejects keys that would address something outside the store.
func checkKey(key string, list bool) error {
	if key == "" {
		if list {
			return nil
		}
		return errors.New("empty key")
	}
	for _, seg := range strings.Split(key, "/") {
		switch seg {
		case "":
			return fmt.Errorf("key %q: empty path segment", key)
		case ".", "..":
			return fmt.Errorf("key %q: %q segment not allowed", key, seg)
		}
	}
	return nil
}

// escapeKey percent-encodes each segment of key and keeps the "/".
func escapeKey(key string) string {
	segs := strings.Split(key, "/")
	for i, seg := range segs {
		segs[i] = pathEscape(seg)
	}
	return strings.Join(segs, "/")
}

func pathEscape(s string) string { return url.PathEscape(s) }

var hrefAttr = regexp.MustCompile(`(?is)<a\s[^>]*?href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))`)

func hasScheme(href string, schemes ...string) bool {
	for _, sc := range schemes {
		if len(href) >= len(sc) && strings.EqualFold(href[:len(sc)], sc) {
			return true
		}
	}
	return false
}

// parseListing returns the hrefs of an HTML folder listing that name entries
// of the folder itself: no parent, no absolute or query links.
func parseListing(body []byte) []string {
	var out []string
	seen := map[string]bool{}
	for _, m := range hrefAttr.FindAllSubmatch(body, -1) {
		href := string(m[1]) + string(m[2]) + string(m[3])
		href = html.UnescapeString(strings.TrimSpace(href))
		if href == "" || strings.ContainsAny(href, "?#") || strings.HasPrefix(href, "/") {
			continue
		}
		if strings.Contains(href, "://") || hasScheme(href, "mailto:", "javascript:", "data:") {
			continue
		}
		name, err := url.PathUnescape(href)
		if err != nil {
			continue
		}
		name = strings.TrimPrefix(name, "./")
		switch strings.TrimSuffix(name, "/") {
		case "", ".", "..":
			continue
		}
		if strings.HasPrefix(name, "../") || seen[name] {
			continue
		}
		seen[name] = true
		out = append(out, name)
	}
	return out
}
