package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/oceanum-dmfs/dmfs/gateway"
	"github.com/oceanum-dmfs/dmfs/internal/bytesize"
)

// serveShutdownTimeout bounds how long in-flight requests may finish after a
// signal.
const serveShutdownTimeout = 3 * time.Second

// serveOptions are the flags of `dmfs serve`.
type serveOptions struct {
	addr        string
	addrFile    string
	token       string
	tokenFile   string
	demo        bool
	demoSize    string
	latency     time.Duration
	failRate    float64
	failCodes   []int
	retryAfter  time.Duration
	seed        int64
	sessionTTL  time.Duration
	sessionIdle time.Duration
	headNoLen   bool
	maxSessions int
	logLevel    string

	stagingDir    string
	maxWriteSize  string
	writeFailRate float64
	writeFailKeys []string

	queryDir string
}

func (o *serveOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.addr, "addr", "127.0.0.1:8765", "address to listen on (port 0 picks a free port)")
	fs.StringVar(&o.addrFile, "addr-file", "", "write the address listened on (127.0.0.1:PORT) to this file once ready")
	fs.StringVar(&o.token, "token", "", "the only token accepted (prefer --token-file or $DATAMESH_TOKEN: arguments are visible to other users)")
	fs.StringVar(&o.tokenFile, "token-file", "", "read the accepted token from this file")
	fs.BoolVar(&o.demo, "demo", false, "write sample datasources into DIR (default $XDG_CACHE_HOME/dmfs/demo) and serve them")
	fs.StringVar(&o.demoSize, "demo-size", "0", "with --demo, rough uncompressed size of demo_grid, e.g. 1GiB (0: a few MB)")
	fs.DurationVar(&o.latency, "latency", 0, "delay added to every request before it is answered, e.g. 20ms")
	fs.Float64Var(&o.failRate, "fail-rate", 0, "fraction of /zarr/ requests answered with an injected failure (0 to 1)")
	fs.IntSliceVar(&o.failCodes, "fail-codes", []int{503}, "statuses injected failures answer, each drawn from the list (429 and 5xx), e.g. 502,503,504,429")
	fs.DurationVar(&o.retryAfter, "fail-retry-after", gateway.DefaultRetryAfter, "Retry-After of injected 429 and 503 answers, in whole seconds")
	fs.Int64Var(&o.seed, "seed", 1, "seed of the injected failure sequence")
	fs.DurationVar(&o.sessionTTL, "session-ttl", 0, "cap on every session's lifetime, e.g. 10s (0: as the client asks)")
	fs.DurationVar(&o.sessionIdle, "session-idle", 0, "end a session no request used for this long, before its end_time, e.g. 30s (0: never)")
	fs.BoolVar(&o.headNoLen, "head-without-length", false, "leave Content-Length out of HEAD answers on zarr keys")
	fs.IntVar(&o.maxSessions, "max-sessions", 0, "answer 429 to a session request while this many are open (0: no limit)")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.stagingDir, "staging-dir", "", "folder for writes staged by sessions until finalised (default: a temporary folder next to DIR)")
	fs.StringVar(&o.maxWriteSize, "max-write-size", "1GiB", "largest body of one key written (413 beyond)")
	fs.Float64Var(&o.writeFailRate, "write-fail-rate", 0, "fraction of zarr write requests answered 503 with Retry-After, seeded by --seed (0 to 1)")
	fs.StringArrayVar(&o.writeFailKeys, "write-fail-keys", nil, "writes of keys matching this glob (KEY or ID/KEY) always fail with 500 (repeatable)")
	fs.StringVar(&o.queryDir, "query-dir", "", "folder for staged query results, one per qhash, kept across restarts (default: a temporary folder removed at exit)")
}

const serveUsage = `Usage: dmfs serve [flags] DIR
       dmfs serve --demo [flags] [DIR]

Serves every Zarr store (v2 or v3) in a subfolder of DIR as a Datamesh
datasource whose id is the folder name, over the Datamesh HTTP protocol; a
subfolder holding data.parquet is a table. Queries (POST /oceanql/stage/)
are answered with real subsets, read at /zarr/query/{qhash}/ (datasets) or
/oceanql/{qhash}?f=parquet (tables).

The token: --token-file or --token, else $DATAMESH_TOKEN. When none is given, any non-empty token is accepted; a request without a token is always
refused. Every endpoint needs it, GET /_dmfs/counters included. The token is never logged.

Flags:
`

// runServe runs `dmfs serve`; args excludes "serve". It blocks until ctx is
// cancelled (SIGINT/SIGTERM from main) and returns an exit code.
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var opts serveOptions
	flags := pflag.NewFlagSet("dmfs serve", pflag.ContinueOnError)
	flags.SetOutput(stderr)
	opts.addFlags(flags)
	flags.Usage = func() {
		fmt.Fprint(stdout, serveUsage)
		fmt.Fprint(stdout, flags.FlagUsages())
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK
		}
		return serveUsageError(stderr, err)
	}
	logger, err := newLogger(opts.logLevel, "", stderr)
	if err != nil {
		return serveUsageError(stderr, err)
	}

	dir, err := serveDir(&opts, flags.Args())
	if err != nil {
		return serveUsageError(stderr, err)
	}
	demoBytes, err := bytesize.Parse(opts.demoSize)
	if err != nil {
		return serveUsageError(stderr, fmt.Errorf("--demo-size: %w", err))
	}
	if flags.Changed("demo-size") && !opts.demo {
		return serveUsageError(stderr, errors.New("--demo-size needs --demo"))
	}
	if opts.failRate < 0 || opts.failRate > 1 || math.IsNaN(opts.failRate) {
		return serveUsageError(stderr, fmt.Errorf("--fail-rate %g is outside [0, 1]", opts.failRate))
	}
	if opts.latency < 0 || opts.sessionTTL < 0 || opts.sessionIdle < 0 || opts.maxSessions < 0 {
		return serveUsageError(stderr, errors.New("--latency, --session-ttl, --session-idle and --max-sessions must not be negative"))
	}
	if len(opts.failCodes) == 0 {
		return serveUsageError(stderr, errors.New("--fail-codes needs at least one status"))
	}
	for _, c := range opts.failCodes {
		if c != 429 && (c < 500 || c > 599) {
			return serveUsageError(stderr, fmt.Errorf("--fail-codes: %d is not 429 or 5xx", c))
		}
	}
	if opts.retryAfter < 0 || opts.retryAfter%time.Second != 0 {
		return serveUsageError(stderr, fmt.Errorf("--fail-retry-after %s is not a whole, non-negative number of seconds", opts.retryAfter))
	}
	if opts.writeFailRate < 0 || opts.writeFailRate > 1 || math.IsNaN(opts.writeFailRate) {
		return serveUsageError(stderr, fmt.Errorf("--write-fail-rate %g is outside [0, 1]", opts.writeFailRate))
	}
	maxWrite, err := bytesize.Parse(opts.maxWriteSize)
	if err != nil || maxWrite <= 0 {
		return serveUsageError(stderr, fmt.Errorf("--max-write-size %q is not a positive size", opts.maxWriteSize))
	}
	for _, g := range opts.writeFailKeys {
		if _, err := path.Match(g, ""); err != nil {
			return serveUsageError(stderr, fmt.Errorf("--write-fail-keys %q: %w", g, err))
		}
	}
	token, err := serveToken(&opts)
	if err != nil {
		fmt.Fprintf(stderr, "dmfs serve: %v\n", err)
		return exitFailure
	}

	if opts.demo {
		start := time.Now()
		if err := gateway.WriteDemo(ctx, dir, gateway.DemoOptions{GridBytes: demoBytes}); err != nil {
			fmt.Fprintf(stderr, "dmfs serve: %v\n", err)
			return exitFailure
		}
		logger.Info("demo datasources ready", "dir", dir, "duration", time.Since(start))
	}
	cfg := opts.config(dir, token, logger)
	cfg.MaxWriteBytes = int64(maxWrite)
	srv, err := gateway.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "dmfs serve: %v\n", err)
		return exitFailure
	}
	defer srv.Close() // staged writes never finalised are discarded
	// Expired sessions' staged writes are discarded at the next request;
	// the ticker frees their space on an idle gateway too.
	reap := time.NewTicker(10 * time.Second)
	defer reap.Stop()
	go func() {
		for {
			select {
			case <-reap.C:
				srv.ReapExpired()
			case <-ctx.Done():
				return
			}
		}
	}()

	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", opts.addr)
	if err != nil {
		fmt.Fprintf(stderr, "dmfs serve: listen: %v\n", err)
		return exitFailure
	}
	addr := ln.Addr().String()
	// The gateway's limits: slow, idle or non-reading clients are cut off.
	hs := srv.NewHTTPServer(slog.NewLogLogger(logger.Handler(), slog.LevelWarn))
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()

	if opts.addrFile != "" {
		if err := serveWriteAtomic(opts.addrFile, addr); err != nil {
			fmt.Fprintf(stderr, "dmfs serve: --addr-file: %v\n", err)
			_ = hs.Close()
			return exitFailure
		}
	}
	if token == "" {
		logger.Warn("no token configured: any non-empty token is accepted")
	}
	fmt.Fprintf(stdout, "dmfs serve: serving %s at http://%s\n", dir, addr)

	select {
	case err := <-serveErr:
		fmt.Fprintf(stderr, "dmfs serve: %v\n", err)
		return exitFailure
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), serveShutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(shutdownCtx); err != nil {
		_ = hs.Close()
		logger.Warn("shutdown cut requests short", "err", err)
	}
	logger.Info("stopped")
	return exitOK
}

// config maps the flags onto the gateway's Config.
func (o *serveOptions) config(dir, token string, logger *slog.Logger) gateway.Config {
	retryAfter := o.retryAfter
	if retryAfter == 0 {
		retryAfter = -time.Second // the Config's "0 seconds": its zero means the default
	}
	return gateway.Config{
		Dir: dir, Token: token, Latency: o.latency, FailRate: o.failRate, FailCodes: o.failCodes,
		RetryAfter: retryAfter, Seed: o.seed,
		SessionTTL: o.sessionTTL, SessionIdle: o.sessionIdle, HeadWithoutLength: o.headNoLen,
		MaxSessions: o.maxSessions, Logger: logger,
		StagingDir: o.stagingDir, WriteFailRate: o.writeFailRate, WriteFailKeys: o.writeFailKeys,
		QueryDir: o.queryDir,
	}
}

func serveUsageError(stderr io.Writer, err error) int {
	fmt.Fprintf(stderr, "dmfs serve: %v\nRun 'dmfs serve --help' for usage.\n", err)
	return exitUsage
}

// serveDir picks the folder to serve.
func serveDir(opts *serveOptions, args []string) (string, error) {
	switch {
	case len(args) > 1:
		return "", fmt.Errorf("one folder expected, got %d arguments", len(args))
	case len(args) == 1:
		return args[0], nil
	case !opts.demo:
		return "", errors.New("missing DIR, the folder of Zarr stores to serve")
	}
	if cache := os.Getenv("XDG_CACHE_HOME"); cache != "" && filepath.IsAbs(cache) {
		return filepath.Join(cache, "dmfs", "demo"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no DIR given and no home folder for the demo cache: %w", err)
	}
	return filepath.Join(home, ".cache", "dmfs", "demo"), nil
}

// serveToken finds the token: --token-file, else $DATAMESH_TOKEN, else
// --token; "" accepts any token.
func serveToken(opts *serveOptions) (string, error) {
	if opts.tokenFile != "" && opts.token != "" {
		return "", errors.New("give --token or --token-file, not both")
	}
	if opts.tokenFile != "" {
		b, err := os.ReadFile(opts.tokenFile)
		if err != nil {
			return "", fmt.Errorf("--token-file: %w", err)
		}
		t := strings.TrimSpace(string(b))
		if t == "" {
			return "", fmt.Errorf("--token-file %s is empty", opts.tokenFile)
		}
		return t, nil
	}
	if opts.token != "" {
		return opts.token, nil
	}
	return strings.TrimSpace(os.Getenv("DATAMESH_TOKEN")), nil
}

// serveWriteAtomic writes a file that readers see whole or not at all.
func serveWriteAtomic(path, content string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".addr-*")
	if err != nil {
		return err
	}
	if _, err := tmp.WriteString(content); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}
