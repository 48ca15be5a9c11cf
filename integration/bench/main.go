// Command bench measures dmfs against what a user would use instead, on the
// same local gateway and data in one run (issue 7): fetching every key
// directly with parallel HTTP clients, rclone's http backend, and xarray over
// fsspec's HTTP mapper; and for writes through a --write mount, POSTing
// every key directly with parallel clients and to_zarr the way the Datamesh
// Python client writes. It writes the results as Markdown.
//
//	go run ./integration/bench --dmfs /tmp/dmfs --size 1GiB --runs 3 --latency 20ms,0ms --out docs/benchmarks.md
//	go run ./integration/bench --dmfs /tmp/dmfs --size 64MiB --runs 1 --latency 20ms --only write
package main

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"crypto/rand"
	"encoding/hex"

	"github.com/spf13/pflag"

	"github.com/oceanum-dmfs/dmfs/internal/bytesize"
)

//go:embed xarray_read.py
var xarrayScript []byte

//go:embed xarray_write.py
var xarrayWriteScript []byte

const datasource = "demo_grid"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the command's flags.
type options struct {
	dmfs, rclone, python string
	size                 string
	runs, clients        int
	latencies            []time.Duration
	out, dataDir         string
	limit                time.Duration
	command              string
	only                 string // "": reads and writes; "read" or "write"
}

func parseOptions(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := pflag.NewFlagSet("bench", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var lat string
	fs.StringVar(&o.dmfs, "dmfs", "", "the dmfs binary to measure (required)")
	fs.StringVar(&o.rclone, "rclone", "rclone", "the rclone binary")
	fs.StringVar(&o.python, "python", "/usr/bin/python3", "the Python with xarray, zarr, fsspec and aiohttp")
	fs.StringVar(&o.size, "size", "1GiB", "uncompressed size of the demo_grid datasource (dmfs serve --demo-size); 1GiB takes about 14 minutes on 2 cores for the reads, and the writes about as long again")
	fs.IntVar(&o.runs, "runs", 3, "runs of every measurement (the median is reported)")
	fs.IntVar(&o.clients, "clients", 16, "parallel clients of the direct-HTTP limit")
	fs.StringVar(&lat, "latency", "20ms,0ms", "comma-separated gateway latencies (dmfs serve --latency)")
	fs.StringVar(&o.out, "out", "", "write the Markdown report to this file")
	fs.StringVar(&o.dataDir, "data-dir", "", "where the demo data is generated and kept (default: a temporary folder, removed at the end)")
	fs.DurationVar(&o.limit, "cap", 5*time.Minute, "time cap of one measured operation; a capped figure is reported as a lower bound")
	fs.StringVar(&o.command, "command", "", "the command line to print in the report (default: this program's)")
	fs.StringVar(&o.only, "only", "", "run only the read or only the write benchmarks: read or write (default: both)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if o.dmfs == "" {
		return nil, errors.New("--dmfs is required: the path of the dmfs binary to measure")
	}
	if _, err := parseSize(o.size); err != nil {
		return nil, fmt.Errorf("--size: %w", err)
	}
	if o.runs < 1 || o.clients < 1 {
		return nil, errors.New("--runs and --clients must be at least 1")
	}
	if o.only != "" && o.only != "read" && o.only != "write" {
		return nil, fmt.Errorf("--only: %q is neither read nor write", o.only)
	}
	var err error
	if o.latencies, err = parseLatencies(lat); err != nil {
		return nil, fmt.Errorf("--latency: %w", err)
	}
	if o.command == "" {
		o.command = "go run ./integration/bench " + strings.Join(args, " ")
	}
	return o, nil
}

// parseSize reads a positive size such as 64MiB or 1GiB.
func parseSize(s string) (int64, error) {
	n, err := bytesize.Parse(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a positive size such as 64MiB or 1GiB", s)
	}
	return n, nil
}

func parseLatencies(s string) ([]time.Duration, error) {
	var out []time.Duration
	for part := range strings.SplitSeq(s, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(part))
		if err != nil || d < 0 {
			return nil, fmt.Errorf("%q is not a non-negative duration such as 20ms", part)
		}
		out = append(out, d)
	}
	return out, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseOptions(args, stderr)
	if err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "bench:", err)
		return 2
	}
	b, err := newBench(o, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	defer b.cleanup()
	started := time.Now()
	results, err := b.runAll(ctx)
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	var report bytes.Buffer
	b.writeReport(&report, results, started, time.Since(started))
	_, _ = stdout.Write(report.Bytes())
	if o.out != "" {
		if err := os.WriteFile(o.out, report.Bytes(), 0o644); err != nil {
			fmt.Fprintln(stderr, "bench:", err)
			return 1
		}
		fmt.Fprintln(stderr, "bench: wrote", o.out)
	}
	if b.checkFailures > 0 {
		fmt.Fprintf(stderr, "bench: %d write check(s) failed; see the Checks column of the report\n", b.checkFailures)
		return 1
	}
	return 0
}

// bench holds what lives for the whole command and must be cleaned up.
type bench struct {
	o         *options
	log       io.Writer
	work      string // temporary folder, removed at the end
	dataDir   string
	token     string
	tokenFile string
	script    string
	wscript   string
	shm       string // where copies go: tmpfs when there is one
	runTag    string // in the names of the datasources the writes make

	gw       *gatewayProc
	client   *gatewayClient
	wclient  *gatewayClient // writeClients connections
	mounts   []mount
	sessions []string
	seq      int

	// Known after the first direct fetch.
	keys       []string
	chunks     int64
	wireBytes  int64
	chunkBytes int64
	largestVar string
	varBytes   int64
	varChunks  int64
	cacheSmall int64
	cacheLarge int64

	// Writes.
	srcDir        string   // local copy of the datasource, written by the writers
	srcBytes      int64    // its size
	written       []string // datasources the writes made, removed with the gateway
	writeSeq      int
	checkFailures int // write checks that failed
}

func newBench(o *options, log io.Writer) (*bench, error) {
	for _, bin := range []string{o.dmfs, o.rclone, o.python, "fusermount3", "cp", "ls"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%s not found: %w", bin, err)
		}
	}
	work, err := os.MkdirTemp("", "dmfs-bench-")
	if err != nil {
		return nil, err
	}
	b := &bench{o: o, log: log, work: work, dataDir: o.dataDir}
	if b.dataDir == "" {
		b.dataDir = filepath.Join(work, "data")
	}
	shmBase := work
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		shmBase = "/dev/shm"
	}
	if b.shm, err = os.MkdirTemp(shmBase, "dmfs-bench-copies-"); err != nil {
		_ = os.RemoveAll(work)
		return nil, err
	}
	raw := make([]byte, 16)
	_, _ = rand.Read(raw)
	b.token = "bench-" + hex.EncodeToString(raw) // throwaway, local gateway only
	b.runTag = hex.EncodeToString(raw[:3])       // only in datasource names
	b.tokenFile = filepath.Join(work, "token")
	b.script = filepath.Join(work, "xarray_read.py")
	b.wscript = filepath.Join(work, "xarray_write.py")
	if err := os.WriteFile(b.tokenFile, []byte(b.token+"\n"), 0o600); err != nil {
		b.cleanup()
		return nil, err
	}
	if err := os.WriteFile(b.script, xarrayScript, 0o644); err != nil {
		b.cleanup()
		return nil, err
	}
	if err := os.WriteFile(b.wscript, xarrayWriteScript, 0o644); err != nil {
		b.cleanup()
		return nil, err
	}
	return b, nil
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// cleanup unmounts everything, closes sessions, stops the gateway and
// removes temporary files, whatever state the run ended in.
func (b *bench) cleanup() {
	for i := len(b.mounts) - 1; i >= 0; i-- {
		if err := b.mounts[i].close(); err != nil {
			b.logf("cleanup: %v", err)
		}
	}
	b.mounts = nil
	b.stopGateway()
	_ = os.RemoveAll(b.shm)
	_ = os.RemoveAll(b.work)
}

func (b *bench) stopGateway() {
	if b.gw == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, id := range b.sessions {
		if err := b.client.closeSession(ctx, id); err != nil {
			b.logf("close session: %v", err)
		}
	}
	b.sessions = nil
	b.gw.stop()
	b.gw = nil
	// The writes deleted their datasources through the gateway, which
	// leaves their folders; --data-dir may be kept for the next run.
	for _, id := range b.written {
		_ = os.RemoveAll(filepath.Join(b.dataDir, id))
	}
	b.written = nil
}

func (b *bench) startGateway(ctx context.Context, latency time.Duration) error {
	b.stopGateway()
	b.logf("starting gateway (latency %v, data %s, size %s; the first start generates the data)", latency, b.dataDir, b.o.size)
	gw, err := startGateway(ctx, b.o.dmfs, b.dataDir, b.tokenFile, b.o.size, latency, b.path("gateway.log"))
	if err != nil {
		return err
	}
	b.gw = gw
	b.client = newGatewayClient(gw.addr, b.token, b.o.clients)
	b.wclient = newGatewayClient(gw.addr, b.token, writeClients)
	return nil
}

// path is a fresh name in the work folder.
func (b *bench) path(name string) string {
	b.seq++
	return filepath.Join(b.work, fmt.Sprintf("%03d-%s", b.seq, name))
}

func (b *bench) session(ctx context.Context) (string, error) {
	id, err := b.client.acquireSession(ctx)
	if err == nil {
		b.sessions = append(b.sessions, id)
	}
	return id, err
}

func (b *bench) closeMount(m mount) error {
	b.mounts = slices.DeleteFunc(b.mounts, func(x mount) bool { return x == m })
	return m.close()
}

func (b *bench) mountDMFS(ctx context.Context, cache int64, extra ...string) (*dmfsMount, error) {
	m, err := mountDMFS(ctx, b.o.dmfs, "http://"+b.gw.addr, b.token, b.path("mnt"), b.path("run"), cache, b.path("dmfs.log"), extra...)
	if err != nil {
		return nil, err
	}
	b.mounts = append(b.mounts, m)
	return m, nil
}

func (b *bench) runAll(ctx context.Context) ([]*latencyResult, error) {
	var results []*latencyResult
	for _, lat := range b.o.latencies {
		if err := b.startGateway(ctx, lat); err != nil {
			return nil, err
		}
		res := newLatencyResult(lat)
		for r := 1; r <= b.o.runs; r++ {
			b.logf("latency %v, run %d of %d", lat, r, b.o.runs)
			if err := b.oneRun(ctx, res); err != nil {
				return nil, fmt.Errorf("latency %v, run %d: %w", lat, r, err)
			}
		}
		results = append(results, res)
		b.stopGateway()
	}
	return results, nil
}

// measure resets the gateway counters, runs op and fills the sample's
// request counts.
func (b *bench) measure(ctx context.Context, name string, op func() (sample, error)) (sample, error) {
	if err := b.client.resetCounters(ctx); err != nil {
		return sample{}, err
	}
	s, err := op()
	if err != nil {
		return sample{}, fmt.Errorf("%s: %w", name, err)
	}
	c, err := b.client.counters(ctx)
	if err != nil {
		return sample{}, err
	}
	s.Requests, s.Gets, s.Heads = c.Requests, c.gets(), c.heads()
	if s.Chunks == b.varChunks && b.varChunks > 0 && strings.Contains(name, "xarray") {
		// xarray also reads .zmetadata and the coordinates: count the
		// variable's own chunk requests.
		s.Gets, s.Heads = c.keyRequests(datasource + "/" + b.largestVar + "/")
		s.Requests = s.Gets + s.Heads
	}
	capped := ""
	if s.Capped {
		capped = " (capped)"
	}
	b.logf("  %-58s %7.2f s%s, %d requests", name, s.Seconds, capped, s.Requests)
	return s, nil
}

// copyTree times `cp -r src` into a fresh folder and measures what arrived.
func (b *bench) copyTree(ctx context.Context, src string) (sample, error) {
	dest := filepath.Join(b.shm, fmt.Sprintf("copy-%d", time.Now().UnixNano()))
	defer os.RemoveAll(dest)
	t, err := runTimed(ctx, b.o.limit, "cp", "-r", src, dest)
	if err != nil {
		return sample{}, err
	}
	n, chunkBytes, err := treeBytes(dest)
	if err != nil && !t.Capped {
		return sample{}, err
	}
	if !t.Capped && chunkBytes != b.chunkBytes {
		return sample{}, fmt.Errorf("cp -r %s copied %d bytes of chunks, the datasource has %d", src, chunkBytes, b.chunkBytes)
	}
	return sample{Seconds: t.Seconds, Capped: t.Capped, Bytes: n, Chunks: b.chunks}, nil
}

// xarray runs the Python reader and returns its own timing (open + op,
// without the interpreter's start-up).
func (b *bench) xarray(ctx context.Context, source, target, op, session string) (sample, error) {
	cctx, cancel := context.WithTimeout(ctx, b.o.limit)
	defer cancel()
	cmd := exec.CommandContext(cctx, b.o.python, b.script, source, target, b.largestVar, op)
	cmd.Env = append(os.Environ(), "BENCH_TOKEN="+b.token, "BENCH_SESSION="+session)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	if cctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
		return sample{Seconds: time.Since(start).Seconds(), Capped: true, Chunks: b.varChunks}, nil
	}
	if err != nil {
		return sample{}, fmt.Errorf("xarray %s %s: %w: %s", source, op, err, firstLines(stderr.String(), 5))
	}
	var out struct {
		Seconds float64 `json:"seconds"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		return sample{}, fmt.Errorf("xarray %s %s: output %q: %w", source, op, firstLines(stdout.String(), 2), err)
	}
	return sample{Seconds: out.Seconds, Bytes: b.varBytes, Chunks: b.varChunks}, nil
}

func (b *bench) learnDataset(sizes map[string]int64) {
	b.keys = b.keys[:0]
	byVar := map[string]int64{}
	chunksByVar := map[string]int64{}
	b.chunks, b.wireBytes, b.chunkBytes = 0, 0, 0
	for k, n := range sizes {
		b.keys = append(b.keys, k)
		b.wireBytes += n
		if isMetadataKey(k) {
			continue
		}
		b.chunks++
		b.chunkBytes += n
		if v, _, ok := strings.Cut(k, "/"); ok {
			byVar[v] += n
			chunksByVar[v]++
		}
	}
	slices.Sort(b.keys)
	for v, n := range byVar {
		if n > b.varBytes || (n == b.varBytes && v < b.largestVar) {
			b.largestVar, b.varBytes, b.varChunks = v, n, chunksByVar[v]
		}
	}
	b.cacheSmall = max(1<<20, b.wireBytes/10) &^ (1<<20 - 1)
	b.cacheLarge = max(1<<30, (2*b.wireBytes+1<<20)&^(1<<20-1))
	b.logf("dataset %s: %d keys, %d chunks, %.1f MB on the wire; largest variable %s (%d chunks, %.1f MB); caches %d MiB and %d MiB",
		datasource, len(b.keys), b.chunks, float64(b.wireBytes)/1e6, b.largestVar, b.varChunks, float64(b.varBytes)/1e6,
		b.cacheSmall>>20, b.cacheLarge>>20)
}

// oneRun measures every operation once, so that ratios compare figures
// taken minutes apart at most: the reads, then the writes.
func (b *bench) oneRun(ctx context.Context, res *latencyResult) error {
	if b.o.only != "write" {
		if err := b.oneReadRun(ctx, res); err != nil {
			return err
		}
	}
	if b.o.only != "read" {
		return b.oneWriteRun(ctx, res)
	}
	return nil
}

func (b *bench) oneReadRun(ctx context.Context, res *latencyResult) error {
	// The limit: every key fetched directly by parallel clients.
	sess, err := b.session(ctx)
	if err != nil {
		return err
	}
	if len(b.keys) == 0 {
		keys, err := b.client.listKeys(ctx, datasource, sess)
		if err != nil {
			return err
		}
		b.keys = keys
	}
	var fetched fetchResult
	direct, err := b.measure(ctx, mDirect, func() (sample, error) {
		var err error
		fetched, err = b.client.fetchAll(ctx, datasource, sess, b.keys, b.o.clients)
		return sample{Seconds: fetched.Seconds, Bytes: fetched.Bytes}, err
	})
	if err != nil {
		return err
	}
	if b.varChunks == 0 {
		b.learnDataset(fetched.Sizes)
	}
	direct.Chunks = b.chunks
	res.add(mDirect, direct)

	// dmfs cp -r, cold then warm, with a cache that holds everything and
	// with a tenth of the data.
	var cold, coldSmall sample
	for _, c := range []struct {
		cache            int64
		coldName, warmNm string
		keep             *sample
	}{{b.cacheLarge, mCpCold, mCpWarm, &cold}, {b.cacheSmall, mCpColdSmall, mCpWarmSmall, &coldSmall}} {
		m, err := b.mountDMFS(ctx, c.cache)
		if err != nil {
			return err
		}
		src := filepath.Join(m.dir(), datasource)
		s, err := b.measure(ctx, c.coldName, func() (sample, error) { return b.copyTree(ctx, src) })
		if err != nil {
			return err
		}
		if s.RSS, err = m.peakRSS(); err != nil {
			return err
		}
		res.add(c.coldName, s)
		*c.keep = s
		w, err := b.measure(ctx, c.warmNm, func() (sample, error) { return b.copyTree(ctx, src) })
		if err != nil {
			return err
		}
		if w.RSS, err = m.peakRSS(); err != nil {
			return err
		}
		res.add(c.warmNm, w)
		if err := b.closeMount(m); err != nil {
			return err
		}
	}

	// rclone, default VFS and full VFS cache, each a fresh mount (and a
	// fresh cache folder) with its own session.
	var rc [2]sample
	for i, full := range []bool{false, true} {
		name, cacheDir := mRclone, ""
		if full {
			name, cacheDir = mRcloneFull, b.path("rclone-cache")
		}
		rsess, err := b.session(ctx)
		if err != nil {
			return err
		}
		m, err := mountRclone(ctx, b.o.rclone, "http://"+b.gw.addr+"/zarr/"+datasource+"/", b.token, rsess,
			b.path("rmnt"), cacheDir, b.path("rclone.log"))
		if err != nil {
			return err
		}
		b.mounts = append(b.mounts, m)
		s, err := b.measure(ctx, name, func() (sample, error) { return b.copyTree(ctx, m.dir()) })
		if err != nil {
			return err
		}
		res.add(name, s)
		rc[i] = s
		if err := b.closeMount(m); err != nil {
			return err
		}
		if cacheDir != "" {
			_ = os.RemoveAll(cacheDir)
		}
	}
	res.addRatio(ratioCpDirect, throughput(cold), throughput(direct))
	res.addRatio(ratioCpDirectS, throughput(coldSmall), throughput(direct))
	res.addRatio(ratioCpRclone, throughput(cold), throughput(rc[0]))
	res.addRatio(ratioCpRcFull, throughput(cold), throughput(rc[1]))

	// Listings, each on a fresh mount.
	for _, l := range []struct{ name, flags string }{{mLsR, "-R"}, {mLslR, "-lR"}} {
		m, err := b.mountDMFS(ctx, b.cacheLarge)
		if err != nil {
			return err
		}
		s, err := b.measure(ctx, l.name, func() (sample, error) {
			t, err := runTimed(ctx, b.o.limit, "ls", l.flags, filepath.Join(m.dir(), datasource))
			return sample{Seconds: t.Seconds, Capped: t.Capped, Chunks: b.chunks}, err
		})
		if err != nil {
			return err
		}
		res.add(l.name, s)
		if err := b.closeMount(m); err != nil {
			return err
		}
	}

	// xarray through dmfs: cold then warm, load and mean each on a fresh mount.
	var xrCold = map[string]sample{}
	for _, x := range []struct{ op, cold, warm string }{{"load", mXrLoadCold, mXrLoadWarm}, {"mean", mXrMeanCold, mXrMeanWarm}} {
		m, err := b.mountDMFS(ctx, b.cacheLarge)
		if err != nil {
			return err
		}
		target := filepath.Join(m.dir(), datasource)
		for _, name := range []string{x.cold, x.warm} {
			s, err := b.measure(ctx, name, func() (sample, error) { return b.xarray(ctx, "path", target, x.op, "") })
			if err != nil {
				return err
			}
			res.add(name, s)
			if name == x.cold {
				xrCold[x.op] = s
			}
		}
		if err := b.closeMount(m); err != nil {
			return err
		}
	}
	// xarray over fsspec's HTTP mapper, with the direct client's session.
	url := "http://" + b.gw.addr + "/zarr/" + datasource
	for _, x := range []struct{ op, name, ratio string }{{"load", mFsspecLoad, ratioLoad}, {"mean", mFsspecMean, ratioMean}} {
		s, err := b.measure(ctx, x.name, func() (sample, error) { return b.xarray(ctx, "fsspec", url, x.op, sess) })
		if err != nil {
			return err
		}
		res.add(x.name, s)
		if !s.Capped && !xrCold[x.op].Capped {
			res.addRatio(x.ratio, s.Seconds, xrCold[x.op].Seconds)
		}
	}
	return nil
}

// throughput is bytes per second, 0 when unknown; a capped run counts what
// it copied before the cap.
func throughput(s sample) float64 {
	if s.Seconds <= 0 {
		return 0
	}
	return float64(s.Bytes) / s.Seconds
}

func (b *bench) writeReport(w io.Writer, results []*latencyResult, started time.Time, took time.Duration) {
	fmt.Fprintf(w, "# Benchmarks\n\n")
	fmt.Fprintf(w, "dmfs against what a user would use instead, on the same local gateway (`dmfs serve --demo`) and the same data, in one run. The tables are written by `scripts/bench.sh` (`integration/bench/`) from a real run; a rerun replaces this file.\n\n")
	fmt.Fprintf(w, "- Date: %s (the run took %s)\n", started.UTC().Format("2006-01-02 15:04 MST"), took.Round(time.Second))
	fmt.Fprintf(w, "- Command: `%s`\n", escapeCell(b.o.command))
	fmt.Fprintf(w, "- Machine: %s\n", machine())
	fmt.Fprintf(w, "- Software: %s\n", b.versions())
	fmt.Fprintf(w, "- Data: `%s`, `dmfs serve --demo --demo-size %s`: %d keys, %d chunks (zlib float32), %.1f MB on the wire; largest variable `%s`: %d chunks, %.1f MB\n",
		datasource, b.o.size, len(b.keys), b.chunks, float64(b.wireBytes)/1e6, b.largestVar, b.varChunks, float64(b.varBytes)/1e6)
	fmt.Fprintf(w, "- dmfs cache: %d MiB (holds all the data) unless the row says 1/10 (%d MiB); readahead default\n", b.cacheLarge>>20, b.cacheSmall>>20)
	fmt.Fprintf(w, "- %d run(s) of everything at each latency, interleaved (run 1 of every tool, then run 2, ...); figures are median (min–max); ratios are computed within each run, then summarised\n\n", b.o.runs)
	if b.o.only == "write" {
		fmt.Fprintf(w, "Only the write benchmarks ran (`--only write`). A figure marked capped was stopped at %s and is a lower bound.\n\n", b.o.limit)
	} else {
		fmt.Fprintf(w, "Cold means a fresh mount: a new dmfs (or rclone) process with an empty cache, and a new mount so the kernel has no page cache for it (rclone `full`: a fresh `--cache-dir`). Warm is the same operation again on the same mount. ")
		fmt.Fprintf(w, "`cp -r` copies the whole datasource to tmpfs and checks the byte count. The direct-HTTP limit GETs every key (listed beforehand, untimed) with %d clients over keep-alive connections. ", b.o.clients)
		fmt.Fprintf(w, "xarray times are `open_zarr` + the operation inside Python (interpreter start-up excluded); `.mean()` is a dask reduction that reads every chunk; xarray's requests per chunk count only the variable's chunk keys. Requests are the gateway's own counters. ")
		fmt.Fprintf(w, "Peak RSS is VmHWM of the dmfs daemon after the operation. A figure marked capped was stopped at %s and is a lower bound.\n\n", b.o.limit)
	}
	for _, r := range results {
		if !r.has(measureOrder) {
			continue
		}
		fmt.Fprintf(w, "## Gateway latency %v\n\n", r.Latency)
		r.writeTable(w)
		fmt.Fprintf(w, "\nTargets (DESIGN.md §6):\n\n")
		if r.Latency != 20*time.Millisecond {
			fmt.Fprintf(w, "DESIGN.md sets the `cp -r` throughput ratios for a gateway with 20 ms latency; at %v they are shown for information.\n\n", r.Latency)
		}
		writeTargets(w, r.targets(b.cacheSmall))
		fmt.Fprintln(w)
	}
	b.writeWritesSection(w, results)
}

// writeWritesSection writes the "Writes" section, one table per latency.
func (b *bench) writeWritesSection(w io.Writer, results []*latencyResult) {
	found := false
	for _, r := range results {
		found = found || r.has(writeOrder)
	}
	if !found {
		return
	}
	fmt.Fprintf(w, "## Writes\n\n")
	fmt.Fprintf(w, "A local copy of `%s` (%d keys, %.1f MB, on tmpfs; made once with the direct client, untimed) is written into a new datasource of the same gateway by each writer in turn; each written datasource is deleted again, untimed. ",
		datasource, len(b.keys), float64(b.srcBytes)/1e6)
	fmt.Fprintf(w, "Every time runs until the writes are final: the direct client and the Python client close their session with `finalise_write=true`, and a dmfs time is the operation plus `dmfs unmount`, which waits for every upload and then finalises (uploads are only guaranteed done then). ")
	fmt.Fprintf(w, "The direct-HTTP limit POSTs every key (each file read as it is sent) with %d clients over keep-alive connections in one session. ", writeClients)
	fmt.Fprintf(w, "`cp -r` copies the local store into `MOUNT/NEW_ID` of a fresh `dmfs mount --write` (cache %d MiB, spool: the default 4 GiB in the mount's state folder, on %s, `--uploads` 64) unless the row says otherwise; the spool 1/10 row has `--write-spool-size %dMiB --cache-size %dMiB`, so it writes 10x its spool. ",
		b.cacheLarge>>20, fsKind(filepath.Dir(b.work)), b.cacheSmall>>20, b.cacheSmall>>20)
	fmt.Fprintf(w, "`to_zarr` reads the local store with `xr.open_zarr(...).load()` first (untimed), so that both ways make the same serial zarr writes, one key at a time, then times `to_zarr(mode=\"w\", consolidated=True)`: onto the mount's path (zarr's `DirectoryStore`: `KEY.<hex>.partial` renamed onto `KEY`), or into a MutableMapping that does what the Datamesh Python client's zarr store (`oceanum.datamesh.zarr.ZarrClient`) does, a POST per key set, a GET per key read, the HTML listing to iterate, over one keep-alive `http.client` connection (the client opens a connection per `requests.post`), then the finalise. Interpreter start-up is excluded. ")
	fmt.Fprintf(w, "Checks come from the gateway's counters, reset before each operation: every key written was POSTed exactly once, no key with `.partial` in its name reached the gateway, the keys are exactly the source's (`cp -r`, direct) or the same for both `to_zarr` ways, and they were committed by one finalised session. Other gateway requests are the requests besides those POSTs (session closes, catalog lookups, the Python client's reads). ")
	fmt.Fprintf(w, "Peak RSS is VmHWM of the dmfs daemon, read every %v until it exits at the end of `dmfs unmount`.\n\n", hwmEvery)
	fmt.Fprintf(w, "The `cp -r` target row is the one with the default write-back (2 s, what a user gets); the `--write-back 0` row shows what that delay costs. It is not a fixed 2 s: a closed file waits it out while the copy goes on, and whatever still waits is started at once by `dmfs unmount`, or by the close of `.zmetadata`, which waits for the rest of its datasource to be uploaded. Other gateway requests of a dmfs row are the session close and the lookup of the new datasource's name.\n\n")
	for _, r := range results {
		if !r.has(writeOrder) {
			continue
		}
		fmt.Fprintf(w, "### Writes, gateway latency %v\n\n", r.Latency)
		r.writeWriteTable(w)
		fmt.Fprintf(w, "\nTargets (DESIGN.md §6):\n\n")
		if r.Latency != 20*time.Millisecond {
			fmt.Fprintf(w, "DESIGN.md sets the `cp -r` write throughput ratio for a gateway with 20 ms latency; at %v it is shown for information.\n\n", r.Latency)
		}
		writeTargets(w, r.writeTargets(b.cacheSmall))
		fmt.Fprintln(w)
	}
}

// fsKind says whether path is on tmpfs (memory) or not.
func fsKind(path string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return "?"
	}
	if st.Type == 0x01021994 { // TMPFS_MAGIC
		return "tmpfs"
	}
	return "disk (" + path + ")"
}

func machine() string {
	var parts []string
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				parts = append(parts, strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":")))
				break
			}
		}
	}
	parts = append(parts, fmt.Sprintf("%d CPUs", runtime.NumCPU()))
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				if kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64); err == nil {
					parts = append(parts, fmt.Sprintf("%.0f GiB RAM", float64(kb)/(1<<20)))
				}
			}
		}
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
				parts = append(parts, strings.Trim(v, `"`))
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		parts = append(parts, "Linux "+strings.TrimSpace(string(b)))
	}
	return strings.Join(parts, ", ")
}

func (b *bench) versions() string {
	first := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).Output()
		if err != nil {
			return "?"
		}
		return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	py := first(b.o.python, "-c", "import xarray, zarr, fsspec, aiohttp, dask, numpy;"+
		"print('xarray', xarray.__version__, 'zarr', zarr.__version__, 'fsspec', fsspec.__version__, 'aiohttp', aiohttp.__version__, 'dask', dask.__version__, 'numpy', numpy.__version__)")
	return fmt.Sprintf("%s (%s), %s, Python %s: %s",
		first(b.o.dmfs, "version"), runtime.Version(), first(b.o.rclone, "version"), first(b.o.python, "-c", "import platform; print(platform.python_version())"), py)
}
