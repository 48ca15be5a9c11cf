package session

import (
	"context"
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
	"time"
)

const (
	// maxBodySize bounds the buffer a Content-Length may ask for.
	maxBodySize = 1 << 30
	// maxErrorBody bounds how much of an error answer is read for its detail.
	maxErrorBody = 64 << 10
	// maxRetryDelay caps one backoff wait, Retry-After included.
	maxRetryDelay = 30 * time.Second
	// poolSize is the number of connections kept per host: many chunk reads
	// run in parallel.
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

// request is one logical call; do may send it several times.
type request struct {
	op        string
	method    string
	url       string
	sessionID string      // sent as X-DATAMESH-SESSIONID when set
	header    http.Header // extra headers
	timeout   time.Duration
	readBody  bool // read the whole body of a 2xx answer
	noRetry   bool // one try only (the caller has its own schedule)
}

// response is the last answer do received.
type response struct {
	status int
	header http.Header
	size   int64  // Content-Length, -1 if absent
	body   []byte // the 2xx body when readBody, else the (bounded) error body
}

func newTransport(connectTimeout time.Duration) *http.Transport {
	dialer := &net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialer.DialContext,
		TLSHandshakeTimeout: connectTimeout + 10*time.Second,
		MaxIdleConns:        2 * poolSize,
		MaxIdleConnsPerHost: poolSize,
		MaxConnsPerHost:     poolSize,
		IdleConnTimeout:     90 * time.Second,
		// Chunks are compressed already; transparent gzip would also hide
		// Content-Length, which sizes reads and must match HEAD.
		DisableCompression: true,
		// HTTP/1.1 over many connections, as the official clients do: parallel
		// chunk reads do not queue behind one TCP stream.
		ForceAttemptHTTP2: false,
	}
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
// exponential backoff and jitter, bounded in count and elapsed time. It
// returns the last answer whatever its status, or an *Error when there was
// no usable answer. A cancelled ctx stops it at once.
func (c *Client) do(ctx context.Context, r request) (*response, error) {
	start := time.Now()
	retries := c.cfg.MaxRetries
	if r.noRetry {
		retries = 0
	}
	for attempt := 0; ; attempt++ {
		resp, err := c.attempt(ctx, r, attempt)
		if ctx.Err() != nil {
			return nil, c.errorFor(r, 0, "", context.Cause(ctx))
		}
		var perm permanentError
		if errors.As(err, &perm) {
			return nil, c.errorFor(r, 0, "", perm.error)
		}
		retryable := err != nil || retryableStatus(resp.status)
		if !retryable {
			return resp, nil
		}
		if attempt >= retries || (attempt >= firstContactRetries && !c.answered.Load() && isConnectError(err)) {
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
		if time.Since(start)+delay > c.cfg.RetryMaxElapsed {
			if err != nil {
				return nil, c.errorFor(r, 0, "", err)
			}
			return resp, nil
		}
		c.log.Debug("datamesh retry", "op", r.op, "method", r.method, "path", pathOf(r.url),
			"attempt", attempt+1, "delay", delay, "cause", retryCause(resp, err))
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, c.errorFor(r, 0, "", context.Cause(ctx))
		case <-t.C:
		}
	}
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
	d = min(d, maxRetryDelay)
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

// attempt sends r once under its own deadline and reads the body under the
// same deadline. A nil error means an answer with a complete body.
func (c *Client) attempt(ctx context.Context, r request, n int) (*response, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, r.method, r.url, nil)
	if err != nil {
		return nil, permanentError{fmt.Errorf("build request: %w", unwrapURLError(err))}
	}
	c.setAuth(req.Header)
	if r.sessionID != "" {
		req.Header.Set("X-DATAMESH-SESSIONID", r.sessionID)
	}
	for k, vs := range r.header {
		req.Header[k] = vs
	}
	res, err := c.http.Do(req)
	if err != nil {
		err = unwrapURLError(err)
		if c.log.Enabled(ctx, slog.LevelDebug) {
			c.log.Debug("datamesh request", "method", r.method, "path", pathOf(r.url), "attempt", n,
				"error", err.Error(), "duration", time.Since(start))
		}
		return nil, err
	}
	defer res.Body.Close()
	c.answered.Store(true)
	resp := &response{status: res.StatusCode, header: res.Header, size: res.ContentLength}
	switch {
	case res.StatusCode/100 == 2 && r.readBody:
		resp.body, err = readBody(res.Body, res.ContentLength)
	case res.StatusCode/100 != 2:
		resp.body, _ = io.ReadAll(io.LimitReader(res.Body, maxErrorBody))
	}
	if c.log.Enabled(ctx, slog.LevelDebug) {
		c.log.Debug("datamesh request", "method", r.method, "path", pathOf(r.url), "attempt", n,
			"status", res.StatusCode, "bytes", len(resp.body), "duration", time.Since(start))
	}
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// readBody reads a body of the announced size into one buffer of exactly
// that size. A body shorter or longer than announced is an error, never data.
func readBody(body io.Reader, size int64) ([]byte, error) {
	if size < 0 {
		b, err := io.ReadAll(io.LimitReader(body, maxBodySize+1))
		if err != nil {
			return nil, fmt.Errorf("read body: %w", err)
		}
		if len(b) > maxBodySize {
			return nil, fmt.Errorf("body larger than %d bytes", maxBodySize)
		}
		return b, nil
	}
	if size > maxBodySize {
		return nil, fmt.Errorf("Content-Length %d larger than the %d bytes allowed", size, maxBodySize)
	}
	buf := make([]byte, size)
	n, err := io.ReadFull(body, buf)
	if err != nil {
		return nil, fmt.Errorf("body shorter than its Content-Length: %d of %d bytes: %w", n, size, err)
	}
	var probe [1]byte
	if m, _ := body.Read(probe[:]); m > 0 {
		return nil, fmt.Errorf("body longer than its Content-Length %d", size)
	}
	return buf, nil
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
	return c.errorFor(r, resp.status, parseDetail(resp.body), nil)
}

func pathOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.EscapedPath()
}
