package session

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// guardConn sits between net/http and one connection and follows the
// framing of the HTTP/1.1 answers on it, so that bytes past the end of an
// answer (a body longer than its Content-Length, or anything sent while no
// request is out) never reach net/http. net/http would print them to the
// process's standard logger ("Unsolicited response received on idle HTTP
// channel ...") and could take them for the next answer. Those bytes are
// dropped instead, and the connection reads as ended from then on, so that
// net/http closes it rather than reusing it.
//
// It only ever shortens what it passes on at a point where net/http itself
// sees the answer end. Framing it does not follow (trailers, 101, answers
// delimited by the connection closing, unusual headers) makes it step aside
// for the rest of the connection, which is then net/http's alone.
type guardConn struct {
	net.Conn
	// onSurplus is told, outside the lock, how many bytes were dropped.
	onSurplus func(n int)

	dropped atomic.Bool // set once bytes were dropped: EOF from then on

	mu     sync.Mutex
	state  guardState
	head   bool   // the request in flight is a HEAD
	line   []byte // the start of a line not yet complete
	status int
	// Content-Length and Transfer-Encoding of the answer being read.
	clCount, teCount int
	cl, te           string
	n                int64 // bytes still due in gBody, gChunkData, gChunkCRLF
}

type guardState uint8

const (
	gIdle      guardState = iota // no request out: nothing may arrive
	gStatus                      // reading a status line
	gHeader                      // reading header lines
	gBody                        // n body bytes to come
	gChunkLine                   // reading a chunk-size line
	gChunkData                   // n bytes of chunk data to come
	gChunkCRLF                   // n bytes of the CRLF that ends a chunk
	gTrailer                     // the empty line after the last chunk
	gPass                        // not followed: net/http's alone
)

const (
	// maxGuardLine bounds the partial line kept; a longer one is not followed.
	maxGuardLine = 64 << 10
	// maxChunkLine is net/http's own limit on a chunk-size line (its read
	// buffer); a longer line fails there.
	maxChunkLine = 4096
)

func newGuardConn(c net.Conn, onSurplus func(int)) *guardConn {
	return &guardConn{Conn: c, onSurplus: onSurplus}
}

// Write notes the method of each request as it starts, which decides
// whether its answer has a body.
func (g *guardConn) Write(p []byte) (int, error) {
	g.mu.Lock()
	if g.state == gIdle {
		method, _, ok := bytes.Cut(p, []byte(" "))
		switch m := string(method); {
		case !ok:
			g.state = gPass
		case m == "HEAD":
			g.head, g.state = true, gStatus
		case m == "GET" || m == "POST" || m == "PUT" || m == "DELETE" || m == "PATCH" || m == "OPTIONS":
			g.head, g.state = false, gStatus
		default: // CONNECT (a tunnel for TLS), a SOCKS greeting, ...
			g.state = gPass
		}
	}
	g.mu.Unlock()
	return g.Conn.Write(p)
}

// Read passes on what belongs to answers. Where an answer ends and more
// bytes follow, it returns the answer's bytes with io.EOF: net/http then
// closes the connection after the answer instead of reusing it.
func (g *guardConn) Read(p []byte) (int, error) {
	if g.dropped.Load() {
		return 0, io.EOF
	}
	n, err := g.Conn.Read(p)
	if n == 0 {
		return n, err
	}
	g.mu.Lock()
	keep := g.follow(p[:n])
	g.mu.Unlock()
	if keep < n {
		g.dropped.Store(true)
		if g.onSurplus != nil {
			g.onSurplus(n - keep)
		}
		return keep, io.EOF
	}
	return n, err
}

// follow advances the framing over b and returns how many of its bytes
// belong to the answer in flight.
func (g *guardConn) follow(b []byte) int {
	i := 0
	for i < len(b) {
		switch g.state {
		case gPass:
			return len(b)
		case gIdle:
			return i
		case gBody, gChunkData:
			k := min(int64(len(b)-i), g.n)
			i += int(k)
			g.n -= k
			if g.n == 0 {
				if g.state == gBody {
					g.state = gIdle
				} else {
					g.state, g.n = gChunkCRLF, 2
				}
			}
		case gChunkCRLF:
			if b[i] != "\r\n"[2-g.n] {
				g.pass()
				return len(b)
			}
			i++
			if g.n--; g.n == 0 {
				g.state = gChunkLine
			}
		default: // a line: status, header, chunk size, trailer
			j := bytes.IndexByte(b[i:], '\n')
			if j < 0 {
				if len(g.line)+len(b)-i > maxGuardLine {
					g.pass()
					return len(b)
				}
				g.line = append(g.line, b[i:]...)
				return len(b)
			}
			line := b[i : i+j+1]
			if len(g.line) > 0 {
				if len(g.line)+len(line) > maxGuardLine {
					g.pass()
					return len(b)
				}
				line = append(g.line, line...)
			}
			i += j + 1
			g.endLine(line)
			g.line = g.line[:0]
			if cap(g.line) > 4096 {
				g.line = nil // an odd long line: not kept for the connection's life
			}
		}
	}
	return i
}

func (g *guardConn) pass() {
	g.state = gPass
	g.line = nil
}

// endLine handles one complete line, "\n" included, as net/http reads it.
func (g *guardConn) endLine(raw []byte) {
	switch g.state {
	case gStatus:
		g.status = parseStatusLine(trimEOL(raw))
		if g.status < 0 {
			g.pass()
			return
		}
		g.state, g.clCount, g.teCount = gHeader, 0, 0
	case gHeader:
		line := trimEOL(raw)
		if len(line) == 0 {
			g.endHeader()
			return
		}
		if line[0] == ' ' || line[0] == '\t' {
			g.pass() // a folded line
			return
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			g.pass()
			return
		}
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			g.clCount++
			g.cl = strings.Trim(string(value), " \t")
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			g.teCount++
			g.te = strings.Trim(string(value), " \t")
		}
	case gChunkLine:
		// As net/http: CRLF only, no other CR, extensions ignored.
		if len(raw) < 2 || raw[len(raw)-2] != '\r' || bytes.IndexByte(raw, '\r') != len(raw)-2 || len(raw)-2 >= maxChunkLine {
			g.pass()
			return
		}
		p := bytes.TrimRight(raw[:len(raw)-2], " \t")
		p, _, _ = bytes.Cut(p, []byte(";"))
		n, ok := parseChunkSize(p)
		switch {
		case !ok:
			g.pass()
		case n == 0:
			g.state = gTrailer
		default:
			g.state, g.n = gChunkData, n
		}
	case gTrailer:
		if string(raw) != "\r\n" {
			g.pass() // trailers: rare, and net/http's rules for them are its own
			return
		}
		g.state = gIdle
	}
}

// endHeader decides, as net/http does, whether and how a body follows.
func (g *guardConn) endHeader() {
	switch {
	case g.status >= 100 && g.status <= 199 && g.status != 101:
		g.state = gStatus // an informational answer; the real one follows
	case g.status == 101:
		g.pass()
	case g.clCount > 1 || g.teCount > 1 || (g.clCount > 0 && g.teCount > 0):
		g.pass()
	case g.head || g.status == 204 || g.status == 304:
		g.state = gIdle
	case g.teCount == 1:
		if !strings.EqualFold(g.te, "chunked") {
			g.pass()
			return
		}
		g.state = gChunkLine
	case g.clCount == 1:
		n, err := strconv.ParseUint(g.cl, 10, 63)
		switch {
		case err != nil:
			g.pass()
		case n == 0:
			g.state = gIdle
		default:
			g.state, g.n = gBody, int64(n)
		}
	default: // delimited by the connection closing: never reused
		g.pass()
	}
}

// parseStatusLine returns the status of an HTTP/1.1 status line, or -1.
func parseStatusLine(line []byte) int {
	proto, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok || string(proto) != "HTTP/1.1" {
		return -1
	}
	code, _, _ := bytes.Cut(bytes.TrimLeft(rest, " "), []byte(" "))
	if len(code) != 3 {
		return -1
	}
	n, err := strconv.Atoi(string(code))
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// parseChunkSize reads a chunk size as net/http does: 1 to 16 hex digits
// (here also at most 2^63-1, or the line is not followed).
func parseChunkSize(p []byte) (int64, bool) {
	if len(p) == 0 || len(p) > 16 {
		return 0, false
	}
	n, err := strconv.ParseUint(string(p), 16, 63)
	return int64(n), err == nil
}

func trimEOL(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte("\n"))
	return bytes.TrimSuffix(b, []byte("\r"))
}

// dialers returns the transport's DialContext and DialTLSContext, both
// wrapping their connections in a guardConn. TLS is done here rather than by
// the transport so that the guard sees the plain HTTP above it; its
// configuration comes from tr.TLSClientConfig at each dial.
func dialers(tr func() *tls.Config, d *net.Dialer, handshakeTimeout time.Duration, onSurplus func(int)) (
	dial, dialTLS func(ctx context.Context, network, addr string) (net.Conn, error)) {
	dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return newGuardConn(c, onSurplus), nil
	}
	dialTLS = func(ctx context.Context, network, addr string) (net.Conn, error) {
		raw, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		var cfg *tls.Config
		if base := tr(); base != nil {
			cfg = base.Clone()
		} else {
			cfg = &tls.Config{}
		}
		if cfg.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				host = addr
			}
			cfg.ServerName = host
		}
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(raw, cfg)
		hctx, cancel := ctx, context.CancelFunc(func() {})
		if handshakeTimeout > 0 { // 0: no limit but ctx (connect timeout None)
			hctx, cancel = context.WithTimeout(ctx, handshakeTimeout)
		}
		defer cancel()
		if err := tc.HandshakeContext(hctx); err != nil {
			_ = raw.Close()
			return nil, err
		}
		return newGuardConn(tc, onSurplus), nil
	}
	return dial, dialTLS
}
