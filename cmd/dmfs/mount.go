package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/spf13/pflag"

	"github.com/oceanum-dmfs/dmfs/cache"
	"github.com/oceanum-dmfs/dmfs/flow"
	"github.com/oceanum-dmfs/dmfs/fs"
	"github.com/oceanum-dmfs/dmfs/internal/statedir"
	"github.com/oceanum-dmfs/dmfs/session"
)

// readyFDEnv tells a re-executed dmfs that it is the background mount and
// which file descriptor reports readiness to the waiting parent.
const readyFDEnv = "DMFS_READY_FD"

// tokenFDEnv names the file descriptor on which the background mount reads
// its token: a pipe, so that the token is in neither its environment nor its
// command line (both readable in /proc).
const tokenFDEnv = "DMFS_TOKEN_FD"

// minMaxObjectSize is the smallest bound on one chunk body, for small caches.
const minMaxObjectSize = 64 << 20

// sessionCloseTimeout bounds closing the session when the mount ends, so that
// an unmount or SIGTERM completes within 5 s even when the gateway is down
// (the session then expires at its end time).
const sessionCloseTimeout = 4 * time.Second

// startupTimeout is the least time `dmfs mount` waits for the background
// mount (see mountBackground).
const startupTimeout = 2 * time.Minute

// runMount runs `dmfs mount`.
func runMount(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, flags, code, done := parseMount(args, stdout, stderr, false)
	if done {
		return code
	}
	return startMount(ctx, o, flags, stdout, stderr)
}

const mountUsage = `Usage: dmfs mount [flags] MOUNTPOINT
       mount -t fuse.dmfs dmfs MOUNTPOINT -o OPTIONS   (with /sbin/mount.fuse.dmfs, a symlink to dmfs)

Mounts the Datamesh datasources the token can see, one directory per datasource:
read-only, or read-write with --write (the session is finalised at unmount only if
every upload succeeded). Returns once the mount serves and prints where it is, until
when its session runs (renewed while mounted) and where it logs; or use --foreground
(which tells systemd it is ready when NOTIFY_SOCKET is set: Type=notify).

SIGTERM and SIGINT unmount and close the session; SIGHUP reopens the log file (for
logrotate). Any flag can be given as a mount option in underscore form:
-o cache_size=2GiB,token_file=/etc/dmfs/token,allow_other.

Flags:
`

// parseMount parses and checks the command line of `dmfs mount` (sloppy:
// unknown -o options are skipped, for mount -s). done means the command ends
// here with code: help (to stdout, 0) or a usage error (2).
func parseMount(args []string, stdout, stderr io.Writer, sloppy bool) (o *mountOptions, flags *pflag.FlagSet, code int, done bool) {
	o = &mountOptions{sloppy: sloppy}
	flags = pflag.NewFlagSet("dmfs mount", pflag.ContinueOnError)
	flags.SetOutput(stderr)
	o.AddFlags(flags, os.Getenv)
	flags.Usage = func() {
		fmt.Fprintf(stdout, "%s%s\n%s", mountUsage, flags.FlagUsages(), exitCodesHelp)
	}
	usageError := func(err error) (*mountOptions, *pflag.FlagSet, int, bool) {
		fmt.Fprintf(stderr, "dmfs mount: %v\nRun 'dmfs mount --help' for usage.\n", err)
		return o, flags, exitUsage, true
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return o, flags, exitOK, true
		}
		return usageError(err)
	}
	if flags.NArg() != 1 {
		return usageError(errors.New("expected exactly one MOUNTPOINT"))
	}
	o.Mountpoint = flags.Arg(0)
	if err := o.applyOptions(flags); err != nil {
		return usageError(err)
	}
	if err := o.check(flags); err != nil {
		return usageError(err)
	}
	if err := o.statusOptions.check(); err != nil {
		return usageError(err)
	}
	queries, err := o.checkQueries()
	if err != nil {
		return usageError(err)
	}
	o.queryDocs = queries
	return o, flags, exitOK, false
}

// startMount mounts as the options say: as the background process, in the
// foreground, or by starting the background process and waiting for it.
func startMount(ctx context.Context, o *mountOptions, flags *pflag.FlagSet, stdout, stderr io.Writer) int {
	if fd := os.Getenv(readyFDEnv); fd != "" {
		return mountDaemon(ctx, o, fd)
	}
	if o.Foreground {
		return mountForeground(ctx, o, stderr)
	}
	return mountBackground(ctx, o, flags, stdout, stderr)
}

// mountForeground serves in this process, logging to stderr (or --log-file).
func mountForeground(ctx context.Context, o *mountOptions, stderr io.Writer) int {
	out := &logOutput{w: stderr, terminal: o.LogFile == ""}
	if o.LogFile != "" {
		f, err := openLogFile(o.LogFile)
		if err != nil {
			fmt.Fprintf(stderr, "dmfs mount: --log-file: %v\n", err)
			return exitUsage
		}
		defer func() {
			out.mu.Lock()
			out.w.(io.Closer).Close()
			out.mu.Unlock()
		}()
		out.w = f
		out.open = func() (*os.File, error) { return openLogFile(o.LogFile) }
	}
	log, err := newLogger(o.LogLevel, o.LogFormat, out)
	if err != nil {
		fmt.Fprintf(stderr, "dmfs mount: %v\n", err)
		return exitUsage
	}
	token := func() (string, error) { return readToken(o.TokenFile) }
	// The write outcome goes to stderr: in the log when that is stderr,
	// printed besides when the log goes to a file.
	var summary io.Writer
	if o.LogFile != "" {
		summary = stderr
	}
	return serveMount(ctx, o, token, log, out, summary, func(_ session.Info, err error) {
		if err != nil {
			fmt.Fprintf(stderr, "dmfs mount: %v\n", err)
		}
	})
}

// mountBackground re-executes dmfs detached from the terminal and waits until
// it reports the mount ready or fails, like gcsfuse and mountpoint-s3. Once
// it serves, it prints one line to stdout: where, the session's end, the log.
func mountBackground(ctx context.Context, o *mountOptions, flags *pflag.FlagSet, stdout, stderr io.Writer) int {
	// Check what can be checked here, so the common mistakes need no child.
	mp, err := checkMountpoint(o.Mountpoint)
	if err != nil {
		fmt.Fprintf(stderr, "dmfs mount: %v\n", err)
		return exitMountPoint
	}
	// The state folder is checked here too, so that an unsafe one is
	// reported before anything starts.
	dir, err := statedir.Open(true)
	if err != nil {
		fmt.Fprintf(stderr, "dmfs mount: state folder: %v\n", err)
		return exitFailure
	}
	defer dir.Close()
	if o.Write {
		if _, code, err := spoolDir(dir, o.SpoolDir); err != nil {
			fmt.Fprintf(stderr, "dmfs mount: %v\n", err)
			return code
		}
	}
	var logf *os.File
	logFile := o.LogFile
	if logFile == "" {
		logFile = dir.File(stateName(mp, ".log"))
		logf, err = dir.OpenAppend(stateName(mp, ".log"))
		if err != nil {
			fmt.Fprintf(stderr, "dmfs mount: log file: %v\n", err)
			return exitFailure
		}
	} else if logf, err = openLogFile(logFile); err != nil {
		fmt.Fprintf(stderr, "dmfs mount: --log-file: %v\n", err)
		return exitUsage // as in the foreground: the path given is unusable
	}
	defer logf.Close()
	token, err := readToken(o.TokenFile)
	if err != nil {
		fmt.Fprintf(stderr, "dmfs mount: %v\n", err)
		return exitAuth
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "dmfs mount: %v\n", err)
		return exitFailure
	}
	// The child gets the flags as parsed (-o applied, kernel options
	// passed on) and the absolute mount point, so that it does not depend
	// on this process's working directory. It logs to its stderr, the log
	// file opened (and checked) here.
	childArgs := append([]string{"mount"}, childFlags(flags)...)
	if len(o.fuseOpts) > 0 {
		childArgs = append(childArgs, "--options="+strings.Join(o.fuseOpts, ","))
	}
	childArgs = append(childArgs, "--", mp)
	cmd, pr, err := startDaemon(exe, childArgs, token, logf)
	if err != nil {
		fmt.Fprintf(stderr, "dmfs mount: starting the background process: %v\n", err)
		return exitFailure
	}
	defer pr.Close()
	type report struct {
		line string
		err  error
	}
	got := make(chan report, 1)
	go func() {
		line, err := bufio.NewReader(pr).ReadString('\n')
		got <- report{line, err}
	}()
	exited := make(chan int, 1)
	go func() {
		cmd.Wait()
		exited <- cmd.ProcessState.ExitCode()
	}()
	// The child waits out a restarting gateway for --retry-budget per
	// request (the session, then the catalog): its verdict is worth more
	// than a timeout here.
	wait := max(startupTimeout, 2*o.RetryBudget+time.Minute)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case r := <-got:
		line := strings.TrimSpace(r.line)
		if end, ok := readyLine(line); ok {
			fmt.Fprintln(stdout, mountedLine(mp, end, logFile))
			return exitOK
		}
		code := exitFailure
		select {
		case code = <-exited:
		case <-time.After(10 * time.Second):
		}
		if line == "" {
			line = fmt.Sprintf("the background process ended before the mount was ready; see %s", logFile)
		} else {
			line = strings.TrimPrefix(line, "error ")
		}
		fmt.Fprintf(stderr, "dmfs mount: %s\n", line)
		if code == exitOK {
			code = exitFailure
		}
		return code
	case <-ctx.Done():
		cmd.Process.Signal(syscall.SIGTERM)
		fmt.Fprintln(stderr, "dmfs mount: interrupted; the background mount was told to stop")
		return exitFailure
	case <-timer.C:
		cmd.Process.Signal(syscall.SIGTERM)
		fmt.Fprintf(stderr, "dmfs mount: the mount was not ready after %s; see %s\n", wait, logFile)
		return exitFailure
	}
}

// mountedLine is what a background mount prints once it serves; endTime is
// the session's end as the background process reported it (RFC 3339).
func mountedLine(mp, endTime, logFile string) string {
	until := "session end unknown"
	if t, err := time.Parse(time.RFC3339, endTime); err == nil {
		until = "session until " + t.Local().Format("2006-01-02 15:04:05 MST") + ", renewed while mounted"
	}
	return fmt.Sprintf("dmfs: mounted %s (%s); log: %s", mp, until, logFile)
}

// readyLine reads the background mount's report on its ready pipe: "ready
// END_TIME" once it serves (END_TIME: the session's end), else "error
// MESSAGE" or nothing.
func readyLine(line string) (end string, ok bool) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(line), "ready")
	if !ok || (rest != "" && rest[0] != ' ') {
		return "", false
	}
	return strings.TrimSpace(rest), true
}

// startDaemon starts the background mount: exe with args, stdout and
// stderr to logf, in its own session, with the readiness pipe on fd 3
// (returned: the child writes "ready" or "error ..." on it) and token written
// to a pipe on fd 4. Its environment is this one without DATAMESH_TOKEN.
func startDaemon(exe string, args []string, token string, logf *os.File) (*exec.Cmd, *os.File, error) {
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	tokR, tokW, err := os.Pipe()
	if err != nil {
		readyR.Close()
		readyW.Close()
		return nil, nil, err
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(daemonEnv(os.Environ()), readyFDEnv+"=3", tokenFDEnv+"=4")
	cmd.ExtraFiles = []*os.File{readyW, tokR}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Dir = "/"
	err = cmd.Start()
	readyW.Close()
	tokR.Close()
	if err != nil {
		readyR.Close()
		tokW.Close()
		return nil, nil, err
	}
	// In a goroutine: a token larger than the pipe's buffer would block
	// until the child reads it. A child that dies first makes this fail
	// with EPIPE, which its exit reports.
	go func() {
		io.WriteString(tokW, token)
		tokW.Close()
	}()
	return cmd, readyR, nil
}

// daemonEnv is env without the token and without readiness settings
// inherited from elsewhere, and without NOTIFY_SOCKET: the service manager
// follows the process it started, which the background mount is not (run
// `dmfs mount --foreground` under systemd).
func daemonEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case session.EnvToken, readyFDEnv, tokenFDEnv, notifySocketEnv:
			continue
		}
		out = append(out, kv)
	}
	return out
}

// readTokenFD reads the token the parent wrote on fd (see startDaemon), up
// to the size of a token file.
func readTokenFD(fdText string) (string, error) {
	var fd int
	if _, err := fmt.Sscan(fdText, &fd); err != nil || fd < 3 {
		return "", fmt.Errorf("invalid %s", tokenFDEnv)
	}
	f := os.NewFile(uintptr(fd), "token")
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxToken+1))
	if err != nil {
		return "", fmt.Errorf("reading the token from the parent: %w", err)
	}
	if len(b) > maxToken {
		return "", errors.New("the token from the parent is too large")
	}
	return strings.TrimSpace(string(b)), nil
}

// maxToken is the size of the largest token file session.ReadTokenFile takes.
const maxToken = 64 << 10

// childFlags renders the flags set on the command line or by -o (but not
// -o itself, applied already) so that a re-executed dmfs parses the same.
// --log-file is absolute by then (see check): the child needs it only to
// reopen the log on SIGHUP.
func childFlags(flags *pflag.FlagSet) []string {
	var out []string
	flags.Visit(func(f *pflag.Flag) {
		if f.Name == "options" {
			return
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			for _, v := range sv.GetSlice() {
				out = append(out, "--"+f.Name+"="+v)
			}
			return
		}
		out = append(out, "--"+f.Name+"="+f.Value.String())
	})
	return out
}

// mountDaemon is the background process: it serves and reports readiness on
// the inherited file descriptor: "ready END_TIME" or "error MESSAGE".
func mountDaemon(ctx context.Context, o *mountOptions, fdText string) int {
	var fd int
	if _, err := fmt.Sscan(fdText, &fd); err != nil || fd < 3 {
		fmt.Fprintf(os.Stderr, "dmfs mount: invalid %s\n", readyFDEnv)
		return exitUsage
	}
	os.Unsetenv(readyFDEnv)
	ready := os.NewFile(uintptr(fd), "ready")
	// Read at once, so that the parent's write ends.
	var token func() (string, error)
	if tfd := os.Getenv(tokenFDEnv); tfd != "" {
		os.Unsetenv(tokenFDEnv)
		tok, err := readTokenFD(tfd)
		token = func() (string, error) { return tok, err }
	} else {
		token = func() (string, error) { return readToken(o.TokenFile) }
	}
	// stderr is the log file, opened and checked by the parent; SIGHUP
	// opens it again by name (serveMount knows the default one's).
	out := &logOutput{w: os.Stderr, stderr: true}
	if o.LogFile != "" {
		out.open = func() (*os.File, error) { return openLogFile(o.LogFile) }
	}
	log, err := newLogger(o.LogLevel, o.LogFormat, out)
	if err != nil {
		fmt.Fprintf(ready, "error %v\n", err)
		return exitUsage
	}
	return serveMount(ctx, o, token, log, out, nil, func(info session.Info, err error) {
		if err != nil {
			fmt.Fprintf(ready, "error %s\n", oneLine(err.Error()))
		} else {
			fmt.Fprintf(ready, "ready %s\n", info.EndTime.Format(time.RFC3339))
		}
		ready.Close()
	})
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", "; ") }

// serveMount acquires the session, mounts, reports readiness, serves until
// the mount ends (unmounted from outside, or ctx cancelled by a signal), and
// always closes the session; a --write mount first finishes its uploads (see
// mountEnd), and its outcome also goes to summary when that is not nil. It
// holds the mount point's lock (see lockMountpoint) from its check to its
// exit, and takes it before acquiring a session, so that a mount that loses
// acquires none.
//
// It tells systemd (NOTIFY_SOCKET, Type=notify) READY=1 once the mount
// serves and STOPPING=1 when it starts to end, and reopens the log (out) on
// SIGHUP.
func serveMount(ctx context.Context, o *mountOptions, token func() (string, error), log *slog.Logger, out *logOutput, summary io.Writer, ready func(session.Info, error)) (code int) {
	fail := func(code int, err error) int {
		if !out.terminal {
			log.Error("mount failed", "err", err)
		}
		ready(session.Info{}, err)
		return code
	}
	// First, so that DATAMESH_TOKEN leaves the environment before anything
	// is started; a missing token is reported after the mount point checks.
	tok, tokErr := token()
	mp, err := checkMountpoint(o.Mountpoint)
	if err != nil {
		return fail(exitMountPoint, err)
	}
	dir, err := statedir.Open(true)
	if err != nil {
		return fail(exitFailure, fmt.Errorf("state folder: %w", err))
	}
	defer dir.Close()
	lock, err := lockMountpoint(ctx, dir, mp, nil)
	if err != nil {
		if errors.Is(err, errMountPoint) {
			return fail(exitMountPoint, err)
		}
		return fail(exitFailure, err)
	}
	defer lock.Close()
	// Checked again under the lock: another mount may have finished
	// between the first check and taking the lock.
	if mp, err = checkMountpoint(mp); err != nil {
		return fail(exitMountPoint, err)
	}
	if out.stderr && out.open == nil {
		out.open = func() (*os.File, error) { return dir.OpenAppend(stateName(mp, ".log")) }
	}
	// What fusermount3 would refuse is said now, before a session exists.
	if err := checkFuseAccess(o); err != nil {
		return fail(exitMountPoint, err)
	}
	// An earlier mount's outcome must not be read as this one's.
	if err := dir.Remove(resultRecordName(mp)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fail(exitFailure, fmt.Errorf("state folder: %w", err))
	}
	var write *fs.WriteOptions
	if o.Write {
		spool, code, err := spoolDir(dir, o.SpoolDir)
		if err != nil {
			return fail(code, err)
		}
		warnSpoolSpace(spool, int64(o.SpoolSize), log)
		write = &fs.WriteOptions{
			AllowDelete: o.AllowDelete,
			SpoolDir:    spool,
			SpoolSize:   int64(o.SpoolSize),
			Uploads:     o.Uploads,
			WriteBack:   o.WriteBack,
			ValidNewID:  validNewID,
		}
	}
	if tokErr != nil {
		return fail(exitAuth, tokErr)
	}
	status, err := startStatus(&o.statusOptions, dir, mp, log)
	if err != nil {
		return fail(exitFailure, err)
	}
	defer status.close()
	cfg, err := session.ConfigFromEnv(os.Getenv)
	if err != nil {
		return fail(exitUsage, err)
	}
	cfg.OnRequest = status.observe
	cfg.Token = tok
	cfg.Service, cfg.Gateway = endpoints(o.Service, o.Gateway)
	cfg.Logger = log
	cfg.Write, cfg.AllowMultiwrite = o.Write, o.AllowMultiwrite
	// A chunk body can be as large as the cache (the cache holds one value
	// larger than itself), and no larger: a server cannot drive memory past
	// what --cache-size allows.
	cfg.MaxObjectSize = max(int64(o.CacheSize), minMaxObjectSize)
	if o.RetryBudget > 0 {
		cfg.RetryMaxElapsed = o.RetryBudget
	}
	gateway := cfg.Gateway
	cfg.OnSession = func(info session.Info) {
		rec := sessionRecord{Gateway: gateway, ID: info.ID, EndTime: info.EndTime, PID: os.Getpid()}
		if err := writeSessionRecord(dir, mp, rec); err != nil {
			log.Warn("session record not written; if this mount is killed its session stays open until it expires", "err", err)
		}
	}
	// One limit on the fetches in flight, adapted to what the gateway
	// sustains: readahead follows it, the cache's workers wait on it.
	limiter, err := flow.New(limiterConfig(o.MaxConnections, log))
	if err != nil {
		return fail(exitUsage, err)
	}
	cfg.Limiter = limiter
	// The disk tier is checked before a session exists: a refused folder
	// costs the gateway nothing.
	var disk *cache.Disk
	if o.CacheDir != "" {
		disk, err = cache.OpenDisk(cache.DiskOptions{Dir: o.CacheDir, MaxBytes: int64(o.CacheDirSize), Origin: cfg.Gateway, Logger: log,
			QueueBytes: diskQueueBytes(int64(o.CacheSize))})
		if err != nil {
			return fail(exitUsage, fmt.Errorf("--cache-dir: %w", err))
		}
		defer disk.Close() // the cache closes it; this covers a start that fails before
	}
	client, err := session.New(cfg)
	if err != nil {
		if errors.Is(err, session.ErrNoToken) {
			return fail(exitAuth, fmt.Errorf("no Datamesh token: set DATAMESH_TOKEN or pass --token-file FILE; "+
				"to try dmfs offline, run 'dmfs serve --demo' (it accepts any token), then "+
				"'DATAMESH_TOKEN=demo dmfs mount --service http://127.0.0.1:8765 %s'", mp))
		}
		return fail(exitUsage, err)
	}
	if rec, ok := leftoverSession(dir, mp, log); ok {
		closeLeftoverSession(ctx, client, gateway, dir, mp, rec, log)
	}
	info, err := client.Acquire(ctx, o.SessionDuration)
	if err != nil {
		return fail(startupCode(err), fmt.Errorf("acquiring a Datamesh session: %w", err))
	}
	// The session logs its own acquire, renewals and close, once each.
	end := mountEnd{client: client, id: info.ID, dir: dir, mp: mp, log: log,
		logPath: logLocation(o.LogFile), summary: summary}
	var finished *fs.WriteSummary // set once a --write mount has served
	defer func() {
		// A failed start keeps its own code.
		if c := end.close(finished); code == exitOK {
			code = c
		}
	}()
	catalog := &datameshCatalog{client: client, only: o.Datasources}
	if err := catalog.check(ctx); err != nil {
		return fail(startupCode(err), err)
	}
	if err := checkQueryNames(o.queryDocs, catalog.ids()); err != nil {
		return fail(exitUsage, err)
	}
	// Tables too large for memory are held there while they are served.
	tables, code, err := privateDir(dir, "tables", "", "")
	if err != nil {
		return fail(code, err)
	}

	// Keep the heap near the cache budget so peak RSS stays bounded.
	debug.SetMemoryLimit(int64(o.CacheSize) + 32<<20)
	chunks := cache.New(cache.Options{
		MaxBytes: int64(o.CacheSize),
		// A backstop only: the session bounds every request itself (the
		// read timeout between bytes, the retry budget), and a chunk that
		// keeps arriving slowly is not an error.
		FetchTimeout: cfg.RetryMaxElapsed + time.Hour,
		MissingTTL:   o.MetadataTTL,
		Logger:       log,
		// Background fetches wait on the limiter, not on a pool of their own.
		PrefetchWorkers: o.MaxConnections,
		Disk:            disk,
	})
	defer func() {
		chunks.Close()
		st := chunks.Stats()
		attrs := []any{"hits", st.Hits, "misses", st.Misses, "fetches", st.Fetches,
			"fetch_errors", st.FetchErrors, "heads", st.Heads, "prefetched", st.PrefetchStarted,
			"prefetch_dropped", st.PrefetchDropped, "evictions", st.Evictions}
		if disk != nil {
			attrs = append(attrs, "disk_hits", st.DiskHits, "disk_writes", st.DiskWrites,
				"disk_dropped", st.DiskDropped, "disk_evictions", st.DiskEvictions,
				"disk_corrupt", st.DiskCorrupt, "disk_bytes", st.DiskBytes)
		}
		log.Info("cache totals", attrs...)
	}()
	fileMode, dirMode := o.modes()
	root := fs.NewRoot(fs.Options{
		Catalog:     catalog,
		Cache:       chunks,
		Readahead:   o.Readahead,
		Window:      limiter.Limit,
		MetadataTTL: o.MetadataTTL,
		Logger:      log,
		UID:         o.UID.or(os.Getuid()),
		GID:         o.GID.or(os.Getgid()),
		FileMode:    fileMode,
		DirMode:     dirMode,
		Write:       write,
		TableDir:    tables,
		Queries:     o.queryDocs,
	})
	var server *fuse.Server
	refused, err := captureStderr(func() (err error) {
		server, err = fs.Mount(mp, root, fs.MountOptions{
			AllowOther:    o.AllowOther || o.AllowRoot, // see modes
			Debug:         o.FuseDebug,
			DirectMount:   os.Geteuid() == 0,
			NoPassthrough: !o.Passthrough,
			FsName:        fsName(cfg.Service),
			Options:       o.fuseOpts,
		})
		return err
	})
	if refused != "" {
		log.Warn("fusermount3 said: " + oneLine(refused))
	}
	if err != nil {
		// fusermount3's own words say why; go-fuse's only "exited with
		// code 256".
		why := err.Error()
		if refused != "" {
			why = refused
		}
		msg := fmt.Sprintf("mounting at %s: %s", mp, oneLine(strings.TrimSpace(why)))
		if where := logLocation(o.LogFile); where != "" {
			msg += "; log: " + where
		}
		return fail(exitMountPoint, errors.New(msg))
	}
	if err := writePidFile(dir, mp); err != nil {
		log.Warn("pid file not written; 'dmfs unmount' will not wait for the session to close", "err", err)
	} else {
		defer dir.Remove(pidFileName(mp))
	}
	if o.Write {
		// Tells `dmfs unmount` to wait for the uploads, and says the
		// process was killed if it is still pending when it is gone.
		if err := writeResultRecord(dir, mp, writeResult{PID: os.Getpid(), Log: end.logPath}); err != nil {
			log.Warn("write result record not written; 'dmfs unmount' will neither wait for uploads nor report them", "err", err)
		}
	}
	status.serve(statusParts{client: client, cache: chunks, root: root, service: cfg.Service, gateway: cfg.Gateway,
		write: o.Write, logPath: end.logPath})
	log.Info("mounted", "mountpoint", mp, "service", cfg.Service, "gateway", cfg.Gateway, "write", o.Write)
	ready(info, nil)
	if err := notifySystemd("READY=1\nSTATUS=Mounted at " + mp); err != nil {
		log.Warn("telling systemd the mount is ready (NOTIFY_SOCKET)", "err", err)
	}

	done := make(chan struct{})
	go func() {
		server.Wait()
		close(done)
	}()
	for waiting := true; waiting; {
		select {
		case <-hangups:
			if err := out.reopen(); err != nil {
				log.Info("SIGHUP: log not reopened", "reason", err)
			} else {
				log.Info("SIGHUP: log file reopened")
			}
			continue
		case <-done:
		case <-ctx.Done():
		}
		waiting = false
	}
	notifySystemd("STOPPING=1\nSTATUS=Unmounting " + mp)
	select {
	case <-done:
		log.Info("unmounted", "mountpoint", mp)
	default:
		log.Info("signal received; unmounting", "mountpoint", mp)
		if o.Write {
			log.Info("uploads finish before the session closes; further signals are ignored, SIGKILL abandons them and finalises nothing")
		}
		if err := server.Unmount(); err != nil {
			// Files are open: detach so the path is free at once; the
			// kernel drops the connection when they are closed.
			log.Warn("unmount failed; detaching lazily", "err", err)
			if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil {
				exec.Command("fusermount3", "-u", "-z", mp).Run()
			}
		}
		select {
		case <-done:
		case <-time.After(2 * time.Second):
		}
	}
	if o.Write {
		// Not ctx: a signal cancelled it, and the uploads must finish.
		sum := root.FinishWrites(context.Background())
		finished = &sum
	}
	return exitOK
}

// startupCode maps a startup failure to an exit code.
func startupCode(err error) int {
	switch {
	case errors.Is(err, iofs.ErrPermission):
		return exitAuth
	case errors.Is(err, iofs.ErrNotExist):
		return exitUsage
	default:
		return exitGateway
	}
}

// fsName is the mount's source in the mount table (findmnt's SOURCE): the
// service URL, without any user information, query or fragment.
func fsName(service string) string {
	u, err := url.Parse(service)
	if err != nil || u.Host == "" {
		return "dmfs"
	}
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: strings.TrimRight(u.Path, "/")}).String()
}

// diskQueueBytes bounds the fetched bytes waiting to be written to the disk
// tier: an eighth of the memory cache, between 16 and 64 MiB. Readahead at
// 100 ms answers in bursts (128 chunks at once); with a fixed 16 MiB, a
// cold copy of the 1 GiB demo left 10 of 2739 chunks off the disk. Queued
// values are mostly the memory cache's own (shared, not copied); the bound
// caps what eviction could leave to the queue alone.
func diskQueueBytes(cacheSize int64) int64 {
	return min(max(cacheSize/8, 16<<20), 64<<20)
}

// startConnections is where the mount's limit on fetches in flight starts:
// the width DESIGN.md takes as a gateway's practical limit. From flow's
// default of 16 (a probe at 8, then doubling once per round trip) a cold
// copy of large chunks spent three round trips reaching it: at 100 ms,
// 1.04-1.06 s against 0.89-0.95 s from 64 (100 chunks of 4 MiB). A gateway
// that cannot take 64 answers 429 or 503 or slows down, and the limit backs
// off from there.
const startConnections = 64

// limiterConfig is the mount's flow configuration for --max-connections.
func limiterConfig(maxConnections int, log *slog.Logger) flow.Config {
	return flow.Config{Max: maxConnections, Initial: min(startConnections, maxConnections), Logger: log}
}
