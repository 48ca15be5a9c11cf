package gateway

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync/atomic"
	"testing"
)

// BenchmarkChunkGet measures chunk GET throughput on loopback with 64
// parallel clients.
func BenchmarkChunkGet(b *testing.B) {
	s := newServer(b, Config{Token: testToken})
	ts := httptest.NewServer(s)
	defer ts.Close()
	sess := acquire(b, s, "")
	var keys []string
	for t := range 4 {
		for i := range 3 {
			for j := range 4 {
				keys = append(keys, fmt.Sprintf("%s/zarr/demo_grid/u10/%d.%d.%d", ts.URL, t, i, j))
			}
		}
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64}}
	var n, bytes atomic.Int64
	// RunParallel starts parallelism x GOMAXPROCS goroutines.
	b.SetParallelism((64 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			req, _ := http.NewRequest(http.MethodGet, keys[int(i)%len(keys)], nil)
			req.Header.Set("X-DATAMESH-TOKEN", testToken)
			req.Header.Set("X-DATAMESH-SESSIONID", sess.ID)
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			m, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
			bytes.Add(m)
		}
	})
	b.StopTimer()
	b.SetBytes(bytes.Load() / max(1, n.Load()))
	b.ReportMetric(float64(n.Load())/b.Elapsed().Seconds(), "req/s")
}
