// Command bench measures dmfs against what a user would use instead, on the
// same local gateway and data in one run (issue 7): fetching every key
// directly with parallel HTTP clients, rclone's http backend, and xarray over
// fsspec's HTTP mapper; for large chunks (issue 18), the same direct fetch
// and a local cp -r of the same files; for the disk cache (--cache-dir,
// issue 15), cp -r cold, from dmfs's memory and after a remount from the
// disk, against the same direct fetch; and for writes through a --write
// mount, POSTing every key directly with parallel clients and to_zarr the
// way the Datamesh Python client writes. It writes the results as Markdown.
//
//	go run ./integration/bench --dmfs /tmp/dmfs --size 1GiB --runs 2 --latency 20ms,100ms,0ms --out docs/benchmarks.md
//	go run ./integration/bench --dmfs /tmp/dmfs --size 64MiB --runs 1 --latency 20ms --only write
//	go run ./integration/bench --dmfs /tmp/dmfs --size 256MiB --runs 1 --latency 20ms,0ms --only large
//	go run ./integration/bench --dmfs /tmp/dmfs --size 256MiB --runs 1 --latency 20ms --only disk
//	go run ./integration/bench --dmfs /tmp/dmfs --size 64MiB --runs 1 --dmfs-flag=--max-connections=64
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
	runs                 int
	clients              []int // direct-HTTP widths, ascending; the last is the limit
	latencies            []time.Duration
	// peers are the latencies at which the slow peers run (rclone,
	// fsspec, the Python client's to_zarr); nil: every latency.
	peers []time.Duration
	// faults is the latency of the faults row; hasFaults false: none.
	faults    time.Duration
	hasFaults bool
	dmfsFlags []string // passed to every `dmfs mount`
	out       string
	dataDir   string
	limit     time.Duration
	command   string
	parts     []string // the parts to run, in partNames order
}

// The parts of the benchmark --only chooses from: the reads of demo_grid,
// the large-chunk reads of demo_large, demo_grid through the disk cache
// (--cache-dir), and the writes.
const (
	partRead  = "read"
	partLarge = "large"
	partDisk  = "disk"
	partWrite = "write"
)

var partNames = []string{partRead, partLarge, partDisk, partWrite}

// does tells whether the named part runs.
func (o *options) does(part string) bool { return slices.Contains(o.parts, part) }

// parseParts reads --only: a comma-separated list of partNames, "" for all.
func parseParts(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return slices.Clone(partNames), nil
	}
	want := map[string]bool{}
	for p := range strings.SplitSeq(s, ",") {
		p = strings.TrimSpace(p)
		if !slices.Contains(partNames, p) {
			return nil, fmt.Errorf("%q is none of %s", p, strings.Join(partNames, ", "))
		}
		want[p] = true
	}
	var out []string
	for _, p := range partNames {
		if want[p] {
			out = append(out, p)
		}
	}
	return out, nil
}

// The faults row's gateway: DESIGN.md §6's share of failed answers, with
// the two statuses that ask a client to slow down.
const (
	faultRate       = 0.1
	faultCodes      = "503,429"
	faultRetryAfter = time.Second
)

func parseOptions(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := pflag.NewFlagSet("bench", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var lat, clients, peers, faults, only string
	fs.StringVar(&o.dmfs, "dmfs", "", "the dmfs binary to measure (required)")
	fs.StringVar(&o.rclone, "rclone", "rclone", "the rclone binary")
	fs.StringVar(&o.python, "python", "/usr/bin/python3", "the Python with xarray, zarr, fsspec and aiohttp")
	fs.StringVar(&o.size, "size", "1GiB", "uncompressed size of the demo_grid datasource (dmfs serve --demo-size; demo_large's 4 MiB chunks follow it, 100 per GiB); with the defaults 1GiB takes about half an hour on 2 cores")
	fs.IntVar(&o.runs, "runs", 2, "runs of every measurement (the median is reported)")
	fs.StringVar(&clients, "clients", "16,64", "comma-separated widths of the direct-HTTP fetch; the largest is the limit the ratios use (DESIGN.md §6: 64)")
	fs.StringVar(&lat, "latency", "20ms,100ms,0ms", "comma-separated gateway latencies (dmfs serve --latency)")
	fs.StringVar(&peers, "peers-latency", "20ms,0ms", "latencies at which the slow peers run (rclone mount, xarray over fsspec, the Python client's to_zarr), to keep the run short; \"all\": every latency")
	fs.StringVar(&faults, "faults-latency", "20ms", "latency of the faults row (a dmfs cold cp -r from a gateway failing 10% of its answers with 503 or 429); \"off\": none")
	fs.StringArrayVar(&o.dmfsFlags, "dmfs-flag", nil, "a flag for every `dmfs mount`, e.g. --dmfs-flag=--max-connections=128 (repeatable; the benchmark's own mount flags come after and win)")
	fs.StringVar(&o.out, "out", "", "write the Markdown report to this file")
	fs.StringVar(&o.dataDir, "data-dir", "", "where the demo data is generated and kept (default: a temporary folder, removed at the end)")
	fs.DurationVar(&o.limit, "cap", 5*time.Minute, "time cap of one measured operation; a capped figure is reported as a lower bound")
	fs.StringVar(&o.command, "command", "", "the command line to print in the report (default: this program's)")
	fs.StringVar(&only, "only", "", "run only these parts, comma-separated: read (demo_grid), large (demo_large's 4 MiB chunks and 64 MiB shard), disk (demo_grid cold, from memory and after a remount with --cache-dir), write (default: all four)")
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
	if o.runs < 1 {
		return nil, errors.New("--runs must be at least 1")
	}
	var err error
	if o.clients, err = parseClients(clients); err != nil {
		return nil, fmt.Errorf("--clients: %w", err)
	}
	if peers != "all" {
		if o.peers, err = parseLatencies(peers); err != nil {
			return nil, fmt.Errorf("--peers-latency: %w", err)
		}
	}
	if faults != "off" {
		if o.faults, err = time.ParseDuration(faults); err != nil || o.faults < 0 {
			return nil, fmt.Errorf("--faults-latency: %q is neither a non-negative duration such as 20ms nor off", faults)
		}
		o.hasFaults = true
	}
	for _, f := range o.dmfsFlags {
		if !strings.HasPrefix(f, "-") {
			return nil, fmt.Errorf("--dmfs-flag: %q is not a flag (write --dmfs-flag=--name=value)", f)
		}
	}
	if o.parts, err = parseParts(only); err != nil {
		return nil, fmt.Errorf("--only: %w", err)
	}
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

// parseClients reads comma-separated widths, returned ascending without
// repeats.
func parseClients(s string) ([]int, error) {
	var out []int
	for part := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(part))
		if err != nil || n < 1 || n > 1024 {
			return nil, fmt.Errorf("%q is not a number of clients from 1 to 1024", part)
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// limitClients is the width of the direct-HTTP limit: the largest.
func (o *options) limitClients() int { return o.clients[len(o.clients)-1] }

// peersAt tells whether the slow peers run at latency lat.
func (o *options) peersAt(lat time.Duration) bool {
	return o.peers == nil || slices.Contains(o.peers, lat)
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
		fmt.Fprintf(stderr, "bench: %d check(s) failed; see the Checks columns of the report\n", b.checkFailures)
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
	fgw      *gatewayProc   // the faults row's gateway, while it runs
	fclient  *gatewayClient
	mounts   []mount
	sessions []string
	seq      int

	// Known after the first direct fetch.
	keys       []string
	varKeys    []string // the chunk keys of largestVar
	chunks     int64
	wireBytes  int64
	chunkBytes int64
	largestVar string
	varBytes   int64
	varChunks  int64
	cacheSmall int64
	cacheLarge int64

	// The large-chunk rows' data set.
	large largeSet
	// The disk cache rows'.
	disk diskState

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
	b.fgw.stop()
	b.fgw = nil
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
	b.client = newGatewayClient(gw.addr, b.token, b.o.limitClients())
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
	return b.mountDMFSAt(ctx, b.gw.addr, cache, extra...)
}

// mountDMFSAt mounts the gateway at addr, with --dmfs-flag's flags.
func (b *bench) mountDMFSAt(ctx context.Context, addr string, cache int64, extra ...string) (*dmfsMount, error) {
	m, err := mountDMFS(ctx, b.o.dmfs, "http://"+addr, b.token, b.path("mnt"), b.path("run"), cache, b.path("dmfs.log"), b.o.dmfsFlags, extra...)
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
	s.InFlight = c.ZarrInFlight
	s.Partial, s.BytesSent = c.partialGets(), c.BytesSent
	if s.SplitDS != "" {
		s.Split = splitRequests(c, s.SplitDS)
	}
	if s.KeyPrefix != "" {
		g, h := c.keyRequests(s.KeyPrefix)
		s.KeyRequests = g + h
	} else if s.Chunks == b.varChunks && b.varChunks > 0 && strings.Contains(name, "xarray") {
		// xarray also reads .zmetadata and the coordinates: count the
		// variable's own chunk requests.
		s.Gets, s.Heads = c.keyRequests(datasource + "/" + b.largestVar + "/")
		s.Requests = s.Gets + s.Heads
	}
	capped := ""
	if s.Capped {
		capped = " (capped)"
	}
	b.logf("  %-58s %7.2f s%s, %d requests, in flight %.1f mean, %d max", name, s.Seconds, capped, s.Requests,
		s.InFlight.Mean, s.InFlight.Max)
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
	return b.xarrayVar(ctx, source, target, b.largestVar, op, session, b.varBytes, b.varChunks)
}

// xarrayVar is xarray for any variable, of size bytes in chunks.
func (b *bench) xarrayVar(ctx context.Context, source, target, variable, op, session string, size, chunks int64) (sample, error) {
	cctx, cancel := context.WithTimeout(ctx, b.o.limit)
	defer cancel()
	cmd := exec.CommandContext(cctx, b.o.python, b.script, source, target, variable, op)
	cmd.Env = append(os.Environ(), "BENCH_TOKEN="+b.token, "BENCH_SESSION="+session)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	if cctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
		return sample{Seconds: time.Since(start).Seconds(), Capped: true, Chunks: chunks}, nil
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
	return sample{Seconds: out.Seconds, Bytes: size, Chunks: chunks}, nil
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
	b.varKeys = b.varKeys[:0]
	for _, k := range b.keys {
		if strings.HasPrefix(k, b.largestVar+"/") && !isMetadataKey(k) {
			b.varKeys = append(b.varKeys, k)
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
	if b.o.does(partRead) {
		if err := b.oneReadRun(ctx, res); err != nil {
			return err
		}
	}
	if b.o.does(partLarge) {
		if err := b.oneLargeRun(ctx, res); err != nil {
			return err
		}
	}
	if b.o.does(partDisk) {
		if err := b.oneDiskRun(ctx, res); err != nil {
			return err
		}
	}
	if b.o.does(partWrite) {
		return b.oneWriteRun(ctx, res)
	}
	return nil
}

func (b *bench) oneReadRun(ctx context.Context, res *latencyResult) error {
	// The limit: every key fetched directly by parallel clients, at each
	// width; then the limit's fetch of the xarray variable's chunks only,
	// the bound of the xarray targets.
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
	var direct sample // the limit's
	for i, n := range b.o.clients {
		isLimit := i == len(b.o.clients)-1
		name := directName(n, isLimit)
		var fetched fetchResult
		s, err := b.measure(ctx, name, func() (sample, error) {
			var err error
			fetched, err = b.client.fetchAll(ctx, datasource, sess, b.keys, n)
			return sample{Seconds: fetched.Seconds, Bytes: fetched.Bytes}, err
		})
		if err != nil {
			return err
		}
		if b.varChunks == 0 {
			b.learnDataset(fetched.Sizes)
		}
		s.Chunks = b.chunks
		res.add(name, s)
		if isLimit {
			direct = s
		}
	}
	varName := directVarName(b.o.limitClients(), b.largestVar)
	varFetch, err := b.measure(ctx, varName, func() (sample, error) {
		r, err := b.client.fetchAll(ctx, datasource, sess, b.varKeys, b.o.limitClients())
		return sample{Seconds: r.Seconds, Bytes: r.Bytes}, err
	})
	if err != nil {
		return err
	}
	varFetch.Chunks = b.varChunks
	res.add(varName, varFetch)

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
		if s.RSS, err = m.peakMemory(); err != nil {
			return err
		}
		res.add(c.coldName, s)
		*c.keep = s
		w, err := b.measure(ctx, c.warmNm, func() (sample, error) { return b.copyTree(ctx, src) })
		if err != nil {
			return err
		}
		if w.RSS, err = m.peakMemory(); err != nil {
			return err
		}
		res.add(c.warmNm, w)
		if err := b.closeMount(m); err != nil {
			return err
		}
	}
	res.addRatio(ratioCpDirect, throughput(cold), throughput(direct))
	res.addRatio(ratioCpDirectS, throughput(coldSmall), throughput(direct))

	// rclone, default VFS and full VFS cache, each a fresh mount (and a
	// fresh cache folder) with its own session.
	peers := b.o.peersAt(res.Latency)
	for _, full := range []bool{false, true} {
		if !peers {
			break
		}
		name, ratio, cacheDir := mRclone, ratioCpRclone, ""
		if full {
			name, ratio, cacheDir = mRcloneFull, ratioCpRcFull, b.path("rclone-cache")
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
		res.addRatio(ratio, throughput(cold), throughput(s))
		if err := b.closeMount(m); err != nil {
			return err
		}
		if cacheDir != "" {
			_ = os.RemoveAll(cacheDir)
		}
	}

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

	// xarray through dmfs: cold then warm, load and mean each on a fresh
	// mount; the time cold reading adds to warm is bounded by the limit's
	// fetch time of the variable's chunks.
	var xrCold = map[string]sample{}
	for _, x := range []struct{ op, cold, warm, ratio string }{
		{"load", mXrLoadCold, mXrLoadWarm, ratioLoadFetch}, {"mean", mXrMeanCold, mXrMeanWarm, ratioMeanFetch}} {
		m, err := b.mountDMFS(ctx, b.cacheLarge)
		if err != nil {
			return err
		}
		target := filepath.Join(m.dir(), datasource)
		got := map[string]sample{}
		for _, name := range []string{x.cold, x.warm} {
			s, err := b.measure(ctx, name, func() (sample, error) { return b.xarray(ctx, "path", target, x.op, "") })
			if err != nil {
				return err
			}
			res.add(name, s)
			got[name] = s
		}
		xrCold[x.op] = got[x.cold]
		if c, w := got[x.cold], got[x.warm]; !c.Capped && !w.Capped && !varFetch.Capped && varFetch.Seconds > 0 {
			// Not addRatio: cold may be as fast as warm, a ratio ≤ 0.
			res.Ratios[x.ratio] = append(res.Ratios[x.ratio], (c.Seconds-w.Seconds)/varFetch.Seconds)
		}
		if err := b.closeMount(m); err != nil {
			return err
		}
	}
	// xarray over fsspec's HTTP mapper, with the direct client's session.
	url := "http://" + b.gw.addr + "/zarr/" + datasource
	for _, x := range []struct{ op, name, ratio string }{{"load", mFsspecLoad, ratioLoad}, {"mean", mFsspecMean, ratioMean}} {
		if !peers {
			break
		}
		s, err := b.measure(ctx, x.name, func() (sample, error) { return b.xarray(ctx, "fsspec", url, x.op, sess) })
		if err != nil {
			return err
		}
		res.add(x.name, s)
		if !s.Capped && !xrCold[x.op].Capped {
			res.addRatio(x.ratio, s.Seconds, xrCold[x.op].Seconds)
		}
	}

	if b.o.hasFaults && res.Latency == b.o.faults {
		s, err := b.faultsRun(ctx, res)
		if err != nil {
			return err
		}
		res.add(mCpFaults, s)
		res.addRatio(ratioCpFaults, throughput(s), throughput(direct))
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
	limit := b.o.limitClients()
	fmt.Fprintf(w, "# Benchmarks\n\n")
	fmt.Fprintf(w, "dmfs against what a user would use instead, on the same local gateway (`dmfs serve --demo`) and the same data, in one run. The tables are written by `scripts/bench.sh` (`integration/bench/`) from a real run; a rerun replaces this file.\n\n")
	fmt.Fprintf(w, "- Date: %s (the run took %s)\n", started.UTC().Format("2006-01-02 15:04 MST"), took.Round(time.Second))
	fmt.Fprintf(w, "- Command: `%s`\n", escapeCell(b.o.command))
	fmt.Fprintf(w, "- Machine: %s\n", machine())
	fmt.Fprintf(w, "- Software: %s\n", b.versions())
	fmt.Fprintf(w, "- Parts: %s (`--only`)\n", strings.Join(b.o.parts, ", "))
	if len(b.keys) > 0 {
		fmt.Fprintf(w, "- Data: `%s`, `dmfs serve --demo --demo-size %s`: %d keys, %d chunks (zlib float32), %.1f MB on the wire; largest variable `%s`: %d chunks, %.1f MB\n",
			datasource, b.o.size, len(b.keys), b.chunks, float64(b.wireBytes)/1e6, b.largestVar, b.varChunks, float64(b.varBytes)/1e6)
		fmt.Fprintf(w, "- dmfs cache: %d MiB (holds all the data) unless the row says 1/10 (%d MiB); readahead default\n", b.cacheLarge>>20, b.cacheSmall>>20)
	}
	mountFlags := "none besides `--service`, `--cache-size`, `--log-file` (and the write flags of the write rows, the `--cache-dir` flags of the disk cache rows)"
	if len(b.o.dmfsFlags) > 0 {
		mountFlags = "`" + escapeCell(strings.Join(b.o.dmfsFlags, " ")) + "` on every mount (`--dmfs-flag`), before the benchmark's own"
	}
	fmt.Fprintf(w, "- dmfs mount flags: %s\n", mountFlags)
	fmt.Fprintf(w, "- %d run(s) of everything at each latency, interleaved (run 1 of every tool, then run 2, ...); figures are median (min–max); ratios are computed within each run, then summarised\n", b.o.runs)
	if b.o.peers != nil {
		var skipped []string
		for _, l := range b.o.latencies {
			if !b.o.peersAt(l) {
				skipped = append(skipped, l.String())
			}
		}
		if len(skipped) > 0 {
			fmt.Fprintf(w, "- The slow peers (rclone mount, xarray over fsspec, the Python client's `to_zarr`) ran only at %s, not at %s, to keep the run short; their rows and ratios are missing there\n",
				joinDurations(b.o.peers), strings.Join(skipped, ", "))
		}
	}
	fmt.Fprintln(w)
	if !b.o.does(partRead) {
		fmt.Fprintf(w, "Only %s ran (`--only`). A figure marked capped was stopped at %s and is a lower bound.\n\n", strings.Join(b.o.parts, " and "), b.o.limit)
	} else {
		fmt.Fprintf(w, "Cold means a fresh mount: a new dmfs (or rclone) process with an empty cache, and a new mount so the kernel has no page cache for it (rclone `full`: a fresh `--cache-dir`). Warm is the same operation again on the same mount. ")
		fmt.Fprintf(w, "`cp -r` copies the whole datasource to tmpfs and checks the byte count. ")
		fmt.Fprintf(w, "The direct-HTTP rows GET every key (listed beforehand, untimed) with %s parallel clients over keep-alive connections, each taking the bodies off the wire through one reused buffer and dropping them (as `curl -o /dev/null` would: what the gateway gives, not what a client filling fresh memory can take); the widest, %d clients, is the limit (DESIGN.md §6: what the gateway can give), which the ratios use. ",
			joinInts(b.o.clients), limit)
		fmt.Fprintf(w, "The limit's fetch of the xarray variable's chunks only bounds the xarray reads: cold may take at most the warm time plus 1.25x that fetch. ")
		fmt.Fprintf(w, "xarray times are `open_zarr` + the operation inside Python (interpreter start-up excluded); `.mean()` is a dask reduction that reads every chunk; xarray's requests per chunk count only the variable's chunk keys. Requests are the gateway's own counters. ")
		fmt.Fprintf(w, "Fetches in flight are the gateway's count of `/zarr/` requests being answered at once, from their arrival (the latency included) to the end of the answer: the mean is time-weighted over the time at least one was in flight (so idle time, such as Python's start-up, does not dilute it), the max is the most at once; one mean / max pair per run, in run order. ")
		fmt.Fprintf(w, "Peak memory is VmHWM of the dmfs daemon after the operation plus the most its cache's memory file held (`memory_file_peak_bytes` in `dmfs status --json`: values kept there are not in the RSS). A figure marked capped was stopped at %s and is a lower bound.\n\n", b.o.limit)
		if b.o.hasFaults && slices.Contains(b.o.latencies, b.o.faults) {
			fmt.Fprintf(w, "The faults row (at %v only) copies the datasource cold, like `cp -r` cold, from a second gateway on the same data that answers %.0f%% of its `/zarr/` requests with 503 or 429 (`dmfs serve --fail-rate %g --fail-codes %s --fail-retry-after %s`, drawn from a fixed seed), and compares the copy with the direct client's local copy: chunks byte for byte, metadata files as JSON. Its requests include the retries. The in-flight trace of its last run follows that latency's targets.\n\n",
				b.o.faults, faultRate*100, faultRate, faultCodes, faultRetryAfter)
		}
	}
	order := readOrder(b.o.clients, b.largestVar)
	for _, r := range results {
		if !r.has(order) {
			continue
		}
		fmt.Fprintf(w, "## Gateway latency %v\n\n", r.Latency)
		r.writeTable(w, order)
		fmt.Fprintf(w, "\nTargets (DESIGN.md §6):\n\n")
		if r.Latency != 20*time.Millisecond && r.Latency != 100*time.Millisecond {
			fmt.Fprintf(w, "DESIGN.md sets the `cp -r` throughput ratios for a gateway with 20 ms and 100 ms latency; at %v they are shown for information.\n\n", r.Latency)
		}
		writeTargets(w, r.targets(b.cacheSmall))
		fmt.Fprintln(w)
		if n := len(r.Traces); n > 0 {
			fmt.Fprintf(w, "In-flight trace of the faults row (%s), run %d of %d, from the gateway's `GET /_dmfs/trace` (%v intervals, summed into steps): the time since the counters were reset, just before `cp -r` started; the fetches in flight; and the answers that ended in each step, by status.\n\n",
				mCpFaults, n, n, time.Duration(r.Traces[n-1].IntervalSeconds*float64(time.Second)))
			writeTrace(w, r.Traces[n-1])
			fmt.Fprintln(w)
		}
	}
	b.writeLargeSection(w, results)
	b.writeDiskSection(w, results)
	b.writeWritesSection(w, results)
}

func joinInts(xs []int) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = strconv.Itoa(x)
	}
	return strings.Join(parts, " and ")
}

func joinDurations(xs []time.Duration) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = x.String()
	}
	return strings.Join(parts, " and ")
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
