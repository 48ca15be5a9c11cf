package session

import (
	"bufio"
	"bytes"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// feed runs stream through a guard after a request with method, in pieces
// of at most step bytes, and returns how many bytes it kept and its state.
func feed(method, stream string, step int) (int, guardState) {
	g := &guardConn{}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state == gIdle {
		// What Write does with the request line.
		switch method {
		case "HEAD":
			g.head, g.state = true, gStatus
		case "CONNECT":
			g.state = gPass
		default:
			g.state = gStatus
		}
	}
	kept := 0
	for i := 0; i < len(stream); i += step {
		piece := []byte(stream[i:min(i+step, len(stream))])
		k := g.follow(piece)
		kept += k
		if k < len(piece) {
			break
		}
	}
	return kept, g.state
}

func TestGuardFraming(t *testing.T) {
	const ok10 = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"
	const chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
	tests := []struct {
		name, method, stream string
		keep                 int // bytes passed on
		state                guardState
	}{
		{"content-length", "GET", ok10, len(ok10), gIdle},
		{"content-length then surplus", "GET", ok10 + "SURPLUS", len(ok10), gIdle},
		{"lower-case header, bare LF", "GET", "HTTP/1.1 200 OK\ncontent-length:  3 \n\nabcXYZ", len("HTTP/1.1 200 OK\ncontent-length:  3 \n\nabc"), gIdle},
		{"chunked", "GET", chunked, len(chunked), gIdle},
		{"chunked then surplus", "GET", chunked + "HTTP/1.1 200 OK\r\n", len(chunked), gIdle},
		{"HEAD has no body", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", len("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"), gIdle},
		{"204 has no body", "GET", "HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\nabc", len("HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n"), gIdle},
		{"304 has no body", "GET", "HTTP/1.1 304 Not Modified\r\n\r\nx", len("HTTP/1.1 304 Not Modified\r\n\r\n"), gIdle},
		{"1xx then the answer", "GET", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok10 + "!", len("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok10), gIdle},
		{"empty body", "GET", "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\nX", len("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"), gIdle},
		{"unfinished body", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", len("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"), gBody},
		// Not followed: passed on whole, net/http decides.
		{"close-delimited", "GET", "HTTP/1.1 200 OK\r\n\r\nabc", len("HTTP/1.1 200 OK\r\n\r\nabc"), gPass},
		{"HTTP/1.0", "GET", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nab", len("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nab"), gPass},
		{"two Content-Lengths", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab", len("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab"), gPass},
		{"length and chunked", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\nb", len("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\nb"), gPass},
		{"bad length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nab", len("HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nab"), gPass},
		{"folded header", "GET", "HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 1\r\n\r\nab", len("HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 1\r\n\r\nab"), gPass},
		{"trailer", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\r\n\r\nz", len("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\r\n\r\nz"), gPass},
		{"101", "GET", "HTTP/1.1 101 Switching Protocols\r\n\r\nanything", len("HTTP/1.1 101 Switching Protocols\r\n\r\nanything"), gPass},
		{"a tunnel", "CONNECT", "HTTP/1.1 200 OK\r\n\r\n\x16\x03\x01", len("HTTP/1.1 200 OK\r\n\r\n\x16\x03\x01"), gPass},
		{"bare LF in a chunk line", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\na\r\n0\r\n\r\n", len("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\na\r\n0\r\n\r\n"), gPass},
		{"a long line", "GET", "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", maxGuardLine) + "\r\n\r\n", len("HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", maxGuardLine) + "\r\n\r\n"), gPass},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, step := range []int{1, 2, 7, 4096, len(tt.stream)} {
				keep, state := feed(tt.method, tt.stream, step)
				assert.Equal(t, tt.keep, keep, "step %d", step)
				assert.Equal(t, tt.state, state, "step %d", step)
			}
		})
	}
}

// goConsumed is how many bytes of stream net/http's client takes as the
// answer to a request with method (1xx answers skipped, body read to its
// end), or false when it fails to read one.
func goConsumed(method string, stream []byte) (int, bool) {
	src := bytes.NewReader(stream)
	br := bufio.NewReader(src)
	req, _ := http.NewRequest(method, "http://h/", nil)
	for range 6 {
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return 0, false
		}
		if resp.StatusCode >= 100 && resp.StatusCode <= 199 && resp.StatusCode != 101 {
			continue
		}
		_, err = io.Copy(io.Discard, resp.Body)
		if err != nil || resp.Close || resp.StatusCode == 101 {
			return 0, false
		}
		return len(stream) - src.Len() - br.Buffered(), true
	}
	return 0, false
}

// FuzzGuardAgreesWithNetHTTP checks the guard against net/http's own reading
// of an answer: wherever net/http reads an answer whole, the guard either
// stepped aside, or ends the answer at exactly the same byte (dropping what
// follows, or seeing nothing follow). An answer ended anywhere else would be
// cut short or let surplus through.
func FuzzGuardAgreesWithNetHTTP(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789SURPLUS",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext\r\n world\r\n0\r\n\r\nX",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nTrailer: x\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nnoX",
		"HTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nabc",
		"HTTP/1.1 200 OK\ncontent-length: 3\n\nabc",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab",
		"HTTP/1.1  200  OK\r\nContent-Length:\t4\t\r\n\r\nabcd",
		"HTTP/1.1 200\r\nTransfer-Encoding: Chunked\r\n\r\nA\r\n0123456789\r\n0 \r\n\r\n",
		"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\na",
	} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, stream string, head bool) {
		method := "GET"
		if head {
			method = "HEAD"
		}
		n, ok := goConsumed(method, []byte(stream))
		if !ok {
			return
		}
		for _, step := range []int{1, 3, len(stream) + 1} {
			keep, state := feed(method, stream, step)
			switch {
			case state == gPass:
			case state == gIdle && keep == n:
			default:
				t.Fatalf("step %d: net/http reads %d bytes as the answer; the guard kept %d and is in state %d",
					step, n, keep, state)
			}
		}
	})
}

// surplusServer answers each request on a raw connection with answer (which
// may run past its own end), optionally sends late once told, and reports
// when the client closed the connection.
type surplusServer struct {
	url    string
	conns  atomic.Int32
	late   chan string
	closed chan struct{}
}

func newSurplusServer(t *testing.T, answer func(method string) string) *surplusServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &surplusServer{url: "http://" + ln.Addr().String(), late: make(chan string, 1), closed: make(chan struct{}, 16)}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			go s.serve(conn, answer)
		}
	}()
	return s
}

func (s *surplusServer) serve(conn net.Conn, answer func(string) string) {
	defer conn.Close()
	br := bufio.NewReader(conn)
	eof := make(chan struct{})
	reqs := make(chan string)
	go func() {
		defer close(eof)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			reqs <- req.Method
		}
	}()
	for {
		select {
		case method := <-reqs:
			_, _ = io.WriteString(conn, answer(method))
		case extra := <-s.late:
			_, _ = io.WriteString(conn, extra)
		case <-eof:
			s.closed <- struct{}{}
			return
		}
	}
}

// captureStdLog collects what the standard logger prints (where net/http
// logs) for the test's duration.
func captureStdLog(t *testing.T) *logBuffer {
	var buf logBuffer
	prev, flags := log.Writer(), log.Flags()
	log.SetOutput(&buf)
	t.Cleanup(func() {
		log.SetOutput(prev)
		log.SetFlags(flags)
	})
	return &buf
}

func TestSurplusAfterAnAnswerIsDroppedSilently(t *testing.T) {
	const body = "0123456789"
	tests := []struct {
		name   string
		answer string
		late   string // sent after the answer was read
		head   bool
	}{
		{name: "Content-Length", answer: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + body + "SURPLUS\r\n\r\n"},
		{name: "large body", answer: "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + strings.Repeat("x", 100000) + "SURPLUS"},
		{name: "chunked", answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n" + body + "\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"},
		{name: "HEAD", head: true, answer: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + body},
		{name: "late, on the idle connection", answer: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + body, late: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdlog := captureStdLog(t)
			srv := newSurplusServer(t, func(string) string { return tt.answer })
			var logs logBuffer
			c := newTestClient(t, testConfig(srv.url, &logs))
			c.cur = &current{info: Info{ID: "s1"}} // no acquire on this raw server
			st := c.Store("ds_1")
			if tt.head {
				n, err := st.Head(t.Context(), "u10/0.0")
				require.NoError(t, err)
				assert.Equal(t, int64(10), n)
			} else {
				b, err := st.Get(t.Context(), "u10/0.0")
				require.NoError(t, err, "the answer itself is whole")
				if tt.name != "large body" {
					assert.Equal(t, body, string(b))
				}
			}
			if tt.late != "" {
				srv.late <- tt.late
			}
			// net/http logs the surplus before it closes the connection, so
			// once the server sees it closed, any such line is written.
			select {
			case <-srv.closed:
			case <-time.After(10 * time.Second):
				t.Fatal("the connection that carried surplus was kept open")
			}
			assert.Empty(t, stdlog.String(), "nothing printed by net/http")
			assert.Equal(t, int32(1), srv.conns.Load())
			if tt.late == "" {
				assert.Contains(t, logs.String(), "past its end; dropped")
			}
			assert.NotContains(t, logs.String(), "SURPLUS")
		})
	}
}

// The guard must not cost the pool its connections: well-formed answers of
// every framing, one after the other, share one connection.
func TestGuardKeepsConnectionsReused(t *testing.T) {
	answers := map[string]string{
		"GET":  "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
		"HEAD": "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
	}
	var n atomic.Int32
	srv := newSurplusServer(t, func(method string) string {
		if method == "GET" {
			switch n.Add(1) % 4 {
			case 1:
				return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"
			case 2:
				return "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"
			case 3:
				return "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
			}
		}
		if a, ok := answers[method]; ok {
			return a
		}
		return "HTTP/1.1 204 No Content\r\n\r\n"
	})
	stdlog := captureStdLog(t)
	c := newTestClient(t, testConfig(srv.url, nil))
	c.cur = &current{info: Info{ID: "s1"}}
	st := c.Store("ds_1")
	for i := range 20 {
		if i%3 == 0 {
			_, err := st.Head(t.Context(), "a/0")
			require.NoError(t, err)
			continue
		}
		b, err := st.Get(t.Context(), "a/0")
		if err != nil {
			require.ErrorIs(t, err, fs.ErrNotExist)
			continue
		}
		assert.Equal(t, "hello", string(b))
	}
	assert.Equal(t, int32(1), srv.conns.Load(), "one connection for all")
	assert.Empty(t, stdlog.String())
}
