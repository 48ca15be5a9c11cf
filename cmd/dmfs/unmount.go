package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/oceanum-dmfs/dmfs/internal/mountinfo"
	"github.com/oceanum-dmfs/dmfs/internal/statedir"
	"github.com/oceanum-dmfs/dmfs/session"
)

// unmountWait bounds how long `dmfs unmount` waits for a read-only mount's
// process to close its session and exit. A --write mount's is waited for
// without a bound: it finishes its uploads first.
const unmountWait = 15 * time.Second

// lazyGrace is how long `dmfs unmount --lazy` waits for the mount's process
// to end: at once when nothing is open, never while files are.
const lazyGrace = time.Second

// runUnmount runs `dmfs unmount`: it unmounts, then waits until the serving
// process has closed its session and exited; for a --write mount, until its
// uploads are done, and it reports whether they were finalised.
func runUnmount(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	flags := pflag.NewFlagSet("dmfs unmount", pflag.ContinueOnError)
	flags.SetOutput(stderr)
	lazy := flags.Bool("lazy", false, "detach now even if files are open; the mount goes away when they are closed")
	// Only to close the session of a mount that was killed: its record says
	// which gateway it was on, but the token goes only to the one set here.
	var lo leftoverOptions
	flags.StringVar(&lo.TokenFile, "token-file", os.Getenv("DATAMESH_TOKEN_FILE"),
		"read the Datamesh token from this file (env DATAMESH_TOKEN_FILE; else env DATAMESH_TOKEN), to close the session of a killed mount")
	flags.StringVar(&lo.Service, "service", os.Getenv(session.EnvService),
		"Datamesh service URL the mount used (env DATAMESH_SERVICE; default https://datamesh.oceanum.io)")
	flags.StringVar(&lo.Gateway, "gateway", os.Getenv(session.EnvGateway),
		"Datamesh gateway URL the mount used (env DATAMESH_GATEWAY; default: the service URL)")
	flags.Usage = func() {
		fmt.Fprintf(stdout, "Usage: dmfs unmount [flags] MOUNTPOINT\n\nUnmounts a dmfs mount and returns once its Datamesh session is closed.\n"+
			"For a --write mount it first waits for every upload, and exits 8 unless the writes were finalised.\n"+
			"With --lazy it returns at once; a mount with files open ends, and closes its session, when they are closed.\n"+
			"The session of a mount that was killed is closed here when it is on the gateway set by --service/--gateway,\n"+
			"with the token from --token-file, DATAMESH_TOKEN_FILE or DATAMESH_TOKEN, as for 'dmfs mount'.\n\nFlags:\n%s\n%s",
			flags.FlagUsages(), exitCodesHelp)
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "dmfs unmount: %v\nRun 'dmfs unmount --help' for usage.\n", err)
		return exitUsage
	}
	if flags.NArg() != 1 {
		fmt.Fprintln(stderr, "dmfs unmount: expected exactly one MOUNTPOINT\nRun 'dmfs unmount --help' for usage.")
		return exitUsage
	}
	mp, err := filepath.Abs(flags.Arg(0))
	if err != nil {
		fmt.Fprintf(stderr, "dmfs unmount: %v\n", err)
		return exitUsage
	}
	// Not created here: no folder means no pid file and no record. One that
	// is refused is not read, but the unmount itself needs none of it.
	dir, err := statedir.Open(false)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(stderr, "dmfs unmount: warning: state folder not used: %v\n", err)
		}
		dir = nil
	} else {
		defer dir.Close()
	}
	m, ok, err := mountinfo.Find(mp)
	if err != nil {
		fmt.Fprintf(stderr, "dmfs unmount: reading the mount table: %v\n", err)
		return exitFailure
	}
	if !ok {
		fmt.Fprintf(stderr, "dmfs unmount: %s is not mounted\n", mp)
		closeLeftoverAfterUnmount(ctx, dir, mp, &lo, stderr) // unmounted by hand after its process was killed
		if code, reported := reportUnmountedWrites(ctx, dir, mp, &lo, stderr); reported {
			return code
		}
		return exitNotMounted
	}
	if !isDmfsMount(m) {
		fmt.Fprintf(stderr, "dmfs unmount: %s is not a dmfs mount (it is %s)\n", mp, m.FSType)
		return exitNotMounted
	}
	pid, hasPid := 0, false
	if dir != nil {
		var err error
		pid, err = readPidFile(dir, mp)
		hasPid = err == nil
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(stderr, "dmfs unmount: warning: pid file ignored: %v\n", err)
		}
	}
	// A --write mount's process keeps a result record from the time it
	// serves: pending until it has finished its uploads, then its outcome.
	var pending writeResult
	writing := false
	if hasPid {
		pending, writing = readResultRecord(dir, mp, unmountWarning(stderr))
		writing = writing && pending.PID == pid
	}
	if err := unmount(mp, *lazy); err != nil {
		if errors.Is(err, syscall.EBUSY) {
			fmt.Fprintf(stderr, "dmfs unmount: %s is busy: files or directories under it are open "+
				"(see 'fuser -vm %s'); close them, or use 'dmfs unmount --lazy'\n", mp, mp)
			return exitBusy
		}
		fmt.Fprintf(stderr, "dmfs unmount: %v\n", err)
		return exitFailure
	}
	if !hasPid {
		closeLeftoverAfterUnmount(ctx, dir, mp, &lo, stderr)
		return exitOK
	}
	if *lazy && !waitExit(ctx, pid, lazyGrace, nil) {
		// Files are open (the kernel keeps the mount's connection, and its
		// process serves them, until they are closed), or uploads go on.
		msg := fmt.Sprintf("dmfs unmount: detached %s; its process (pid %d) still serves the files open under it "+
			"and closes the session when the last one is closed", mp, pid)
		if writing {
			msg = fmt.Sprintf("dmfs unmount: detached %s; its process (pid %d) ends once the files open under it are closed "+
				"and its uploads are done: run 'dmfs unmount %s' again to wait for that and see whether the writes were finalised", mp, pid, mp)
		}
		fmt.Fprintln(stderr, msg)
		return exitOK
	}
	if writing {
		return unmountWrites(ctx, dir, mp, pending, &lo, stderr)
	}
	if !waitExit(ctx, pid, unmountWait, nil) {
		if ctx.Err() == nil {
			fmt.Fprintf(stderr, "dmfs unmount: unmounted, but process %d has not exited after %s\n", pid, unmountWait)
		}
		return exitFailure
	}
	closeLeftoverAfterUnmount(ctx, dir, mp, &lo, stderr)
	return exitOK
}

// leftoverOptions say where and with what token `dmfs unmount` may close
// the session of a killed mount.
type leftoverOptions struct {
	TokenFile, Service, Gateway string
}

// closeLeftoverAfterUnmount closes the session of a mount whose process was
// killed (a stale mount just removed), with the token from the environment
// or --token-file, at the gateway configured now; without a token it says
// until when the session stays open.
func closeLeftoverAfterUnmount(ctx context.Context, dir *statedir.Dir, mp string, lo *leftoverOptions, stderr io.Writer) {
	if dir == nil {
		return
	}
	log := slog.New(&terminalHandler{w: stderr, prefix: "dmfs unmount: "})
	rec, ok := leftoverSession(dir, mp, log)
	if !ok {
		return
	}
	_, gateway := endpoints(lo.Service, lo.Gateway)
	if rec.Gateway != gateway {
		fmt.Fprintf(stderr, "dmfs unmount: %s; if that mount used --service or --gateway, give 'dmfs unmount' the same\n",
			otherGateway(rec, gateway))
		return
	}
	tok, err := readToken(lo.TokenFile)
	if err == nil {
		var cfg session.Config
		if cfg, err = session.ConfigFromEnv(os.Getenv); err == nil {
			cfg.Token = tok
			cfg.Service, cfg.Gateway = endpoints(lo.Service, lo.Gateway)
			var client *session.Client
			if client, err = session.New(cfg); err == nil {
				closeLeftoverSession(ctx, client, gateway, dir, mp, rec, log)
				return
			}
		}
	}
	msg := fmt.Sprintf("dmfs unmount: the mount's process was killed and left session %q open until %s",
		rec.ID, rec.EndTime.Format(time.RFC3339))
	if errors.Is(err, session.ErrNoToken) {
		msg += "; with DATAMESH_TOKEN set (or --token-file), 'dmfs unmount' or the next 'dmfs mount' here closes it"
	} else {
		msg += ": " + err.Error()
	}
	fmt.Fprintln(stderr, msg)
}

// unmountWarning prints a warning of `dmfs unmount`.
func unmountWarning(stderr io.Writer) func(string) {
	return func(s string) { fmt.Fprintf(stderr, "dmfs unmount: warning: %s\n", s) }
}

// unmount detaches the filesystem: umount2 as root, fusermount3 otherwise.
func unmount(mp string, lazy bool) error {
	if os.Geteuid() == 0 {
		flags := 0
		if lazy {
			flags = syscall.MNT_DETACH
		}
		return syscall.Unmount(mp, flags)
	}
	args := []string{"-u"}
	if lazy {
		args = append(args, "-z")
	}
	out, err := exec.Command("fusermount3", append(args, mp)...).CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if strings.Contains(msg, "busy") {
			return fmt.Errorf("%s: %w", msg, syscall.EBUSY)
		}
		return fmt.Errorf("fusermount3 -u %s: %v: %s", mp, err, msg)
	}
	return nil
}

// processAlive reports whether pid still runs (and is not a zombie).
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// Field 3, after the parenthesised command name, is the state.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}
