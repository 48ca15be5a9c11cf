package zarr

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"
)

// syntheticZmetadata builds a .zmetadata of about size bytes, laid out as
// zarr writes it (4-space indent, sorted keys): many arrays, each with a
// .zarray and a .zattrs of a few dozen attributes.
func syntheticZmetadata(size int) []byte {
	meta := map[string]any{".zgroup": map[string]any{"zarr_format": 2}, ".zattrs": map[string]any{"title": "synthetic"}}
	doc := map[string]any{"zarr_consolidated_format": 1, "metadata": meta}
	per := 0
	for i := 0; ; i++ {
		if per > 0 && i*per >= size {
			break
		}
		name := fmt.Sprintf("var%06d", i)
		meta[name+"/.zarray"] = map[string]any{
			"zarr_format": 2, "shape": []int{8760, 721, 1440}, "chunks": []int{24, 181, 360},
			"dtype": "<f4", "fill_value": "NaN", "order": "C", "filters": nil,
			"compressor": map[string]any{"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1, "blocksize": 0},
		}
		attrs := map[string]any{"_ARRAY_DIMENSIONS": []string{"time", "latitude", "longitude"}}
		for j := range 30 {
			attrs[fmt.Sprintf("attr_%02d", j)] = fmt.Sprintf("value %d of %s, some descriptive text", j, name)
		}
		attrs["valid_range"] = []float64{-100.5, 100.25}
		meta[name+"/.zattrs"] = attrs
		if i == 0 {
			one, _ := json.MarshalIndent(map[string]any{"a": meta[name+"/.zarray"], "b": attrs}, "        ", "    ")
			per = len(one) + 40
		}
	}
	out, err := json.MarshalIndent(doc, "", "    ")
	if err != nil {
		panic(err)
	}
	return out
}

// cloningStore returns a copy of every value it is asked for.
type cloningStore struct{ Store }

func (s cloningStore) Get(ctx context.Context, key string) ([]byte, error) {
	data, err := s.Store.Get(ctx, key)
	return bytes.Clone(data), err
}

// gcFully collects twice: objects in a sync.Pool (encoding/json keeps its
// buffers there) survive one collection.
func gcFully() {
	runtime.GC()
	runtime.GC()
}

// heapObjects reads the bytes of live and not yet swept heap objects.
func heapObjects() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// BenchmarkOpenLargeZmetadata opens a big .zmetadata and reports, in MB: the
// heap held with the Hierarchy alive after a GC (held), the highest heap seen
// while opening it above the heap before (peak), and all bytes allocated.
// 50 MB is over MaxMetadataSize: that case lifts the limits to measure how
// memory grows; 15 MB is what Open accepts.
func BenchmarkOpenLargeZmetadata(b *testing.B) {
	for _, size := range []int{15, 50} {
		b.Run(fmt.Sprintf("%dMB", size), func(b *testing.B) {
			benchmarkOpen(b, syntheticZmetadata(size<<20), limits{doc: 1 << 30, total: 1 << 30})
		})
	}
}

func benchmarkOpen(b *testing.B, raw []byte, lim limits) {
	for b.Loop() {
		b.StopTimer()
		// Each Get hands out a fresh copy, as a network store does, so
		// that what the Hierarchy keeps is counted.
		store := cloningStore{newMapStore(map[string][]byte{".zmetadata": raw})}
		gcFully()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		peak := heapObjects()
		stop := make(chan struct{})
		done := make(chan uint64)
		go func() {
			p := peak
			t := time.NewTicker(time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					done <- p
					return
				case <-t.C:
					p = max(p, heapObjects())
				}
			}
		}()
		b.StartTimer()
		h, err := open(context.Background(), "big", store, lim)
		b.StopTimer()
		close(stop)
		peak = <-done
		if err != nil {
			b.Fatal(err)
		}
		gcFully()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(len(raw))/(1<<20), "raw-MB")
		b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/(1<<20), "held-MB")
		b.ReportMetric(float64(peak-before.HeapAlloc)/(1<<20), "peak-MB")
		b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/(1<<20), "alloc-MB")
		runtime.KeepAlive(h)
		b.StartTimer()
	}
}
