package session

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/zarr"
)

func TestGetInParts(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), (3*rangePart+12345)/16) // 3 full parts and a bit
	mod := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		name  string
		value []byte
		hint  int64
		serve func(w http.ResponseWriter, r *http.Request, n int32, value []byte)
		// requests expected, and how many carried a Range
		requests, ranged int32
	}{
		{"no hint: one plain GET", big, 0, serveContent, 1, 0},
		{"small hint: one plain GET", big, rangeThreshold - 1, serveContent, 1, 0},
		{"large value in parallel parts", big, int64(len(big)), serveContent, 4, 4},
		{"hinted large but small: one ranged GET", []byte("tiny"), rangeThreshold, serveContent, 1, 1},
		{"Range not honoured: the first answer is the whole value", big, int64(len(big)),
			func(w http.ResponseWriter, r *http.Request, _ int32, v []byte) { _, _ = w.Write(v) }, 1, 1},
		{"changed between parts: fetched again whole", big, int64(len(big)),
			func(w http.ResponseWriter, r *http.Request, n int32, v []byte) {
				// Only the last part to arrive (and the refetch) sees the
				// change: the parts before it were already counted, so the
				// count does not depend on which part the cancel stops.
				m := mod
				if n > 3 {
					m = mod.Add(time.Hour)
				}
				http.ServeContent(w, r, "", m, bytes.NewReader(v))
			}, 5, 4},
		{"empty value: one ranged GET", []byte{}, rangeThreshold, serveContent, 1, 1},
		{"416 to the first part: one plain GET", []byte("v"), rangeThreshold,
			func(w http.ResponseWriter, r *http.Request, _ int32, v []byte) {
				if r.Header.Get("Range") != "" {
					w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
					return
				}
				_, _ = w.Write(v)
			}, 2, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			client, requests, ranged := partsClient(t, func(w http.ResponseWriter, r *http.Request, n int32) {
				c.serve(w, r, n, c.value)
			})
			ctx := zarr.WithSizeHint(context.Background(), c.hint)
			got, err := client.Store("ds_1").Get(ctx, "a/0.0")
			require.NoError(t, err)
			assert.True(t, bytes.Equal(c.value, got), "bytes differ (got %d, want %d)", len(got), len(c.value))
			assert.Equal(t, c.requests, requests.Load(), "requests")
			assert.Equal(t, c.ranged, ranged.Load(), "ranged requests")
		})
	}
}

func serveContent(w http.ResponseWriter, r *http.Request, _ int32, v []byte) {
	http.ServeContent(w, r, "", time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), bytes.NewReader(v))
}

func TestGetInPartsHonoursLimits(t *testing.T) {
	g := newFakeGateway(t)
	value := bytes.Repeat([]byte("x"), 3*rangePart)
	g.zarr = func(w http.ResponseWriter, r *http.Request) { serveContent(w, r, 0, value) }
	cfg := testConfig(g.srv.URL, nil)
	cfg.MaxObjectSize = rangeThreshold + 1
	client := acquired(t, cfg)
	_, err := client.Store("ds_1").Get(zarr.WithSizeHint(context.Background(), int64(len(value))), "a/0.0")
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrTooLarge)
	assert.False(t, strings.Contains(err.Error(), testToken))
}

func TestParseContentRange(t *testing.T) {
	cases := []struct {
		in            string
		from, to, tot int64
		ok            bool
	}{
		{"bytes 0-9/100", 0, 9, 100, true},
		{"bytes 10-19/20", 10, 19, 20, true},
		{"bytes 0-9/*", 0, 0, 0, false},
		{"bytes 5-4/10", 0, 0, 0, false},
		{"bytes 0-10/10", 0, 0, 0, false},
		{"items 0-1/2", 0, 0, 0, false},
		{"", 0, 0, 0, false},
	}
	for _, c := range cases {
		f, to, tot, ok := parseContentRange(c.in)
		assert.Equal(t, c.ok, ok, c.in)
		if c.ok {
			assert.Equal(t, []int64{c.from, c.to, c.tot}, []int64{f, to, tot}, c.in)
		}
	}
}

// partsClient is a client of a gateway whose zarr keys serve answers, given
// the request's number (from 1); it counts the requests, and those with a
// Range.
func partsClient(t *testing.T, serve func(w http.ResponseWriter, r *http.Request, n int32)) (client *Client, requests, ranged *atomic.Int32) {
	t.Helper()
	requests, ranged = new(atomic.Int32), new(atomic.Int32)
	g := newFakeGateway(t)
	g.zarr = func(w http.ResponseWriter, r *http.Request) {
		n := requests.Add(1)
		if r.Header.Get("Range") != "" {
			ranged.Add(1)
		}
		serve(w, r, n)
	}
	cfg := testConfig(g.srv.URL, nil)
	// 8 MiB parts under -race on a loaded CI machine: a timeout would
	// retry a part and change the count.
	cfg.ChunkReadTimeout = 30 * time.Second
	return acquired(t, cfg), requests, ranged
}
