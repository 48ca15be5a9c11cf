package session

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
)

// Download is a body streamed from the gateway: a whole table as Parquet.
// Read it to its end (io.EOF) and Close it; Close releases the connection
// and the timer at any point, and a Read blocked on the network returns
// once Close is called. It is one io.Reader: not for concurrent Reads.
//
// Each Read waits at most Config.DownloadTimeout (DATAMESH_DOWNLOAD_TIMEOUT)
// for bytes, as requests' read timeout does: the whole transfer may take
// longer, and time between Reads does not count. A failed Read is an
// *Error (a timeout matches context.DeadlineExceeded; a body that ended
// before its Content-Length, io.ErrUnexpectedEOF); it is not retried, as the
// bytes already read cannot be taken back. Bytes past Content-Length are
// never returned.
type Download struct {
	io.ReadCloser
	// Size is the body's Content-Length, -1 when the gateway did not say.
	Size int64
	// Validator names this version of the body (from its ETag, else its
	// Last-Modified) for IfChanged; "" when the gateway gave neither.
	Validator string
}

// ErrNotModified is the error of a download made with IfChanged when the
// gateway answers 304: the body is still the one the validator names.
var ErrNotModified = errors.New("datamesh body not modified")

// A DownloadOption changes a download request.
type DownloadOption func(*request)

// IfChanged makes a download conditional: the gateway sends the body only
// if it is no longer the version validator (a Download.Validator) names,
// and answers ErrNotModified otherwise. An empty or unknown validator
// leaves the request unconditional.
func IfChanged(validator string) DownloadOption {
	return func(r *request) {
		kind, v, _ := strings.Cut(validator, ":")
		switch {
		case v == "" || strings.ContainsFunc(v, unicode.IsControl): // not sendable
		case kind == "etag":
			r.header.Set("If-None-Match", v)
		case kind == "modified":
			r.header.Set("If-Modified-Since", v)
		}
	}
}

// validatorOf names the version of an answer's body: its ETag (strong or
// weak: If-None-Match compares weakly), else its Last-Modified.
func validatorOf(h http.Header) string {
	if etag := h.Get("ETag"); etag != "" {
		return "etag:" + etag
	}
	if lm := h.Get("Last-Modified"); lm != "" {
		return "modified:" + lm
	}
	return ""
}

// OpenTable starts the download of a tabular datasource (container
// dataframe or geodataframe) as Parquet: GET {gateway}/data/{id} with
// Accept: application/parquet and the session. Failures before the body
// starts are retried as for other calls (transport errors, 429, 502-504,
// one session renewal on a 401); a 404 matches fs.ErrNotExist, a 410
// ErrGone, 401/403 fs.ErrPermission. ctx bounds the request and the reading
// of the body.
func (c *Client) OpenTable(ctx context.Context, id string, opts ...DownloadOption) (*Download, error) {
	r := downloadRequest("download table", c.gateway+"/data/"+pathEscape(id), c.cfg.DownloadTimeout)
	if err := checkID(id); err != nil {
		return nil, c.errorFor(r, 0, "", err)
	}
	return c.download(ctx, r, opts)
}

// OpenQueryTable starts the download of a staged query's results whose
// container is a table (see Stage), as Parquet: GET
// {gateway}/oceanql/{qhash}?f=parquet with Accept: application/parquet and
// the session. Otherwise as OpenTable.
func (c *Client) OpenQueryTable(ctx context.Context, qhash string, opts ...DownloadOption) (*Download, error) {
	r := downloadRequest("download query", c.gateway+"/oceanql/"+pathEscape(qhash)+"?f=parquet", c.cfg.DownloadTimeout)
	if err := checkQHash(qhash); err != nil {
		return nil, c.errorFor(r, 0, "", err)
	}
	return c.download(ctx, r, opts)
}

func downloadRequest(op, url string, timeout time.Duration) request {
	return request{op: op, method: http.MethodGet, url: url, timeout: timeout, stream: true,
		header: http.Header{"Accept": {"application/parquet"}}}
}

// download sends r with the session and hands over a 200 body unread.
func (c *Client) download(ctx context.Context, r request, opts []DownloadOption) (*Download, error) {
	for _, o := range opts {
		o(&r)
	}
	resp, err := c.sessionDo(ctx, r)
	if err != nil {
		return nil, err
	}
	conditional := r.header.Get("If-None-Match") != "" || r.header.Get("If-Modified-Since") != ""
	if resp.status == http.StatusNotModified && conditional {
		return nil, c.errorFor(r, resp.status, "", ErrNotModified)
	}
	if resp.status != http.StatusOK {
		if resp.stream != nil { // another 2xx: not the table
			_ = resp.stream.Close()
		}
		return nil, c.statusError(r, resp)
	}
	return &Download{ReadCloser: resp.stream, Size: resp.stream.size, Validator: validatorOf(resp.header)}, nil
}

// stream is a 2xx body handed over by attempt, with the attempt's context
// and read timer. The timer runs only while a Read waits: it bounds each
// wait for bytes, never the transfer nor the caller's pauses.
type stream struct {
	body    io.ReadCloser
	ctx     context.Context // the attempt's: its cause says why it ended
	cancel  context.CancelCauseFunc
	idle    *time.Timer // nil: no read timeout
	timeout time.Duration
	size    int64
	// errorFor describes a failed read as an *Error of its request.
	errorFor func(error) error

	closed    atomic.Bool
	err       error // sticky: the first failure, returned by every later Read
	closeOnce sync.Once
}

// errStreamClosed is the cause of a Read after Close.
var errStreamClosed = errors.New("download closed")

func (s *stream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.closed.Load() {
		s.err = s.errorFor(errStreamClosed)
		return 0, s.err
	}
	if s.idle != nil {
		s.idle.Reset(s.timeout)
	}
	n, err := s.body.Read(p)
	if s.idle != nil {
		s.idle.Stop()
	}
	switch {
	case err == nil:
		return n, nil
	case err == io.EOF:
		s.err = io.EOF
		s.release()
		return n, io.EOF
	}
	// The attempt's context says why the read failed when it ended it: the
	// read timer (errIdle), the caller's ctx, or Close.
	if cause := context.Cause(s.ctx); cause != nil {
		err = cause
	}
	if s.closed.Load() {
		err = errStreamClosed
	}
	s.err = s.errorFor(err)
	s.release()
	return n, s.err
}

// Close releases the connection (closed, not drained, when the body was
// not read to its end), the context and the timer. It is idempotent.
func (s *stream) Close() error {
	s.closed.Store(true)
	s.release()
	return nil
}

func (s *stream) release() {
	s.closeOnce.Do(func() {
		if s.idle != nil {
			s.idle.Stop()
		}
		_ = s.body.Close()
		s.cancel(errStreamClosed)
	})
}
