package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"os"
	"os/exec"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/oceanum-dmfs/dmfs/cache"
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

// startupTimeout bounds how long `dmfs mount` waits for the background mount.
const startupTimeout = 2 * time.Minute

// runMount runs `dmfs mount`.
func runMount(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o mountOptions
	flags := pflag.NewFlagSet("dmfs mount", pflag.ContinueOnError)
	flags.SetOutput(stderr)
	o.AddFlags(flags, os.Getenv)
	flags.Usage = func() {
		fmt.Fprintf(stderr, "Usage: dmfs mount [flags] MOUNTPOINT\n\nMounts the Datamesh datasources the token can see, one directory per datasource:\n"+
			"read-only, or read-write with --write (the session is finalised at unmount only if every upload succeeded).\n"+
			"Returns once the mount is ready (or use --foreground).\n\nFlags:\n%s", flags.FlagUsages())
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "dmfs mount: %v\nRun 'dmfs mount --help' for usage.\n", err)
		return exitUsage
	}
	if flags.NArg() != 1 {
		fmt.Fprintln(stderr, "dmfs mount: expected exactly one MOUNTPOINT")
		flags.Usage()
		return exitUsage
	}
	o.Mountpoint = flags.Arg(0)
	if err := o.checkWrite(flags); err != nil {
		fmt.Fprintf(stderr, "dmfs mount: %v\n", err)
		return exitUsage
	}
	if err := o.statusOptions.check(); err != nil {
		fmt.Fprintf(stderr, "dmfs mount: %v\n", err)
		return exitUsage
	}
	queries, err := o.checkQueries()
	if err != nil {
		fmt.Fprintf(stderr, "dmfs mount: %v\n", err)
		return exitUsage
	}
	o.queryDocs = queries
	if fd := os.Getenv(readyFDEnv); fd != "" {
		return mountDaemon(ctx, &o, fd)
	}
	if o.Foreground {
		return mountForeground(ctx, &o, stderr)
	}
	return mountBackground(ctx, &o, flags, stderr)
}

// mountForeground serves in this process, logging to stderr (or --log-file).
func mountForeground(ctx context.Context, o *mountOptions, stderr io.Writer) int {
	logw := stderr
	if o.LogFile != "" {
		f, err := openLogFile(o.LogFile)
		if err != nil {
			fmt.Fprintf(stderr, "dmfs mount: %v\n", err)
			return exitUsage
		}
		defer f.Close()
		logw = f
	}
	log, err := newLogger(o.LogLevel, logw)
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
	return serveMount(ctx, o, token, log, summary, func(err error) {
		if err != nil {
			fmt.Fprintf(stderr, "dmfs mount: %v\n", err)
		}
	})
}

// mountBackground re-executes dmfs detached from the terminal and waits until
// it reports the mount ready or fails, like gcsfuse and mountpoint-s3.
func mountBackground(ctx context.Context, o *mountOptions, flags *pflag.FlagSet, stderr io.Writer) int {
	// Check what can be checked here, so the common mistakes need no child.
	mp, err := checkMountpoint(o.Mountpoint)
	if err != nil {
		fmt.Fprintf(stderr, "dmfs mount: %v\n", err)
		return exitMountPoint
	}
	if _, err := newLogger(o.LogLevel, io.Discard); err != nil {
		fmt.Fprintf(stderr, "dmfs mount: %v\n", err)
		return exitUsage
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
	} else {
		logf, err = openLogFile(logFile)
	}
	if err != nil {
		fmt.Fprintf(stderr, "dmfs mount: log file: %v\n", err)
		return exitFailure
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
	// The child gets the flags as parsed and the absolute mount point, so
	// that it does not depend on this process's working directory. It logs
	// to its stderr, the log file opened (and checked) here.
	childArgs := append(append([]string{"mount"}, childFlags(flags)...), "--", mp)
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
	timer := time.NewTimer(startupTimeout)
	defer timer.Stop()
	select {
	case r := <-got:
		line := strings.TrimSpace(r.line)
		if line == "ready" {
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
		fmt.Fprintf(stderr, "dmfs mount: the mount was not ready after %s; see %s\n", startupTimeout, logFile)
		return exitFailure
	}
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
// inherited from elsewhere.
func daemonEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case session.EnvToken, readyFDEnv, tokenFDEnv:
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

// childFlags renders the flags set on the command line (except --log-file,
// which the parent decides) so that a re-executed dmfs parses the same.
func childFlags(flags *pflag.FlagSet) []string {
	var out []string
	flags.Visit(func(f *pflag.Flag) {
		if f.Name == "log-file" {
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
// the inherited file descriptor.
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
	// stderr is the log file, opened and checked by the parent.
	log, err := newLogger(o.LogLevel, os.Stderr)
	if err != nil {
		fmt.Fprintf(ready, "error %v\n", err)
		return exitUsage
	}
	return serveMount(ctx, o, token, log, nil, func(err error) {
		if err != nil {
			fmt.Fprintf(ready, "error %s\n", oneLine(err.Error()))
		} else {
			fmt.Fprintln(ready, "ready")
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
func serveMount(ctx context.Context, o *mountOptions, token func() (string, error), log *slog.Logger, summary io.Writer, ready func(error)) (code int) {
	fail := func(code int, err error) int {
		log.Error("mount failed", "err", err)
		ready(err)
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
	client, err := session.New(cfg)
	if err != nil {
		if errors.Is(err, session.ErrNoToken) {
			return fail(exitAuth, errors.New("no Datamesh token: set DATAMESH_TOKEN or pass --token-file FILE; "+
				"to try dmfs offline, run 'dmfs serve --demo' and mount with --service http://127.0.0.1:8765"))
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
	log.Info("session acquired", "session", info.ID, "until", info.EndTime, "write", o.Write)
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
	})
	defer func() {
		chunks.Close()
		st := chunks.Stats()
		log.Info("cache totals", "hits", st.Hits, "misses", st.Misses, "fetches", st.Fetches,
			"fetch_errors", st.FetchErrors, "heads", st.Heads, "prefetched", st.PrefetchStarted,
			"prefetch_dropped", st.PrefetchDropped, "evictions", st.Evictions)
	}()
	root := fs.NewRoot(fs.Options{
		Catalog:     catalog,
		Cache:       chunks,
		Readahead:   o.Readahead,
		MetadataTTL: o.MetadataTTL,
		Logger:      log,
		UID:         uint32(os.Getuid()),
		GID:         uint32(os.Getgid()),
		Write:       write,
		TableDir:    tables,
		Queries:     o.queryDocs,
	})
	server, err := fs.Mount(mp, root, fs.MountOptions{
		AllowOther:  o.AllowOther,
		Debug:       o.FuseDebug,
		DirectMount: os.Geteuid() == 0,
	})
	if err != nil {
		return fail(exitMountPoint, fmt.Errorf("mounting at %s: %w", mp, err))
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
	ready(nil)

	done := make(chan struct{})
	go func() {
		server.Wait()
		close(done)
	}()
	select {
	case <-done:
		log.Info("unmounted", "mountpoint", mp)
	case <-ctx.Done():
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
