package mountstat

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// scrape reads h's /metrics and parses it as Prometheus text.
func scrape(t *testing.T, h http.Handler) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := ServeMetrics(l, h, quiet)
	defer srv.Close()
	resp, err := http.Get("http://" + l.Addr().String() + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	require.NoError(t, err, "Prometheus text:\n%s", body)
	return fams, string(body)
}

// value is the one sample of family name whose labels include want.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	f, ok := fams[name]
	require.True(t, ok, "family %s missing", name)
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			match = match && labels[k] == v
		}
		if !match {
			continue
		}
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("%s has no sample with %v", name, want)
	return 0
}

func TestMetricsExportTheSnapshot(t *testing.T) {
	snap := sample()
	h := NewMetricsHandler(func() Snapshot { return snap }, snap.Service, snap.Mountpoint)
	fams, text := scrape(t, h)

	mount := map[string]string{"service": snap.Service, "mountpoint": snap.Mountpoint}
	types := map[string]dto.MetricType{
		"dmfs_cache_bytes":                    dto.MetricType_GAUGE,
		"dmfs_cache_max_bytes":                dto.MetricType_GAUGE,
		"dmfs_cache_entries":                  dto.MetricType_GAUGE,
		"dmfs_cache_hits_total":               dto.MetricType_COUNTER,
		"dmfs_cache_misses_total":             dto.MetricType_COUNTER,
		"dmfs_cache_fetches_total":            dto.MetricType_COUNTER,
		"dmfs_cache_fetch_errors_total":       dto.MetricType_COUNTER,
		"dmfs_cache_heads_total":              dto.MetricType_COUNTER,
		"dmfs_cache_prefetches_total":         dto.MetricType_COUNTER,
		"dmfs_cache_prefetches_dropped_total": dto.MetricType_COUNTER,
		"dmfs_cache_evictions_total":          dto.MetricType_COUNTER,
		"dmfs_cache_memory_file_bytes":        dto.MetricType_GAUGE,
		"dmfs_requests_total":                 dto.MetricType_COUNTER,
		"dmfs_request_errors_total":           dto.MetricType_COUNTER,
		"dmfs_requests_in_flight":             dto.MetricType_GAUGE,
		"dmfs_start_time_seconds":             dto.MetricType_GAUGE,
		"dmfs_session_end_time_seconds":       dto.MetricType_GAUGE,
	}
	for name, typ := range types {
		if assert.Contains(t, fams, name) {
			assert.Equal(t, typ, fams[name].GetType(), name)
			for _, m := range fams[name].Metric {
				labels := map[string]string{}
				for _, l := range m.Label {
					labels[l.GetName()] = l.GetValue()
				}
				assert.Equal(t, snap.Service, labels["service"], name)
				assert.Equal(t, snap.Mountpoint, labels["mountpoint"], name)
			}
		}
	}
	for name := range fams {
		if strings.HasPrefix(name, "dmfs_") {
			assert.Contains(t, types, name, "family %s not checked here", name)
		}
	}
	assert.Contains(t, fams, "go_goroutines", "the Go runtime's metrics")
	assert.Contains(t, fams, "process_resident_memory_bytes", "the process's metrics")
	assert.NotContains(t, fams, "dmfs_uploads_pending", "a read-only mount has no upload figures")

	assert.Equal(t, float64(3<<20), value(t, fams, "dmfs_cache_bytes", mount))
	assert.Equal(t, float64(100), value(t, fams, "dmfs_cache_hits_total", mount))
	assert.Equal(t, float64(2), value(t, fams, "dmfs_cache_prefetches_dropped_total", mount))
	assert.Equal(t, float64(40), value(t, fams, "dmfs_requests_total", map[string]string{"kind": "chunk"}))
	assert.Equal(t, float64(2), value(t, fams, "dmfs_request_errors_total", map[string]string{"kind": "chunk"}))
	assert.Equal(t, float64(3), value(t, fams, "dmfs_requests_in_flight", map[string]string{"kind": "chunk"}))
	assert.Equal(t, float64(0), value(t, fams, "dmfs_requests_total", map[string]string{"kind": "upload"}))
	assert.Len(t, fams["dmfs_requests_total"].Metric, len(Kinds))
	assert.Equal(t, float64(snap.Session.EndTime.Unix()), value(t, fams, "dmfs_session_end_time_seconds", mount))
	assert.NotContains(t, text, snap.Session.ID, "the session id is not exported")

	// A write mount's uploads; and each scrape takes a new snapshot.
	snap.Write = true
	snap.Uploads = &Uploads{Pending: 4, InFlight: 2, Uploaded: 9, Failed: 1, SpoolBytes: 100, SpoolMaxBytes: 1000}
	snap.Requests["chunk"] = Requests{Total: 41}
	fams, _ = scrape(t, h)
	assert.Equal(t, float64(41), value(t, fams, "dmfs_requests_total", map[string]string{"kind": "chunk"}))
	for name, want := range map[string]struct {
		typ dto.MetricType
		v   float64
	}{
		"dmfs_uploads_pending":       {dto.MetricType_GAUGE, 4},
		"dmfs_uploads_in_flight":     {dto.MetricType_GAUGE, 2},
		"dmfs_uploads_total":         {dto.MetricType_COUNTER, 9},
		"dmfs_upload_failures_total": {dto.MetricType_COUNTER, 1},
		"dmfs_spool_bytes":           {dto.MetricType_GAUGE, 100},
		"dmfs_spool_max_bytes":       {dto.MetricType_GAUGE, 1000},
	} {
		if assert.Contains(t, fams, name) {
			assert.Equal(t, want.typ, fams[name].GetType(), name)
			assert.Equal(t, want.v, value(t, fams, name, mount), name)
		}
	}
}

func TestMetricsServeOnlyMetrics(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := ServeMetrics(l, NewMetricsHandler(sample, "s", "/m"), quiet)
	defer srv.Close()
	for path, want := range map[string]int{"/": 404, "/metrics/x": 404, "/v1/status": 404} {
		resp, err := http.Get("http://" + l.Addr().String() + path)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, want, resp.StatusCode, path)
	}
	rec := httptest.NewRecorder()
	NewMetricsHandler(sample, "s", "/m").ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	assert.Equal(t, 200, rec.Code)
}

func TestCheckMetricsAddr(t *testing.T) {
	cases := []struct {
		addr   string
		remote bool
		want   string // "" = accepted
	}{
		{"127.0.0.1:9100", false, ""},
		{"127.0.0.1:0", false, ""},
		{"[::1]:9100", false, ""},
		{"localhost:9100", false, ""},
		{"127.1.2.3:9100", false, ""},
		{"0.0.0.0:9100", false, "not a loopback address"},
		{":9100", false, "not a loopback address"},
		{"192.168.1.5:9100", false, "--metrics-allow-remote"},
		{"example.com:9100", false, "not a loopback address"},
		{"0.0.0.0:9100", true, ""},
		{":9100", true, ""},
		{"127.0.0.1", false, "want HOST:PORT"},
		{"127.0.0.1:http", false, "port must be a number"},
		{"127.0.0.1:70000", false, "port must be a number"},
		{"127.0.0.1:-1", false, "port must be a number"},
		{"", false, "want HOST:PORT"},
	}
	for _, c := range cases {
		err := CheckMetricsAddr(c.addr, c.remote)
		if c.want == "" {
			assert.NoError(t, err, c.addr)
		} else if assert.Error(t, err, c.addr) {
			assert.Contains(t, err.Error(), c.want, c.addr)
		}
	}
}
