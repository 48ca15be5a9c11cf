package session

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/oceanum-dmfs/dmfs/flow"
	"github.com/oceanum-dmfs/dmfs/zarr"
)

const (
	// maxErrorBody bounds how much of an error answer is read for its detail.
	maxErrorBody = 64 << 10
	// Bounds on the answers that are not zarr values, by what they can
	// legitimately be: a session is a few hundred bytes, one datasource's
	// GeoJSON some kilobytes, the catalog and a folder listing grow with
	// the number of entries.
	maxSessionBody    = 1 << 20
	maxDatasourceBody = 16 << 20
	maxCatalogBody    = 256 << 20
	maxListingBody    = 256 << 20
	// maxResponseHeader bounds the header block of an answer (net/http's
	// default is 10 MB, per connection).
	maxResponseHeader = 256 << 10
	// firstBlock and maxBlock size the blocks that hold a body of unknown
	// length as it arrives.
	firstBlock = 32 << 10
	maxBlock   = 8 << 20
	// maxRetryDelay caps one backoff wait, Retry-After included.
	maxRetryDelay = 30 * time.Second
	// poolSize is the number of connections kept per host: many chunk reads
	// run in parallel. With a Limiter, the zarr reads get up to its Max on
	// top (see connsPerHost).
	poolSize = 128
	// firstContactRetries bounds the retries of a failed connect before the
	// service or gateway has ever answered: an address that never answered
	// is more likely wrong or down than restarting, and the user running
	// `dmfs mount` is waiting for the verdict.
	firstContactRetries = 2
)

// secret holds the token; it formats as REDACTED.
type secret string

func (secret) String() string   { return redacted }
func (secret) GoString() string { return redacted }

// permanentError is a failure that another try cannot fix.
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

// isPermanent reports whether err, or an error it wraps, is a permanentError.
func isPermanent(err error) bool {
	var perm permanentError
	return errors.As(err, &perm)
}

// request is one logical call; do may send it several times.
type request struct {
	op        string
	key       string // the zarr key, for Config.OnRequest
	method    string
	url       string
	sessionID string      // sent as X-DATAMESH-SESSIONID when set
	header    http.Header // extra headers
	// timeout bounds the wait for the answer's headers, then each gap
	// between bytes of its body; negative: none (the caller's ctx only).
	timeout  time.Duration
	readBody bool  // read the whole body of a 2xx answer
	maxBody  int64 // bound on that body
	// part, when set with readBody, receives a 206 body of exactly its
	// length (a part of a larger value), instead of a new buffer.
	part *span
	// sink, when set with readBody, is given a 200 body that has a
	// Content-Length within maxBody, instead of a new buffer (see
	// zarr.Sink): it is called once per attempt that gets that far.
	sink    zarr.Sink
	noRetry bool // one try only (the caller has its own schedule)
	// stream hands a 2xx body to the caller unread (response.stream),
	// with the attempt's context and timeout, instead of reading it.
	stream bool
	// body, when set, is sent whole from offset 0 with each attempt
	// (bodySize bytes, as Content-Length): a ReaderAt, so that retries
	// re-send it without holding it in memory.
	body     io.ReaderAt
	bodySize int64
	// limited: each attempt holds a permit of the client's Limiter;
	// background: readahead, served after every other waiting read.
	limited, background bool
}

// response is the last answer do received.
type response struct {
	status int
	header http.Header
	size   int64  // Content-Length, -1 if absent
	body   []byte // the 2xx body when readBody (nil when it went to a part or sink), else the (bounded) error body
	// stream is the unread 2xx body of a request with stream set; whoever
	// holds the response must close it.
	stream *stream
	// sunk is the writer the sink gave for the whole value when a first
	// part (a 206 from offset 0) went to it: partLen bytes from offset 0.
	sunk    io.WriterAt
	partLen int64
}

// connsPerHost is the transport's bound on connections per host: poolSize
// for everything, plus the limiter's Max for the zarr reads, so that
// neither --max-connections nor the other requests (uploads, sessions)
// queue inside the transport, where no limiter sees them.
func connsPerHost(l *flow.Limiter) int {
	return poolSize + l.Max() // 0 for a nil Limiter
}

// newTransport is the client's transport, with at most perHost connections
// to a host; onSurplus is told when a connection dropped bytes sent past
// the end of an answer.
func newTransport(connectTimeout time.Duration, perHost int, onSurplus func(int)) *http.Transport {
	// NoTimeout: 0 is no limit for both (the request's own deadline and
	// context still apply).
	handshake := connectTimeout + 10*time.Second
	if connectTimeout < 0 {
		connectTimeout, handshake = 0, 0
	}
	dialer := &net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:                  http.ProxyFromEnvironment,
		TLSHandshakeTimeout:    handshake,
		MaxIdleConns:           2 * perHost,
		MaxIdleConnsPerHost:    perHost,
		MaxConnsPerHost:        perHost,
		IdleConnTimeout:        90 * time.Second,
		MaxResponseHeaderBytes: maxResponseHeader,
		// Chunks are compressed already; transparent gzip would also hide
		// Content-Length, which sizes reads and must match HEAD.
		DisableCompression: true,
		// HTTP/1.1 over many connections, as the official clients do: parallel
		// chunk reads do not queue behind one TCP stream.
		ForceAttemptHTTP2: false,
	}
	tr.DialContext, tr.DialTLSContext = dialers(func() *tls.Config { return tr.TLSClientConfig },
		dialer, tr.TLSHandshakeTimeout, onSurplus)
	return tr
}

func (c *Client) setAuth(h http.Header) {
	tok := string(c.token)
	if strings.HasPrefix(tok, "Bearer ") {
		h.Set("Authorization", tok)
		return
	}
	h.Set("X-DATAMESH-TOKEN", tok)
	h.Set("Authorization", "Token "+tok)
}

// do sends r, retrying transport errors, timeouts, 429 and 502-504 with
// exponential backoff (capped at 30 s) and jitter. Retries are bounded by
// RetryMaxElapsed, and by MaxRetries except for a restarting gateway (502,
// 503, 504, a refused connection after the first answer), which is waited
// out for the whole budget as the Python client does. It returns the last
// answer whatever its status, or an *Error when there was no usable answer.
// A cancelled ctx stops it at once.
func (c *Client) do(ctx context.Context, r request) (*response, error) {
	start := c.retryClock.Now()
	retries := c.cfg.MaxRetries
	counted := 0 // retries of errors that are not a restart
	for attempt := 0; ; attempt++ {
		var permit *flow.Permit
		if r.limited {
			// Waiting here is not the attempt's: its read timeout starts
			// once the permit is held.
			p, err := c.limiter.Acquire(ctx, r.background)
			if err != nil {
				return nil, c.errorFor(r, 0, "", err)
			}
			permit = p
		}
		resp, err := c.attempt(ctx, r, attempt, permit)
		permit.Release(outcome(ctx, resp, err))
		if ctx.Err() != nil {
			if resp != nil && resp.stream != nil {
				_ = resp.stream.Close()
			}
			return nil, c.errorFor(r, 0, "", context.Cause(ctx))
		}
		if isPermanent(err) {
			// Kept wrapped: callers with their own retries (closeSession)
			// stop too.
			return nil, c.errorFor(r, 0, "", err)
		}
		retryable := err != nil || retryableStatus(resp.status)
		if !retryable {
			return resp, nil
		}
		restart := c.restarting(resp, err)
		if !restart {
			counted++
		}
		if r.noRetry || counted > retries || (attempt >= firstContactRetries && !c.answered.Load() && isConnectError(err)) {
			if err != nil {
				return nil, c.errorFor(r, 0, "", err)
			}
			return resp, nil
		}
		delay := c.backoff(attempt)
		if resp != nil {
			if ra, ok := retryAfter(resp.header); ok && ra > delay {
				delay = ra
			}
		}
		delay = min(delay, maxRetryDelay)
		if c.retryClock.Now().Sub(start)+delay > c.cfg.RetryMaxElapsed {
			if err != nil {
				return nil, c.errorFor(r, 0, "", err)
			}
			return resp, nil
		}
		c.log.Debug("datamesh retry", "op", r.op, "method", r.method, "path", pathOf(r.url),
			"attempt", attempt+1, "delay", delay, "cause", retryCause(resp, err))
		fire, stop := c.retryClock.NewTimer(delay)
		select {
		case <-ctx.Done():
			stop()
			return nil, c.errorFor(r, 0, "", context.Cause(ctx))
		case <-fire:
		}
	}
}

// outcome is what an attempt's answer (or error) tells the limiter of the
// gateway's load, and the Retry-After that came with it.
func outcome(ctx context.Context, resp *response, err error) (flow.Outcome, time.Duration) {
	switch {
	case ctx.Err() != nil:
		return flow.Dropped, 0 // the caller gave up: no sample
	case err != nil && isPermanent(err):
		return flow.Dropped, 0 // refused here (too large, bad certificate): says nothing of load
	case err != nil:
		return flow.Failure, 0 // timeout, connection refused or broken
	}
	ra, _ := retryAfter(resp.header)
	switch resp.status {
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		return flow.Overload, ra
	case http.StatusBadGateway, http.StatusGatewayTimeout:
		return flow.Failure, ra
	}
	return flow.Success, 0
}

// restarting reports whether an answer or error says the gateway is
// restarting (or behind a proxy that says so): worth waiting minutes for.
// A refused connection counts only once the address has answered before.
func (c *Client) restarting(resp *response, err error) bool {
	if err != nil {
		return c.answered.Load() && isConnectError(err)
	}
	switch resp.status {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

func retryCause(resp *response, err error) string {
	if err != nil {
		return err.Error()
	}
	return strconv.Itoa(resp.status)
}

func retryableStatus(status int) bool {
	switch status {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// backoff is RetryBase doubled per attempt, with jitter in [d/2, d] so that
// many readers failing together do not retry together.
func (c *Client) backoff(attempt int) time.Duration {
	d := c.cfg.RetryBase
	for i := 0; i < attempt && d < maxRetryDelay; i++ {
		d *= 2
	}
	return c.jitter(min(d, maxRetryDelay))
}

// halfJitter is a wait in [d/2, d].
func halfJitter(d time.Duration) time.Duration {
	half := d / 2
	return half + rand.N(half+1)
}

// retryAfter reads a Retry-After given in seconds.
func retryAfter(h http.Header) (time.Duration, bool) {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	secs, err := strconv.ParseFloat(v, 64)
	if err != nil || secs < 0 {
		return 0, false
	}
	return min(time.Duration(secs*float64(time.Second)), maxRetryDelay), true
}

// errIdle is the cause of an attempt cancelled by its read timeout. It
// matches context.DeadlineExceeded, as a whole-request deadline did.
type errIdle struct{ d time.Duration }

func (e errIdle) Error() string {
	return fmt.Sprintf("read timeout: no answer or no bytes for %s", e.d)
}
func (errIdle) Unwrap() error   { return context.DeadlineExceeded }
func (errIdle) Timeout() bool   { return true }
func (errIdle) Temporary() bool { return true }

// idleBody pushes the attempt's read deadline forward each time bytes
// arrive, so that the timeout bounds the gaps between bytes and never the
// whole transfer.
type idleBody struct {
	io.ReadCloser
	timer *time.Timer
	d     time.Duration
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.timer.Reset(b.d)
	}
	return n, err
}

// attempt sends r once and reads the body. r.timeout bounds the wait for the
// answer's headers and then each gap between bytes of the body (a timer
// reset as bytes arrive cancels the attempt when it fires). A nil error
// means an answer with a complete body, or, for r.stream and a 2xx, with
// its body in resp.stream, unread: the attempt's context, timer and
// connection are then the stream's, released when it is closed.
// Config.OnRequest, when set, is told of it; permit (nil when unlimited)
// is told when the headers came.
func (c *Client) attempt(ctx context.Context, r request, n int, permit *flow.Permit) (*response, error) {
	if c.cfg.OnRequest == nil {
		return c.send(ctx, r, n, permit)
	}
	done := c.cfg.OnRequest(r.op, r.key)
	resp, err := c.send(ctx, r, n, permit)
	if done != nil {
		status := 0
		if resp != nil {
			status = resp.status
		}
		done(status, err)
	}
	return resp, err
}

// send is one attempt (see attempt).
func (c *Client) send(ctx context.Context, r request, n int, permit *flow.Permit) (*response, error) {
	start := time.Now()
	ctx, cancel := context.WithCancelCause(ctx)
	handed := false // the stream owns ctx, the timer and the body
	defer func() {
		if !handed {
			cancel(nil)
		}
	}()
	var idle *time.Timer
	if r.timeout >= 0 {
		idle = time.AfterFunc(r.timeout, func() { cancel(errIdle{r.timeout}) })
		defer func() {
			if !handed {
				idle.Stop()
			}
		}()
	}
	// The timer's cancellation surfaces as context.Canceled from net/http;
	// its cause says it was the timeout.
	timedOut := func(err error) error {
		if cause := context.Cause(ctx); errors.As(cause, new(errIdle)) {
			return cause
		}
		return err
	}
	req, err := http.NewRequestWithContext(ctx, r.method, r.url, nil)
	if err != nil {
		return nil, permanentError{fmt.Errorf("build request: %w", unwrapURLError(err))}
	}
	if r.body != nil || r.bodySize > 0 {
		// Sending is progress too: the timeout bounds each stall, in
		// either direction, never a large upload on a slow link.
		progress := func() {
			if idle != nil {
				idle.Reset(r.timeout)
			}
		}
		req.GetBody = func() (io.ReadCloser, error) {
			if r.bodySize == 0 {
				return http.NoBody, nil
			}
			return &progressBody{r: io.NewSectionReader(r.body, 0, r.bodySize), progress: progress}, nil
		}
		req.Body, _ = req.GetBody()
		req.ContentLength = r.bodySize
	}
	c.setAuth(req.Header)
	if r.sessionID != "" {
		req.Header.Set("X-DATAMESH-SESSIONID", r.sessionID)
	}
	for k, vs := range r.header {
		req.Header[k] = vs
	}
	// net/http would refuse these too, with an error that does not say it
	// is final.
	if err := checkHeaderValues(req.Header); err != nil {
		return nil, permanentError{err}
	}
	res, err := c.http.Do(req)
	permit.Answered()
	if err != nil {
		err = timedOut(classify(unwrapURLError(err)))
		if c.log.Enabled(ctx, slog.LevelDebug) {
			c.log.Debug("datamesh request", "method", r.method, "path", pathOf(r.url), "attempt", n,
				"error", err.Error(), "duration", time.Since(start))
		}
		return nil, err
	}
	// Closing a body not read to its end closes the connection rather than
	// draining it: an answer refused for its size is never read.
	defer func() {
		if !handed {
			_ = res.Body.Close()
		}
	}()
	c.answered.Store(true)
	var body io.Reader = res.Body
	if idle != nil {
		idle.Reset(r.timeout) // headers arrived: now the first gap
		body = &idleBody{ReadCloser: res.Body, timer: idle, d: r.timeout}
	}
	resp := &response{status: res.StatusCode, header: res.Header, size: res.ContentLength}
	var got int64 // body bytes read, wherever they went
	// partTotal: the whole size, when this answer is the first part of a
	// value fetched in parts that can go to the sink.
	var partTotal int64
	if res.StatusCode == http.StatusPartialContent && r.readBody && r.sink != nil && r.part == nil {
		partTotal = firstPartTotal(res, r.maxBody)
	}
	switch {
	case res.StatusCode/100 == 2 && r.stream:
		if idle != nil {
			idle.Stop() // from now on, the stream times each Read
		}
		resp.stream = &stream{body: res.Body, ctx: ctx, cancel: cancel, idle: idle, timeout: r.timeout,
			size: res.ContentLength, errorFor: func(err error) error { return c.errorFor(r, res.StatusCode, "", err) }}
		handed = true
	case res.StatusCode == http.StatusPartialContent && r.readBody && r.part != nil:
		got, err = readInto(body, res.ContentLength, *r.part)
		if err != nil {
			err = timedOut(err)
		}
	case res.StatusCode == http.StatusOK && r.readBody && r.sink != nil && res.ContentLength >= 0:
		got, err = readTo(body, res.ContentLength, r.maxBody, r.sink)
		if err != nil {
			err = timedOut(err)
		}
	case partTotal > 0:
		// Its Content-Range tells the whole size, so the part goes to
		// the sink at offset 0 rather than through a fresh buffer.
		var w io.WriterAt
		w, got, err = readToSink(body, res.ContentLength, partTotal, r.sink)
		resp.sunk, resp.partLen = w, got
		if err != nil {
			err = timedOut(err)
		}
	case res.StatusCode/100 == 2 && r.readBody:
		resp.body, err = readBody(body, res.ContentLength, r.maxBody)
		got = int64(len(resp.body))
		if err != nil {
			err = timedOut(err)
		}
	case res.StatusCode/100 != 2:
		resp.body, _ = io.ReadAll(io.LimitReader(body, maxErrorBody))
		got = int64(len(resp.body))
	}
	if c.log.Enabled(ctx, slog.LevelDebug) {
		attrs := []any{"method", r.method, "path", pathOf(r.url), "attempt", n,
			"status", res.StatusCode, "bytes", got, "duration", time.Since(start)}
		if err != nil {
			attrs = append(attrs, "error", err.Error())
		}
		c.log.Debug("datamesh request", attrs...)
	}
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// classify marks the transport errors that another try cannot fix: a
// refused redirect (already marked by checkRedirect), a certificate that
// does not verify, a TLS server that is not one.
func classify(err error) error {
	var cv *tls.CertificateVerificationError
	var rh tls.RecordHeaderError
	if errors.As(err, &cv) || errors.As(err, &rh) {
		return permanentError{err}
	}
	return err
}

// checkHeaderValues rejects a header value that cannot be sent (a control
// character other than tab, as net/http checks). The value is not quoted:
// it may be the token.
func checkHeaderValues(h http.Header) error {
	for k, vs := range h {
		for _, v := range vs {
			for i := 0; i < len(v); i++ {
				if b := v[i]; (b < 0x20 && b != '\t') || b == 0x7f {
					return fmt.Errorf("header %s: invalid value (control character at byte %d)", k, i)
				}
			}
		}
	}
	return nil
}

// span is n bytes at off of w: where one part of a larger value goes.
type span struct {
	w      io.WriterAt
	off, n int64
}

// bytesAt writes into a slice of fixed length: the one buffer of a value
// fetched in parts without a sink.
type bytesAt []byte

func (b bytesAt) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(b)) || int64(len(p)) > int64(len(b))-off {
		return 0, fmt.Errorf("write of %d bytes at %d past the end of a %d-byte buffer", len(p), off, len(b))
	}
	return copy(b[off:], p), nil
}

// copyBufferSize sizes the buffers bodies are copied through on their way
// to a WriterAt.
const copyBufferSize = 256 << 10

// copyBuffers are reused, so that a body written to a sink costs no fresh
// memory on its way: the first touch of fresh pages costs more than the
// copy.
var copyBuffers = sync.Pool{New: func() any {
	b := make([]byte, copyBufferSize)
	return &b
}}

// copyAt copies the next n bytes of body to dst.w at dst.off, dst.off+1...
// through a pooled buffer, and returns how many it read. A failed write is
// a permanentError; a failed or short read (io.ErrUnexpectedEOF) is
// returned as it is, for the caller to say what was short.
func copyAt(body io.Reader, dst span) (int64, error) {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	buf := *bp
	var done int64
	for done < dst.n {
		m, err := io.ReadFull(body, buf[:min(int64(len(buf)), dst.n-done)])
		if m > 0 {
			if _, werr := dst.w.WriteAt(buf[:m], dst.off+done); werr != nil {
				return done, permanentError{fmt.Errorf("write %d body bytes at offset %d: %w", m, dst.off+done, werr)}
			}
			done += int64(m)
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return done, err
		}
	}
	return done, nil
}

// readInto reads a body of exactly dst.n bytes into dst.
func readInto(body io.Reader, size int64, dst span) (int64, error) {
	if size >= 0 && size != dst.n {
		return 0, fmt.Errorf("part of %d bytes answered with %d", dst.n, size)
	}
	n, err := copyAt(body, dst)
	if err != nil && !isPermanent(err) {
		return n, fmt.Errorf("part shorter than asked: %d of %d bytes: %w", n, dst.n, err)
	}
	return n, err
}

// readTo reads a body of size bytes (its Content-Length) into the writer
// sink returns, with readBody's bounds: a size above limit is refused
// without reading and without calling sink, a shorter body is an error.
// The sink's failure, or its writer's, is permanent: another try would
// write to the same place.
func readTo(body io.Reader, size, limit int64, sink zarr.Sink) (int64, error) {
	if size > limit {
		return 0, tooLong(size, limit)
	}
	_, n, err := readToSink(body, size, size, sink)
	return n, err
}

// firstPartTotal is the whole size of the value whose first part a 206
// answer is (Content-Range from 0, agreeing with the Content-Length),
// within limit; 0 if it is not one.
func firstPartTotal(res *http.Response, limit int64) int64 {
	from, to, total, ok := parseContentRange(res.Header.Get("Content-Range"))
	if !ok || from != 0 || to+1 != res.ContentLength || total > limit {
		return 0
	}
	return total
}

// readToSink reads the first n bytes of a value of total bytes from body
// into the writer sink gives for total, and returns that writer. A body
// shorter than n is an error (another try may do better); the sink's
// failure, or its writer's, is permanent: another try would write to the
// same place.
func readToSink(body io.Reader, n, total int64, sink zarr.Sink) (io.WriterAt, int64, error) {
	w, err := sinkWriter(sink, total)
	if err != nil {
		return nil, 0, permanentError{err}
	}
	got, err := copyAt(body, span{w: w, n: n})
	if err != nil && !isPermanent(err) {
		return nil, got, shortBody(got, n, err)
	}
	return w, got, err
}

// sinkWriter is the writer sink gives for a value of size bytes.
func sinkWriter(sink zarr.Sink, size int64) (io.WriterAt, error) {
	w, err := sink(size)
	if err == nil && w == nil {
		err = errors.New("no writer")
	}
	if err != nil {
		return nil, fmt.Errorf("sink for %d bytes: %w", size, err)
	}
	return w, nil
}

func tooLong(size, limit int64) error {
	return permanentError{fmt.Errorf("%w: Content-Length %d is more than the %d bytes allowed", ErrTooLarge, size, limit)}
}

func shortBody(n, size int64, err error) error {
	return fmt.Errorf("body shorter than its Content-Length: %d of %d bytes: %w", n, size, err)
}

// readBody reads a 2xx body of at most limit bytes. With a Content-Length it
// reads into one buffer of exactly that size, refusing at once (without
// reading) a length above limit; a shorter body is an error, never data,
// and bytes past its end never reach it (guardConn drops them). Without
// one, see readUnsized.
func readBody(body io.Reader, size, limit int64) ([]byte, error) {
	if size > limit {
		return nil, tooLong(size, limit)
	}
	if size < 0 {
		return readUnsized(body, limit)
	}
	buf := make([]byte, size)
	n, err := io.ReadFull(body, buf)
	if err != nil {
		return nil, shortBody(int64(n), size, err)
	}
	return buf, nil
}

// readUnsized reads a body of unknown length into blocks allocated as bytes
// arrive, each twice the last (up to maxBlock), so that a body that runs
// past limit costs no more than limit before it is refused, and never
// copies what it already read while it grows. At the end the blocks are
// joined into one exact slice, each dropped as it is copied; a body that
// fits its one block is returned without a copy.
func readUnsized(body io.Reader, limit int64) ([]byte, error) {
	var blocks [][]byte
	var total int64
	next := int64(firstBlock)
	for {
		size := min(next, limit-total)
		if size == 0 {
			// At the limit: one more byte and the body is too large.
			var probe [1]byte
			m, err := io.ReadFull(body, probe[:])
			if m > 0 {
				return nil, permanentError{fmt.Errorf("%w: body without Content-Length is more than the %d bytes allowed", ErrTooLarge, limit)}
			}
			if err != io.EOF {
				return nil, fmt.Errorf("read body: %w", err)
			}
			break
		}
		b := make([]byte, size)
		m, err := io.ReadFull(body, b)
		total += int64(m)
		if m > 0 {
			blocks = append(blocks, b[:m])
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read body: %w", err)
		}
		next = min(2*next, maxBlock)
	}
	switch {
	case len(blocks) == 0:
		return []byte{}, nil
	case len(blocks) == 1 && cap(blocks[0]) == len(blocks[0]):
		return blocks[0], nil
	}
	out := make([]byte, 0, total)
	for i := range blocks {
		out = append(out, blocks[i]...)
		blocks[i] = nil
	}
	return out, nil
}

// unwrapURLError drops *url.Error, whose message repeats the full URL with
// its query.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// isConnectError reports whether err happened before a connection was made:
// a refused or timed-out dial, or a name that does not resolve.
func isConnectError(err error) bool {
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return true
	}
	var opErr *net.OpError
	return errors.As(err, &opErr) && opErr.Op == "dial"
}

func (c *Client) errorFor(r request, status int, detail string, err error) *Error {
	return &Error{Op: r.op, Method: r.method, URL: redactURL(r.url), Status: status, Detail: detail, Err: err}
}

// statusError describes an answer with an unexpected status.
func (c *Client) statusError(r request, resp *response) *Error {
	return c.errorFor(r, resp.status, c.detail(resp.body), nil)
}

func pathOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.EscapedPath()
}
