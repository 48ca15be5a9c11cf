package session

import (
	"bytes"
	"context"
	"io/fs"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/flow"
	"github.com/oceanum-dmfs/dmfs/zarr"
)

func newLimiter(t *testing.T, cfg flow.Config) *flow.Limiter {
	t.Helper()
	l, err := flow.New(cfg)
	require.NoError(t, err)
	return l
}

// limitedClient is a client of g holding a session, its zarr reads bounded
// by l.
func limitedClient(t *testing.T, g *fakeGateway, l *flow.Limiter, edit func(*Config)) *Client {
	t.Helper()
	cfg := testConfig(g.srv.URL, nil)
	cfg.Limiter = l
	if edit != nil {
		edit(&cfg)
	}
	return acquired(t, cfg)
}

// Every attempt of a zarr read, retries included, reaches the limiter with
// what its answer says of the gateway's load.
func TestLimiterSeesEachAttempt(t *testing.T) {
	tests := []struct {
		name string
		// answers, in order, to the requests for the key; then 200.
		answers       []func(w http.ResponseWriter, r *http.Request)
		readTimeout   time.Duration
		wantErr       error
		wantAcquired  int64
		wantOverloads int64
		wantFailures  int64
		wantLimit     int
	}{
		{name: "200", wantAcquired: 1, wantLimit: 16},
		{name: "404 is an answer, not congestion", answers: attemptAnswers(answerStatus(http.StatusNotFound)),
			wantErr: fs.ErrNotExist, wantAcquired: 1, wantLimit: 16},
		{name: "429, then 200", answers: attemptAnswers(answerStatus(http.StatusTooManyRequests)),
			wantAcquired: 2, wantOverloads: 1, wantLimit: 11},
		{name: "503, then 200", answers: attemptAnswers(answerStatus(http.StatusServiceUnavailable)),
			wantAcquired: 2, wantOverloads: 1, wantLimit: 11},
		{name: "502 and 504, then 200", answers: attemptAnswers(answerStatus(http.StatusBadGateway), answerStatus(http.StatusGatewayTimeout)),
			wantAcquired: 3, wantFailures: 2, wantLimit: 7}, // 16 x 0.7 x 0.7: the retry was sent at the new limit
		{name: "timeout, then 200", answers: attemptAnswers(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		}), readTimeout: 100 * time.Millisecond, wantAcquired: 2, wantFailures: 1, wantLimit: 11},
		{name: "connection broken mid-body, then 200", answers: attemptAnswers(func(w http.ResponseWriter, r *http.Request) {
			conn, buf, err := w.(http.Hijacker).Hijack()
			if err == nil {
				_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nchunk")
				_ = buf.Flush()
				_ = conn.Close()
			}
		}), wantAcquired: 2, wantFailures: 1, wantLimit: 11},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGateway(t)
			var n atomic.Int32
			g.zarr = func(w http.ResponseWriter, r *http.Request) {
				if i := int(n.Add(1)) - 1; i < len(tt.answers) {
					tt.answers[i](w, r)
					return
				}
				_, _ = w.Write([]byte("chunk"))
			}
			l := newLimiter(t, flow.Config{})
			c := limitedClient(t, g, l, func(cfg *Config) {
				if tt.readTimeout > 0 {
					cfg.ChunkReadTimeout = tt.readTimeout
				}
			})
			b, err := c.Store("ds_1").Get(t.Context(), "u10/0.0")
			if tt.wantErr != nil {
				assert.ErrorIs(t, err, tt.wantErr)
			} else {
				require.NoError(t, err)
				assert.Equal(t, "chunk", string(b))
			}
			st := l.Stats()
			assert.Equal(t, tt.wantAcquired, st.Acquired)
			assert.Equal(t, tt.wantOverloads, st.Overloads)
			assert.Equal(t, tt.wantFailures, st.Failures)
			assert.Equal(t, tt.wantLimit, st.Limit)
			assert.Zero(t, st.InFlight)
		})
	}
}

func attemptAnswers(hs ...func(w http.ResponseWriter, r *http.Request)) []func(w http.ResponseWriter, r *http.Request) {
	return hs
}

func answerStatus(code int) func(w http.ResponseWriter, r *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) { http.Error(w, "busy", code) }
}

// A 429's Retry-After holds back the other reads too, not only the retry
// of the one refused.
func TestRetryAfterHoldsOtherReads(t *testing.T) {
	const retryAfter = 300 * time.Millisecond
	g := newFakeGateway(t)
	refused := make(chan time.Time, 1)
	var mu sync.Mutex
	arrived := map[string]time.Time{}
	var once sync.Once
	g.zarr = func(w http.ResponseWriter, r *http.Request) {
		first := false
		if r.URL.Path == "/zarr/ds_1/a" {
			once.Do(func() { first = true })
		}
		if first {
			w.Header().Set("Retry-After", "0.3")
			http.Error(w, "slow down", http.StatusTooManyRequests)
			refused <- time.Now()
			return
		}
		mu.Lock()
		arrived[r.URL.Path] = time.Now()
		mu.Unlock()
		_, _ = w.Write([]byte("chunk"))
	}
	l := newLimiter(t, flow.Config{})
	c := limitedClient(t, g, l, nil)
	s := c.Store("ds_1")
	errA := make(chan error, 1)
	go func() {
		_, err := s.Get(t.Context(), "a")
		errA <- err
	}()
	var at time.Time
	select {
	case at = <-refused:
	case <-time.After(5 * time.Second):
		t.Fatal("no 429 sent")
	}
	waitFor(t, l, func(st flow.Stats) bool { return st.Overloads == 1 })
	_, err := s.Get(t.Context(), "b") // a reader, sent once the 429 is in
	require.NoError(t, err)
	require.NoError(t, done(t, errA))
	mu.Lock()
	defer mu.Unlock()
	assert.GreaterOrEqual(t, arrived["/zarr/ds_1/b"].Sub(at), retryAfter-20*time.Millisecond,
		"a read sent during the Retry-After")
	assert.GreaterOrEqual(t, arrived["/zarr/ds_1/a"].Sub(at), retryAfter-20*time.Millisecond)
	assert.Equal(t, int64(1), l.Stats().Overloads)
}

// holdingGateway answers /zarr/ds_1/hold only once release is closed, and
// records the order in which zarr requests arrive.
type holdingGateway struct {
	*fakeGateway
	arrived chan string // each zarr path, as it arrives
	release chan struct{}
}

func newHoldingGateway(t *testing.T) *holdingGateway {
	g := &holdingGateway{fakeGateway: newFakeGateway(t), arrived: make(chan string, 100), release: make(chan struct{})}
	g.zarr = func(w http.ResponseWriter, r *http.Request) {
		g.arrived <- r.URL.Path
		if r.URL.Path == "/zarr/ds_1/hold" {
			select {
			case <-g.release:
			case <-r.Context().Done():
				return
			}
		}
		_, _ = w.Write([]byte("chunk"))
	}
	return g
}

// get runs a Get in the background; its error arrives on the channel.
func get(ctx context.Context, s *Store, key string) <-chan error {
	ch := make(chan error, 1)
	go func() {
		_, err := s.Get(ctx, key)
		ch <- err
	}()
	return ch
}

// done is the error on ch, or a failure after 5 s.
func done(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("read still running")
		return nil
	}
}

// next is the path of the next zarr request g sees, or a failure after 5 s.
func (g *holdingGateway) next(t *testing.T) string {
	t.Helper()
	select {
	case p := <-g.arrived:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("no request reached the gateway")
		return ""
	}
}

func waitFor(t *testing.T, l *flow.Limiter, cond func(flow.Stats) bool) {
	t.Helper()
	require.Eventually(t, func() bool { return cond(l.Stats()) }, 5*time.Second, time.Millisecond)
}

func TestReaderServedBeforeReadahead(t *testing.T) {
	g := newHoldingGateway(t)
	l := newLimiter(t, flow.Config{Max: 1})
	s := limitedClient(t, g.fakeGateway, l, nil).Store("ds_1")
	ctx := t.Context()

	hold := get(ctx, s, "hold")
	require.Equal(t, "/zarr/ds_1/hold", g.next(t))
	ahead := get(zarr.WithReadahead(ctx), s, "ahead")
	waitFor(t, l, func(st flow.Stats) bool { return st.Waiting == 1 })
	reader := get(ctx, s, "reader")
	waitFor(t, l, func(st flow.Stats) bool { return st.Waiting == 2 })

	close(g.release)
	for _, ch := range []<-chan error{hold, ahead, reader} {
		require.NoError(t, done(t, ch))
	}
	assert.Equal(t, "/zarr/ds_1/reader", g.next(t), "the reader, queued last, goes first")
	assert.Equal(t, "/zarr/ds_1/ahead", g.next(t))
	assert.Equal(t, 1, l.Stats().MaxInFlight)
}

func TestCancelledReadFreesItsPermit(t *testing.T) {
	t.Run("while sent", func(t *testing.T) {
		g := newHoldingGateway(t)
		l := newLimiter(t, flow.Config{Max: 1})
		s := limitedClient(t, g.fakeGateway, l, nil).Store("ds_1")
		ctx, cancel := context.WithCancel(t.Context())
		held := get(ctx, s, "hold")
		g.next(t)
		cancel()
		assert.ErrorIs(t, done(t, held), context.Canceled)
		waitFor(t, l, func(st flow.Stats) bool { return st.InFlight == 0 })

		// With a limit of 1, a leaked permit would block this read.
		ctx, cancel = context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		_, err := s.Get(ctx, "next")
		require.NoError(t, err)
		st := l.Stats()
		assert.Zero(t, st.Overloads+st.Failures, "a cancelled read is not congestion")
		assert.Equal(t, 1, st.Limit)
	})
	t.Run("while waiting", func(t *testing.T) {
		g := newHoldingGateway(t)
		l := newLimiter(t, flow.Config{Max: 1})
		s := limitedClient(t, g.fakeGateway, l, nil).Store("ds_1")
		held := get(t.Context(), s, "hold")
		g.next(t)
		ctx, cancel := context.WithCancel(t.Context())
		waiting := get(zarr.WithReadahead(ctx), s, "never")
		waitFor(t, l, func(st flow.Stats) bool { return st.Waiting == 1 })
		cancel()
		assert.ErrorIs(t, done(t, waiting), context.Canceled)
		st := l.Stats()
		assert.Zero(t, st.Waiting)
		assert.Equal(t, 1, st.InFlight)
		close(g.release)
		require.NoError(t, done(t, held))
		select {
		case p := <-g.arrived:
			t.Fatalf("the cancelled read was sent: %s", p)
		default:
		}
		assert.Equal(t, int64(1), l.Stats().Acquired)
	})
}

// Writes, like sessions, stage and tables, are outside the limiter: an
// upload goes out while the one read permit is held.
func TestWritesBypassLimiter(t *testing.T) {
	g := newHoldingGateway(t)
	l := newLimiter(t, flow.Config{Max: 1})
	c := limitedClient(t, g.fakeGateway, l, func(cfg *Config) { cfg.Write = true })
	s := c.Store("ds_1")
	held := get(t.Context(), s, "hold")
	g.next(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	body := []byte("bytes")
	require.NoError(t, s.Put(ctx, "w/0", bytes.NewReader(body), int64(len(body))))
	assert.Equal(t, "/zarr/ds_1/w/0", g.next(t))
	close(g.release)
	require.NoError(t, done(t, held))
	assert.Equal(t, int64(1), l.Stats().Acquired)
}

// --max-connections above the transport's default pool is not capped by
// the transport: 200 reads reach the gateway at once.
func TestTransportFitsLimiter(t *testing.T) {
	for _, tt := range []struct {
		max  int
		want int
	}{{0, poolSize}, {1024, 1024 + poolSize}} {
		var l *flow.Limiter
		if tt.max > 0 {
			l = newLimiter(t, flow.Config{Max: tt.max})
		}
		c, err := New(Config{Token: testToken, Service: "http://127.0.0.1:1", Limiter: l})
		require.NoError(t, err)
		assert.Equal(t, tt.want, c.http.Transport.(*http.Transport).MaxConnsPerHost)
		assert.Equal(t, tt.want, c.http.Transport.(*http.Transport).MaxIdleConnsPerHost)
	}

	const n = 200
	g := newFakeGateway(t)
	var inside, most atomic.Int32
	all := make(chan struct{})
	var allOnce sync.Once
	g.zarr = func(w http.ResponseWriter, r *http.Request) {
		now := inside.Add(1)
		defer inside.Add(-1)
		for {
			m := most.Load()
			if now <= m || most.CompareAndSwap(m, now) {
				break
			}
		}
		if now == n {
			allOnce.Do(func() { close(all) })
		}
		select {
		case <-all:
		case <-r.Context().Done():
			return
		case <-time.After(3 * time.Second):
		}
		_, _ = w.Write([]byte("chunk"))
	}
	l := newLimiter(t, flow.Config{Min: n, Initial: 256, Max: 256})
	// Longer than the gateway's wait: reads that time out waiting for a
	// connection and are retried on new ones must not fill it instead.
	s := limitedClient(t, g, l, func(cfg *Config) { cfg.ChunkReadTimeout = 10 * time.Second }).Store("ds_1")
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, err := s.Get(t.Context(), "k/"+string(rune('a'+i%26))+string(rune('a'+i/26)))
			assert.NoError(t, err)
		})
	}
	wg.Wait()
	assert.Equal(t, int32(n), most.Load())
}
