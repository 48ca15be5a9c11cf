package session

import (
	"bytes"
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// observed is one request as Config.OnRequest saw it.
type observed struct {
	op, key string
	status  int
	failed  bool
	done    bool
}

// observer records what Config.OnRequest is told.
type observer struct {
	mu   sync.Mutex
	seen []*observed
}

func (o *observer) onRequest(op, key string) func(int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	r := &observed{op: op, key: key}
	o.seen = append(o.seen, r)
	return func(status int, err error) {
		o.mu.Lock()
		defer o.mu.Unlock()
		r.status, r.failed, r.done = status, err != nil, true
	}
}

func (o *observer) list() []observed {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]observed, len(o.seen))
	for i, r := range o.seen {
		out[i] = *r
	}
	return out
}

func TestOnRequestSeesEveryTry(t *testing.T) {
	g := newFakeGateway(t)
	tries := 0
	g.zarr = func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/zarr/ds_1/flaky/0":
			tries++
			if tries == 1 {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			w.Write([]byte("ok"))
		case "/zarr/ds_1/missing/0":
			http.NotFound(w, r)
		default:
			w.Write([]byte("value"))
		}
	}
	var o observer
	cfg := testConfig(g.srv.URL, nil)
	cfg.Write = true
	cfg.OnRequest = o.onRequest
	c := acquired(t, cfg)
	instantRetries(c)
	s := c.Store("ds_1")
	ctx := t.Context()

	_, err := s.Get(ctx, "u10/.zarray")
	require.NoError(t, err)
	_, err = s.Get(ctx, "flaky/0")
	require.NoError(t, err)
	_, err = s.Get(ctx, "missing/0")
	require.Error(t, err)
	_, err = s.Head(ctx, "u10/0")
	require.NoError(t, err)
	require.NoError(t, s.Put(ctx, "new/0", bytes.NewReader([]byte("abc")), 3))

	want := []observed{
		{op: "acquire session", status: 200, done: true},
		{op: "get", key: "u10/.zarray", status: 200, done: true},
		{op: "get", key: "flaky/0", status: 503, done: true}, // each try is a request
		{op: "get", key: "flaky/0", status: 200, done: true},
		{op: "get", key: "missing/0", status: 404, done: true},
		{op: "head", key: "u10/0", status: 200, done: true},
		{op: "put", key: "new/0", status: 200, done: true},
	}
	assert.Equal(t, want, o.list())

	// No answer: the error, and status 0.
	g.srv.CloseClientConnections()
	g.srv.Close()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = s.Get(cctx, "u10/0")
	require.Error(t, err)
	last := o.list()[len(o.list())-1]
	assert.Equal(t, observed{op: "get", key: "u10/0", failed: true, done: true}, last)
}
