package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeClock is a settable clock for the gauge.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestInFlightGauge(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	// event: at (since the start), begin (status 0) or end with status;
	// status -1 resets.
	type event struct {
		at     time.Duration
		status int
	}
	tests := []struct {
		name        string
		keep        int
		events      []event
		at          time.Duration // when read
		want        InFlight
		wantSamples []TraceSample
		wantDropped int64
	}{
		{
			name: "two overlapping requests",
			keep: 10,
			events: []event{
				{ms(50), 0}, {ms(100), 0}, {ms(250), 200}, {ms(300), 503},
			},
			at: ms(450),
			// 1 for 50 ms, 2 for 150 ms, 1 for 50 ms: 0.4 request-s over
			// 0.25 s busy.
			want: InFlight{Current: 0, Max: 2, Mean: 1.6, BusySeconds: 0.25, RequestSeconds: 0.4},
			wantSamples: []TraceSample{
				{T: 0.1, InFlight: 1, Max: 1, Mean: 0.5},
				{T: 0.2, InFlight: 2, Max: 2, Mean: 2},
				{T: 0.3, InFlight: 1, Max: 2, Mean: 1.5, Answers: map[string]int64{"200": 1}},
				// The 503 ends at 0.3 exactly: in the next interval, which
				// began with one in flight.
				{T: 0.4, InFlight: 0, Max: 1, Mean: 0, Answers: map[string]int64{"503": 1}},
			},
		},
		{
			name:   "a reset keeps what is in flight and forgets the rest",
			keep:   10,
			events: []event{{0, 0}, {ms(10), 0}, {ms(20), 0}, {ms(30), 200}, {ms(50), -1}, {ms(70), 200}},
			at:     ms(250),
			// From the reset: 2 for 20 ms, then 1 for 180 ms.
			want: InFlight{Current: 1, Max: 2, Mean: 0.22 / 0.2, BusySeconds: 0.2, RequestSeconds: 0.22},
			wantSamples: []TraceSample{
				{T: 0.1, InFlight: 1, Max: 2, Mean: 1.2, Answers: map[string]int64{"200": 1}},
				{T: 0.2, InFlight: 1, Max: 1, Mean: 1},
			},
		},
		{
			name:   "a long idle time keeps only the last samples",
			keep:   3,
			events: []event{{ms(50), 0}, {ms(150), 429}},
			at:     100 * time.Second,
			want:   InFlight{Max: 1, Mean: 1, BusySeconds: 0.1, RequestSeconds: 0.1},
			wantSamples: []TraceSample{
				{T: 99.8, Max: 0}, {T: 99.9}, {T: 100},
			},
			wantDropped: 997,
		},
		{
			name:   "an end without a begin does not go below zero",
			keep:   10,
			events: []event{{ms(10), 500}},
			at:     ms(120),
			want:   InFlight{},
			wantSamples: []TraceSample{
				{T: 0.1, Answers: map[string]int64{"500": 1}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			clk := &fakeClock{t: start}
			g := newInFlightGauge(clk.now, TraceInterval, tt.keep)
			for _, e := range tt.events {
				clk.t = start.Add(e.at)
				switch e.status {
				case 0:
					g.begin()
				case -1:
					g.reset()
				default:
					g.end(e.status)
				}
			}
			clk.t = start.Add(tt.at)
			got := g.snapshot()
			assert.Equal(t, tt.want.Current, got.Current)
			assert.Equal(t, tt.want.Max, got.Max)
			assert.InDelta(t, tt.want.Mean, got.Mean, 1e-9)
			assert.InDelta(t, tt.want.BusySeconds, got.BusySeconds, 1e-9)
			assert.InDelta(t, tt.want.RequestSeconds, got.RequestSeconds, 1e-9)

			tr := g.trace()
			assert.Equal(t, 0.1, tr.IntervalSeconds)
			assert.Equal(t, tt.wantDropped, tr.Dropped)
			require.Len(t, tr.Samples, len(tt.wantSamples))
			for i, w := range tt.wantSamples {
				s := tr.Samples[i]
				assert.InDelta(t, w.T, s.T, 1e-9, "sample %d", i)
				assert.Equal(t, w.InFlight, s.InFlight, "sample %d", i)
				assert.Equal(t, w.Max, s.Max, "sample %d", i)
				assert.InDelta(t, w.Mean, s.Mean, 1e-9, "sample %d", i)
				assert.Equal(t, w.Answers, s.Answers, "sample %d", i)
			}
		})
	}
}

func TestInFlightGaugeCompactsItsSamples(t *testing.T) {
	start := time.Unix(0, 0)
	clk := &fakeClock{t: start}
	g := newInFlightGauge(clk.now, TraceInterval, 4)
	// One request a tick for 25 intervals: the trace never holds more than
	// 2×keep, and serves the last keep in order.
	for i := range 25 {
		clk.t = start.Add(time.Duration(i)*TraceInterval + time.Millisecond)
		g.begin()
		clk.t = clk.t.Add(time.Millisecond)
		g.end(http.StatusOK)
		assert.LessOrEqual(t, len(g.samples), 8)
	}
	clk.t = start.Add(25 * TraceInterval)
	tr := g.trace()
	require.Len(t, tr.Samples, 4)
	assert.Equal(t, int64(21), tr.Dropped)
	for i, s := range tr.Samples {
		assert.InDelta(t, float64(22+i)/10, s.T, 1e-9)
		assert.Equal(t, map[string]int64{"200": 1}, s.Answers)
		assert.InDelta(t, 0.01, s.Mean, 1e-9) // 1 ms of 100
	}
}

// TestInFlightCountsZarrRequests holds requests in the gateway's latency
// and watches them in the counters and the trace.
func TestInFlightCountsZarrRequests(t *testing.T) {
	s := newServer(t, Config{Token: testToken, Latency: time.Hour})
	ts := httptest.NewServer(s)
	defer ts.Close()

	get := func(ctx context.Context, path string, hdr ...string) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+path, nil)
		if err != nil {
			return
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		if resp, err := ts.Client().Do(req); err == nil {
			resp.Body.Close()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	const n = 6
	for i := range n {
		wg.Go(func() { get(ctx, "/zarr/demo_grid/u10/0.0."+string(rune('0'+i)), auth...) })
	}
	// Neither counts: a wrong token, and a request outside /zarr/.
	wg.Go(func() { get(ctx, "/zarr/demo_grid/.zgroup", "X-DATAMESH-TOKEN", "wrong") })
	wg.Go(func() { get(ctx, "/datasource/", auth...) })

	deadline := time.Now().Add(10 * time.Second)
	for s.Counters().ZarrInFlight.Current < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(250 * time.Millisecond) // a few trace intervals, and time for a stray count
	c := s.Counters()
	assert.Equal(t, int64(n), c.ZarrInFlight.Current)
	assert.Equal(t, int64(n), c.ZarrInFlight.Max)

	// The endpoint serves the same, behind the token.
	w := call(t, s, http.MethodGet, "/_dmfs/counters", nil, auth...)
	require.Equal(t, http.StatusOK, w.Code)
	var raw struct {
		ZarrInFlight map[string]float64 `json:"zarr_in_flight"`
	}
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &raw))
	assert.Equal(t, float64(n), raw.ZarrInFlight["current"])
	for _, k := range []string{"max", "mean", "busy_seconds", "request_seconds"} {
		assert.Contains(t, raw.ZarrInFlight, k)
	}
	assert.Equal(t, http.StatusUnauthorized, call(t, s, http.MethodGet, "/_dmfs/trace", nil).Code)
	assert.Equal(t, http.StatusMethodNotAllowed, call(t, s, http.MethodPost, "/_dmfs/trace", nil, auth...).Code)

	cancel() // the clients leave: their requests end (499, for the log)
	wg.Wait()
	deadline = time.Now().Add(10 * time.Second)
	for s.Counters().ZarrInFlight.Current > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(150 * time.Millisecond) // close the interval of the ends
	c = s.Counters()
	assert.Equal(t, int64(0), c.ZarrInFlight.Current)
	assert.Equal(t, int64(n), c.ZarrInFlight.Max)
	// Everyone was in flight the whole busy time, but for the staggered
	// arrivals and departures.
	assert.InDelta(t, n, c.ZarrInFlight.Mean, 1)
	assert.Greater(t, c.ZarrInFlight.BusySeconds, 0.25)

	w = call(t, s, http.MethodGet, "/_dmfs/trace", nil, auth...)
	require.Equal(t, http.StatusOK, w.Code)
	var tr Trace
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &tr))
	require.NotEmpty(t, tr.Samples)
	var answers, maxSeen int64
	for i, smp := range tr.Samples {
		assert.InDelta(t, float64(i+1)/10, smp.T, 1e-9)
		answers += smp.Answers["499"]
		maxSeen = max(maxSeen, smp.Max)
	}
	assert.Equal(t, int64(n), answers, "every held request ended in the trace")
	assert.Equal(t, int64(n), maxSeen)

	// A reset starts a new window and trace.
	require.Equal(t, http.StatusNoContent, call(t, s, http.MethodPost, "/_dmfs/counters/reset", nil, auth...).Code)
	assert.Equal(t, InFlight{}, s.Counters().ZarrInFlight)
	assert.Empty(t, s.Trace().Samples)
}
