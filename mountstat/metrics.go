package mountstat

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// CheckMetricsAddr checks a --metrics-addr value: HOST:PORT, where HOST is
// a loopback address (127.0.0.1, [::1], localhost) unless allowRemote. The
// endpoint has no authentication: serving it beyond this machine is a
// choice to make explicitly.
func CheckMetricsAddr(addr string, allowRemote bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--metrics-addr %q: want HOST:PORT, such as 127.0.0.1:9100", addr)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || (p == 0 && port != "0") {
		return fmt.Errorf("--metrics-addr %q: the port must be a number from 0 to 65535", addr)
	}
	if allowRemote {
		return nil
	}
	ip := net.ParseIP(host)
	if host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return nil
	}
	return fmt.Errorf("--metrics-addr %q is not a loopback address; the metrics endpoint has no authentication: "+
		"use 127.0.0.1:PORT, or add --metrics-allow-remote to serve it on %q anyway", addr, host)
}

// ServeMetrics serves h at /metrics on l until Close.
func ServeMetrics(l net.Listener, h http.Handler, log *slog.Logger) *Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	return serve(l, mux, log)
}

// NewMetricsHandler serves snapshot() as Prometheus text: the figures of
// Snapshot under dmfs_ names, with the labels service and mountpoint on
// each, plus the Go runtime's and the process's standard metrics. The
// session id is not exported.
func NewMetricsHandler(snapshot func() Snapshot, service, mountpoint string) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(snapshot, prometheus.Labels{"service": service, "mountpoint": mountpoint}),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// metric is one family: how to read it from a snapshot.
type metric struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(Snapshot) (float64, bool) // false: not in this snapshot
}

// collector exports one snapshot per scrape, so that every family of a
// scrape comes from the same moment.
type collector struct {
	snapshot func() Snapshot
	metrics  []metric
	// The families by request kind.
	requests, requestErrors, requestsInFlight *prometheus.Desc
}

func newCollector(snapshot func() Snapshot, labels prometheus.Labels) *collector {
	c := &collector{snapshot: snapshot}
	add := func(name, help string, typ prometheus.ValueType, value func(Snapshot) (float64, bool)) {
		c.metrics = append(c.metrics, metric{prometheus.NewDesc("dmfs_"+name, help, nil, labels), typ, value})
	}
	cache := func(f func(*Cache) int64) func(Snapshot) (float64, bool) {
		return func(s Snapshot) (float64, bool) {
			if s.Cache == nil {
				return 0, false
			}
			return float64(f(s.Cache)), true
		}
	}
	disk := func(f func(*DiskCache) int64) func(Snapshot) (float64, bool) {
		return func(s Snapshot) (float64, bool) {
			if s.Cache == nil || s.Cache.Disk == nil {
				return 0, false
			}
			return float64(f(s.Cache.Disk)), true
		}
	}
	uploads := func(f func(*Uploads) int64) func(Snapshot) (float64, bool) {
		return func(s Snapshot) (float64, bool) {
			if s.Uploads == nil {
				return 0, false
			}
			return float64(f(s.Uploads)), true
		}
	}
	gauge, counter := prometheus.GaugeValue, prometheus.CounterValue
	add("start_time_seconds", "When the mount started, in seconds since the Unix epoch.", gauge,
		func(s Snapshot) (float64, bool) { return unixSeconds(s.Started) })
	add("session_end_time_seconds", "When the current Datamesh session ends unless renewed, in seconds since the Unix epoch.", gauge,
		func(s Snapshot) (float64, bool) { return unixSeconds(s.Session.EndTime) })
	add("cache_bytes", "Bytes held in the chunk cache.", gauge, cache(func(c *Cache) int64 { return c.Bytes }))
	add("cache_max_bytes", "The chunk cache's bound (--cache-size).", gauge, cache(func(c *Cache) int64 { return c.MaxBytes }))
	add("cache_entries", "Values held in the chunk cache.", gauge, cache(func(c *Cache) int64 { return c.Entries }))
	add("cache_hits_total", "Reads answered from the cache (bytes, or a key known missing).", counter, cache(func(c *Cache) int64 { return c.Hits }))
	add("cache_misses_total", "Reads that had to fetch, or wait for a fetch.", counter, cache(func(c *Cache) int64 { return c.Misses }))
	add("cache_fetches_total", "Body fetches started, readahead included.", counter, cache(func(c *Cache) int64 { return c.Fetches }))
	add("cache_fetch_errors_total", "Body fetches that failed (a missing key is not a failure).", counter, cache(func(c *Cache) int64 { return c.FetchErrors }))
	add("cache_heads_total", "Size lookups (HEAD) started.", counter, cache(func(c *Cache) int64 { return c.Heads }))
	add("cache_prefetches_total", "Readahead fetches started.", counter, cache(func(c *Cache) int64 { return c.Prefetches }))
	add("cache_prefetches_dropped_total", "Readahead fetches dropped because the queue was full.", counter, cache(func(c *Cache) int64 { return c.PrefetchDropped }))
	add("cache_memory_file_bytes", "Bytes in the chunk cache's memory file (values held out of the heap, and not in the RSS).", gauge, cache(func(c *Cache) int64 { return c.MemoryFileBytes }))
	add("cache_evictions_total", "Values evicted to keep the cache within its bound.", counter, cache(func(c *Cache) int64 { return c.Evictions }))
	add("cache_disk_bytes", "Bytes in the disk cache's folder, every mount sharing it included, as last counted (--cache-dir).", gauge, disk(func(d *DiskCache) int64 { return d.Bytes }))
	add("cache_disk_max_bytes", "The disk cache's cap (--cache-dir-size).", gauge, disk(func(d *DiskCache) int64 { return d.MaxBytes }))
	add("cache_disk_hits_total", "Chunks and sizes read from the disk cache instead of the gateway (--cache-dir).", counter, disk(func(d *DiskCache) int64 { return d.Hits }))
	add("cache_disk_writes_total", "Chunks written to the disk cache (--cache-dir).", counter, disk(func(d *DiskCache) int64 { return d.Writes }))
	add("cache_disk_writes_dropped_total", "Chunks not written to the disk cache: queue full, no room, or an error (--cache-dir).", counter, disk(func(d *DiskCache) int64 { return d.Dropped }))
	add("cache_disk_evictions_total", "Disk cache entries removed to keep within its cap (--cache-dir).", counter, disk(func(d *DiskCache) int64 { return d.Evictions }))
	add("cache_disk_corrupt_total", "Damaged disk cache entries found, removed and fetched again (--cache-dir).", counter, disk(func(d *DiskCache) int64 { return d.Corrupt }))
	add("uploads_pending", "Uploads queued or being sent (--write).", gauge, uploads(func(u *Uploads) int64 { return u.Pending }))
	add("uploads_in_flight", "Uploads being sent (--write).", gauge, uploads(func(u *Uploads) int64 { return u.InFlight }))
	add("uploads_total", "Keys uploaded (--write).", counter, uploads(func(u *Uploads) int64 { return u.Uploaded }))
	add("upload_failures_total", "Keys whose upload failed for good (--write).", counter, uploads(func(u *Uploads) int64 { return u.Failed }))
	add("spool_bytes", "Bytes written and waiting to be uploaded (--write).", gauge, uploads(func(u *Uploads) int64 { return u.SpoolBytes }))
	add("spool_max_bytes", "The spool's bound (--write-spool-size).", gauge, uploads(func(u *Uploads) int64 { return u.SpoolMaxBytes }))
	kind := []string{"kind"}
	c.requests = prometheus.NewDesc("dmfs_requests_total",
		"HTTP requests sent to the Datamesh service and gateway, retries included, by kind.", kind, labels)
	c.requestErrors = prometheus.NewDesc("dmfs_request_errors_total",
		"Requests that got no answer, or an error status other than 404, by kind.", kind, labels)
	c.requestsInFlight = prometheus.NewDesc("dmfs_requests_in_flight",
		"Requests sent whose answer is not read yet, by kind.", kind, labels)
	return c
}

func unixSeconds(t time.Time) (float64, bool) {
	if t.IsZero() {
		return 0, false
	}
	return float64(t.UnixMilli()) / 1000, true
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range c.metrics {
		ch <- m.desc
	}
	ch <- c.requests
	ch <- c.requestErrors
	ch <- c.requestsInFlight
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.snapshot()
	for _, m := range c.metrics {
		if v, ok := m.value(s); ok {
			ch <- prometheus.MustNewConstMetric(m.desc, m.typ, v)
		}
	}
	for _, k := range Kinds {
		r, ok := s.Requests[k]
		if !ok {
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.requests, prometheus.CounterValue, float64(r.Total), k)
		ch <- prometheus.MustNewConstMetric(c.requestErrors, prometheus.CounterValue, float64(r.Errors), k)
		ch <- prometheus.MustNewConstMetric(c.requestsInFlight, prometheus.GaugeValue, float64(r.InFlight), k)
	}
}
