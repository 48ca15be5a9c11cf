package main

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// sample is one measurement of one operation in one run.
type sample struct {
	Seconds float64
	Bytes   int64 // bytes read by the operation (0: not a data transfer)
	Capped  bool  // stopped at the time cap; Seconds is then a lower bound
	// Gateway requests during the operation, from its counters.
	Requests, Gets, Heads int64
	Chunks                int64 // chunks the operation covers, for requests per chunk
	RSS                   int64 // peak memory of the dmfs daemon after the operation, its cache's memory file included (0: n/a)
	// CPU is the machine's busy CPU-seconds during the timed part, every
	// process included (large-chunk rows; 0: not measured, -1: unknown).
	CPU float64
	// InFlight is the gateway's count of /zarr/ requests answered at once
	// during the operation.
	InFlight inFlight

	// Writes (Bytes: bytes the gateway committed).
	Unmount float64 // seconds of `dmfs unmount` included in Seconds
	Keys    int64   // keys written
	Posts   int64   // POSTs of those keys
	Check   string  // why the write (or faults) check failed ("": it passed)
	Checked bool    // a read row's content was checked (the faults row)

	// Large-chunk rows.
	KeyPrefix   string // "DSID/ARRAY/": the keys KeyRequests counts
	KeyRequests int64  // GETs and HEADs of keys under KeyPrefix
	Partial     int64  // GETs answered 206 (a byte range)
	BytesSent   int64  // body bytes the gateway sent
	// Kernel page cache of the mount's chunk files, in bytes resident,
	// after the warm copy and after dropping the page cache (the row read
	// from dmfs's memory), when measured.
	PageCacheMeasured               bool
	PageCacheBefore, PageCacheAfter int64
	// Passthrough: the mount read these chunks by FUSE passthrough, so the
	// pages mincore(2) sees are dmfs's memory file's, not a page cache.
	Passthrough bool

	// Disk cache rows (the page cache fields above: of the cache folder's
	// files, for the remount).
	SplitDS      string       // the datasource whose requests Split counts by kind
	Split        requestSplit // the gateway's requests by kind, when SplitDS is set
	DiskMeasured bool         // Disk was read from the mount
	Disk         diskFigures  // the mount's disk tier counters over the operation
	FolderBytes  int64        // size of the cache folder's files the remount read from
}

// summary is the median, min and max of a series.
type summary struct{ Median, Min, Max float64 }

func summarize(xs []float64) (summary, bool) {
	if len(xs) == 0 {
		return summary{}, false
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return summary{Median: med, Min: s[0], Max: s[n-1]}, true
}

func (s summary) format(unit string, prec int) string {
	f := func(v float64) string { return fmt.Sprintf("%.*f", prec, v) }
	if s.Min == s.Max {
		return f(s.Median) + unit
	}
	return fmt.Sprintf("%s%s (%s–%s)", f(s.Median), unit, f(s.Min), f(s.Max))
}

// measure names, in table order; the direct-HTTP rows are named by
// directName and directVarName.
const (
	mCpCold        = "dmfs `cp -r` cold"
	mCpWarm        = "dmfs `cp -r` warm"
	mCpColdSmall   = "dmfs `cp -r` cold, cache = 1/10 of data"
	mCpWarmSmall   = "dmfs `cp -r` warm, cache = 1/10 of data"
	mRclone        = "rclone mount `cp -r` cold (default VFS)"
	mRcloneFull    = "rclone mount `cp -r` cold (`--vfs-cache-mode full`)"
	mLsR           = "dmfs `ls -R`"
	mLslR          = "dmfs `ls -lR`"
	mXrLoadCold    = "dmfs xarray `.load()` cold"
	mXrLoadWarm    = "dmfs xarray `.load()` warm"
	mXrMeanCold    = "dmfs xarray `.mean()` cold"
	mXrMeanWarm    = "dmfs xarray `.mean()` warm"
	mFsspecLoad    = "fsspec xarray `.load()`"
	mFsspecMean    = "fsspec xarray `.mean()`"
	mCpFaults      = "dmfs `cp -r` cold, 10% of answers 503/429"
	ratioCpDirect  = "cp -r cold throughput: dmfs / the limit"
	ratioCpRclone  = "cp -r cold throughput: dmfs / rclone (default)"
	ratioCpRcFull  = "cp -r cold throughput: dmfs / rclone (full cache)"
	ratioLoad      = "xarray `.load()` cold: fsspec time / dmfs time"
	ratioMean      = "xarray `.mean()` cold: fsspec time / dmfs time"
	ratioLoadFetch = "xarray `.load()`: (dmfs cold − warm time) / the limit's fetch time of the variable's chunks"
	ratioMeanFetch = "xarray `.mean()`: (dmfs cold − warm time) / the limit's fetch time of the variable's chunks"
	ratioCpDirectS = "cp -r cold throughput, cache 1/10: dmfs / the limit"
	ratioCpFaults  = "cp -r cold throughput, 10% of answers 503/429: dmfs / the limit"
	targetFaultsOK = mCpFaults + ": byte-exact copy"
)

// directName names the direct-HTTP row of n clients; the limit is the
// widest.
func directName(n int, limit bool) string {
	if limit {
		return fmt.Sprintf("direct HTTP, %d clients (the limit)", n)
	}
	return fmt.Sprintf("direct HTTP, %d clients", n)
}

// directVarName names the limit's fetch of one variable's chunks.
func directVarName(n int, variable string) string {
	return fmt.Sprintf("direct HTTP, %d clients, `%s` chunks only", n, variable)
}

// readOrder is the read table's row order.
func readOrder(clients []int, variable string) []string {
	var out []string
	for i, n := range clients {
		out = append(out, directName(n, i == len(clients)-1))
	}
	out = append(out, directVarName(clients[len(clients)-1], variable))
	return append(out, measureOrder...)
}

// write measure names, in table order.
const (
	mWDirect        = "direct HTTP POST, 64 clients, + finalise (the limit)"
	mWCp            = "dmfs `cp -r` + `dmfs unmount` (`--write-back 2s`, the default)"
	mWCp0           = "dmfs `cp -r` + `dmfs unmount`, `--write-back 0`"
	mWCpSmall       = "dmfs `cp -r` + `dmfs unmount`, spool = cache = 1/10 of data"
	mWXrClient      = "Python client `to_zarr` (a POST per key) + finalise"
	mWXrDMFS        = "dmfs xarray `to_zarr` + `dmfs unmount`"
	ratioWCp        = "cp -r write throughput: dmfs / direct POST"
	ratioWCp0       = "cp -r write throughput, `--write-back 0`: dmfs / direct POST"
	ratioWCpSmall   = "cp -r write throughput, spool 1/10: dmfs / direct POST"
	ratioWXr        = "`to_zarr`: Python client time / dmfs time"
	targetWRSS      = "peak RSS − cache size (spool = cache = 1/10, writing all data)"
	targetWChecksOK = "1 POST per key written, no `.partial` key, all committed"
)

var writeOrder = []string{mWDirect, mWCp, mWCp0, mWCpSmall, mWXrClient, mWXrDMFS}

var writeRatioOrder = []string{ratioWCp, ratioWCp0, ratioWCpSmall, ratioWXr}

// measureOrder are the read rows after the direct-HTTP ones.
var measureOrder = []string{mCpCold, mCpWarm, mCpColdSmall, mCpWarmSmall, mRclone, mRcloneFull,
	mLsR, mLslR, mXrLoadCold, mXrLoadWarm, mXrMeanCold, mXrMeanWarm, mFsspecLoad, mFsspecMean, mCpFaults}

var ratioOrder = []string{ratioCpDirect, ratioCpDirectS, ratioCpFaults, ratioCpRclone, ratioCpRcFull,
	ratioLoad, ratioMean, ratioLoadFetch, ratioMeanFetch}

// latencyResult holds every run at one gateway latency.
type latencyResult struct {
	Latency time.Duration
	Samples map[string][]sample
	Ratios  map[string][]float64
	// Traces are the faults row's in-flight traces, one per run.
	Traces []trace
	// Large holds the large-chunk rows (nil: they did not run).
	Large *latencyResult
	// Disk holds the disk cache rows (nil: they did not run).
	Disk *latencyResult
}

func newLatencyResult(l time.Duration) *latencyResult {
	return &latencyResult{Latency: l, Samples: map[string][]sample{}, Ratios: map[string][]float64{}}
}

func (r *latencyResult) add(name string, s sample) { r.Samples[name] = append(r.Samples[name], s) }

// addRatio records num/den of one run when both exist in that run.
func (r *latencyResult) addRatio(name string, num, den float64) {
	if num > 0 && den > 0 {
		r.Ratios[name] = append(r.Ratios[name], num/den)
	}
}

// mbpsColumn is a row's throughput cell: MB/s over its runs, "—" for a
// row that moves no bytes.
func mbpsColumn(ss []sample) string {
	if ss[0].Bytes == 0 {
		return "—"
	}
	m, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.Bytes) / 1e6 / s.Seconds }))
	return m.format("", 1)
}

func pick(ss []sample, f func(sample) float64) []float64 {
	out := make([]float64, len(ss))
	for i, s := range ss {
		out[i] = f(s)
	}
	return out
}

// writeTable writes one latency's measurements, rows in order, as a
// Markdown table.
func (r *latencyResult) writeTable(w io.Writer, order []string) {
	fmt.Fprintf(w, "| Operation | Time, s: median (min–max) | MB/s | Gateway requests | Requests per chunk | Fetches in flight per run: mean / max | Peak memory, MiB | Checks |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|\n")
	for _, name := range order {
		ss := r.Samples[name]
		if len(ss) == 0 {
			continue
		}
		timeCol := timeColumn(ss)
		mbps := mbpsColumn(ss)
		req, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.Requests) }))
		reqCol := req.format("", 0)
		if g, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.Gets) })); g.Max > 0 {
			h, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.Heads) }))
			reqCol += fmt.Sprintf(" (GET %s, HEAD %s)", g.format("", 0), h.format("", 0))
		}
		perChunk := "—"
		if ss[0].Chunks > 0 {
			p, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.Requests) / float64(s.Chunks) }))
			perChunk = p.format("", 3)
		}
		rss := "—"
		if ss[0].RSS > 0 {
			m, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.RSS) / (1 << 20) }))
			rss = m.format("", 0)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", name, timeCol, mbps, reqCol, perChunk,
			inFlightCol(ss), rss, checksCol(ss))
	}
	fmt.Fprintf(w, "\n| Ratio (computed within each run) | median (min–max) |\n|---|---|\n")
	for _, name := range ratioOrder {
		if s, ok := summarize(r.Ratios[name]); ok {
			fmt.Fprintf(w, "| %s | %s |\n", name, s.format("x", 2))
		}
	}
}

// has tells whether any of the named measures has a sample.
func (r *latencyResult) has(names []string) bool {
	for _, n := range names {
		if len(r.Samples[n]) > 0 {
			return true
		}
	}
	return false
}

// timeColumn is a row's time: median (min–max), marked when a run hit the cap.
func timeColumn(ss []sample) string {
	t, _ := summarize(pick(ss, func(s sample) float64 { return s.Seconds }))
	col := t.format("", 2)
	if n := countIf(ss, func(s sample) bool { return s.Capped }); n > 0 {
		col = fmt.Sprintf("> %s (capped in %d of %d runs)", col, n, len(ss))
	}
	return col
}

// writeWriteTable writes one latency's write measurements and ratios.
func (r *latencyResult) writeWriteTable(w io.Writer) {
	fmt.Fprintf(w, "| Operation | Time, s: median (min–max) | of which `dmfs unmount`, s | MB/s | Keys written | POSTs per key | Other gateway requests | Requests in flight per run: mean / max | Peak RSS, MiB | Checks |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|---|\n")
	for _, name := range writeOrder {
		ss := r.Samples[name]
		if len(ss) == 0 {
			continue
		}
		timeCol := timeColumn(ss)
		unmount := "—"
		if countIf(ss, func(s sample) bool { return s.Unmount > 0 }) > 0 {
			u, _ := summarize(pick(ss, func(s sample) float64 { return s.Unmount }))
			unmount = u.format("", 2)
		}
		mbps := mbpsColumn(ss)
		keys, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.Keys) }))
		perKey, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.Posts) / float64(max(1, s.Keys)) }))
		other, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.Requests - s.Posts) }))
		rss := "—"
		if ss[0].RSS > 0 {
			m, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.RSS) / (1 << 20) }))
			rss = m.format("", 0)
		}
		checks := "ok"
		if n := countIf(ss, func(s sample) bool { return s.Check != "" }); n > 0 {
			first := ""
			for _, s := range ss {
				if s.Check != "" {
					first = s.Check
					break
				}
			}
			checks = fmt.Sprintf("**failed in %d of %d runs**: %s", n, len(ss), escapeCell(first))
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", name, timeCol, unmount, mbps,
			keys.format("", 0), perKey.format("", 3), other.format("", 0), inFlightCol(ss), rss, checks)
	}
	fmt.Fprintf(w, "\n| Ratio (computed within each run) | median (min–max) |\n|---|---|\n")
	for _, name := range writeRatioOrder {
		if s, ok := summarize(r.Ratios[name]); ok {
			fmt.Fprintf(w, "| %s | %s |\n", name, s.format("x", 2))
		}
	}
}

// inFlightCol lists the in-flight mean and max of every run, in run order
// ("—" when the gateway reported none).
func inFlightCol(ss []sample) string {
	if countIf(ss, func(s sample) bool { return s.InFlight.Max > 0 }) == 0 {
		return "—"
	}
	parts := make([]string, len(ss))
	for i, s := range ss {
		parts[i] = fmt.Sprintf("%.1f / %d", s.InFlight.Mean, s.InFlight.Max)
	}
	return strings.Join(parts, ", ")
}

// checksCol says whether a row's checks passed ("—": it has none).
func checksCol(ss []sample) string {
	n := countIf(ss, func(s sample) bool { return s.Check != "" })
	if n == 0 {
		if countIf(ss, func(s sample) bool { return s.Checked }) == len(ss) {
			return "ok"
		}
		return "—"
	}
	first := ""
	for _, s := range ss {
		if s.Check != "" {
			first = s.Check
			break
		}
	}
	return fmt.Sprintf("**failed in %d of %d runs**: %s", n, len(ss), escapeCell(first))
}

func countIf(ss []sample, f func(sample) bool) int {
	n := 0
	for _, s := range ss {
		if f(s) {
			n++
		}
	}
	return n
}

// writeTargets checks the write figures of DESIGN.md §6: the cp -r
// throughput with the default write-back is the target row (the
// `--write-back 0` row is for information), to_zarr against the Python
// client, the peak RSS while writing 10x the spool size, and the request
// checks of every write row.
func (r *latencyResult) writeTargets(cacheSmall int64) []target {
	var out []target
	ratio := func(name, want string, min float64) {
		if s, ok := summarize(r.Ratios[name]); ok {
			out = append(out, target{name, want, s.format("x", 2), s.Min >= min})
		}
	}
	ratio(ratioWCp, "≥ 0.8x", 0.8)
	ratio(ratioWXr, "≥ 2x", 2)
	if ss := r.Samples[mWCpSmall]; len(ss) > 0 && cacheSmall > 0 && ss[0].RSS > 0 {
		s, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.RSS-cacheSmall) / (1 << 20) }))
		out = append(out, target{targetWRSS, "≤ 64 MiB", s.format(" MiB", 0), s.Max <= 64})
	}
	for _, name := range writeOrder {
		ss := r.Samples[name]
		if len(ss) == 0 {
			continue
		}
		failed := countIf(ss, func(s sample) bool { return s.Check != "" })
		got := fmt.Sprintf("passed in %d of %d runs", len(ss)-failed, len(ss))
		out = append(out, target{name + ": " + targetWChecksOK, "every run", got, failed == 0})
	}
	return out
}

// target is one DESIGN.md §6 figure checked against a run.
type target struct {
	What, Want, Got string
	Met             bool
}

func (r *latencyResult) targets(cacheSmall int64) []target {
	var out []target
	ratio := func(name, want string, min float64) {
		if s, ok := summarize(r.Ratios[name]); ok {
			out = append(out, target{name, want, s.format("x", 2), s.Min >= min})
		}
	}
	atMost := func(name, want string, limit float64) {
		if s, ok := summarize(r.Ratios[name]); ok {
			out = append(out, target{name, want, s.format("x", 2), s.Max <= limit})
		}
	}
	ratio(ratioCpDirect, "≥ 0.8x", 0.8)
	ratio(ratioCpRclone, "≥ 10x", 10)
	ratio(ratioCpRcFull, "≥ 10x", 10)
	ratio(ratioLoad, "≥ 2x", 2)
	ratio(ratioMean, "≥ 2x", 2)
	atMost(ratioLoadFetch, "≤ 1.25x", 1.25)
	atMost(ratioMeanFetch, "≤ 1.25x", 1.25)
	zero := func(name string) {
		ss := r.Samples[name]
		if len(ss) == 0 {
			return
		}
		s, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.Requests) }))
		out = append(out, target{name + ": gateway requests", "0", s.format("", 0), s.Max == 0})
	}
	zero(mCpWarm)
	zero(mXrLoadWarm)
	zero(mXrMeanWarm)
	perChunk := func(name, want string, max float64) {
		ss := r.Samples[name]
		if len(ss) == 0 || ss[0].Chunks == 0 {
			return
		}
		s, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.Requests) / float64(s.Chunks) }))
		out = append(out, target{name + ": requests per chunk", want, s.format("", 3), s.Max <= max})
	}
	perChunk(mCpCold, "≤ 1.1", 1.1)
	perChunk(mXrLoadCold, "= 1", 1)
	if ss := r.Samples[mLsR]; len(ss) > 0 {
		s, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.Gets + s.Heads) }))
		out = append(out, target{mLsR + ": zarr requests", "≤ 1 (`.zmetadata`)", s.format("", 0), s.Max <= 1})
	}
	if ss := r.Samples[mLslR]; len(ss) > 0 {
		g, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.Gets) }))
		h, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.Heads) / float64(max(1, s.Chunks)) }))
		out = append(out, target{mLslR + ": GETs / HEADs per chunk", "≤ 1 GET (`.zmetadata`) / ≤ 1",
			g.format("", 0) + " / " + h.format("", 3), g.Max <= 1 && h.Max <= 1})
	}
	if ss := r.Samples[mCpColdSmall]; len(ss) > 0 && cacheSmall > 0 {
		s, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.RSS-cacheSmall) / (1 << 20) }))
		out = append(out, target{"peak memory − cache size (cache 1/10, reading all data)", "≤ 64 MiB",
			s.format(" MiB", 0), s.Max <= 64})
	}
	if ss := r.Samples[mCpFaults]; len(ss) > 0 {
		failed := countIf(ss, func(s sample) bool { return s.Check != "" || !s.Checked })
		out = append(out, target{targetFaultsOK, "every run", fmt.Sprintf("passed in %d of %d runs", len(ss)-failed, len(ss)), failed == 0})
	}
	return out
}

// traceLines is the most lines writeTrace writes: wider steps beyond.
const traceLines = 40

// writeTrace writes an in-flight trace as a table of steps of 0.5 s (wider
// when the trace is long): the time-weighted mean in flight, the most at
// once, a bar of the mean, and the answers that ended in the step by
// status.
func writeTrace(w io.Writer, tr trace) {
	if len(tr.Samples) == 0 {
		fmt.Fprintf(w, "(no samples)\n")
		return
	}
	per := max(1, int(math.Round(0.5/tr.IntervalSeconds)))
	if n := (len(tr.Samples) + per - 1) / per; n > traceLines {
		per *= (n + traceLines - 1) / traceLines
	}
	statusSet := map[string]bool{}
	for _, s := range tr.Samples {
		for st := range s.Answers {
			statusSet[st] = true
		}
	}
	statuses := slices.Sorted(maps.Keys(statusSet))
	type step struct {
		t, mean float64
		max     int64
		answers map[string]int64
	}
	var steps []step
	peak := 0.0
	for i := 0; i < len(tr.Samples); i += per {
		part := tr.Samples[i:min(i+per, len(tr.Samples))]
		st := step{t: part[len(part)-1].T, answers: map[string]int64{}}
		for _, s := range part {
			st.mean += s.Mean / float64(len(part))
			st.max = max(st.max, s.Max)
			for code, n := range s.Answers {
				st.answers[code] += n
			}
		}
		peak = max(peak, st.mean)
		steps = append(steps, st)
	}
	fmt.Fprintf(w, "| until t, s | in flight: mean | max | mean, as a bar |")
	for _, st := range statuses {
		fmt.Fprintf(w, " %s |", st)
	}
	fmt.Fprintf(w, "\n|---|---|---|---|%s\n", strings.Repeat("---|", len(statuses)))
	for _, st := range steps {
		bar := ""
		if peak > 0 {
			bar = strings.Repeat("█", int(math.Round(st.mean/peak*30)))
		}
		fmt.Fprintf(w, "| %.1f | %.1f | %d | %s |", st.t, st.mean, st.max, bar)
		for _, code := range statuses {
			fmt.Fprintf(w, " %d |", st.answers[code])
		}
		fmt.Fprintln(w)
	}
	if tr.Dropped > 0 {
		fmt.Fprintf(w, "\nThe gateway kept the last %d intervals only: %d earlier ones are missing.\n", len(tr.Samples), tr.Dropped)
	}
}

func writeTargets(w io.Writer, ts []target) {
	fmt.Fprintf(w, "| Figure | Target | Measured: median (min–max) | Met in every run |\n|---|---|---|---|\n")
	for _, t := range ts {
		met := "yes"
		if !t.Met {
			met = "**no**"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", t.What, t.Want, t.Got, met)
	}
}

// escapeCell keeps a value from breaking a Markdown table row.
func escapeCell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
