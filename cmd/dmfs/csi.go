package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/oceanum-dmfs/dmfs/csi"
)

// defaultCSIStateDir is where `dmfs csi` keeps its records and its mounts'
// state: on the node, so that a restarted plugin finds them.
const defaultCSIStateDir = "/var/lib/dmfs-csi"

// runCSI runs `dmfs csi`, the Kubernetes CSI node plugin (package csi).
func runCSI(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	flags := pflag.NewFlagSet("dmfs csi", pflag.ContinueOnError)
	flags.SetOutput(stderr)
	endpoint := flags.String("endpoint", os.Getenv("CSI_ENDPOINT"), "CSI socket, unix:///path/csi.sock (env CSI_ENDPOINT)")
	nodeID := flags.String("node-id", os.Getenv("KUBE_NODE_NAME"), "this node's name (env KUBE_NODE_NAME)")
	driver := flags.String("driver-name", csi.DefaultDriverName, "CSI driver name, as in the CSIDriver object")
	stateDir := flags.String("state-dir", defaultCSIStateDir,
		"folder (yours, not writable by group or others; created 0700) for volume records and the mounts' state")
	logLevel := flags.String("log-level", "info", "log level of the plugin and of each mount: debug, info, warn, error")
	flags.Usage = func() {
		fmt.Fprintf(stdout, "Usage: dmfs csi --endpoint unix:///csi/csi.sock --node-id NODE [flags]\n\n"+
			"Serves the CSI Identity and Node services: each published volume is a 'dmfs mount' process with\n"+
			"its own session, its token from the NodePublishVolume secret %q. See README.md, \"Kubernetes\".\n\nFlags:\n%s",
			csi.TokenKey, flags.FlagUsages())
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "dmfs csi: %v\nRun 'dmfs csi --help' for usage.\n", err)
		return exitUsage
	}
	if flags.NArg() != 0 || *endpoint == "" || *nodeID == "" {
		fmt.Fprintln(stderr, "dmfs csi: --endpoint and --node-id are required, and nothing else\nRun 'dmfs csi --help' for usage.")
		return exitUsage
	}
	log, err := newLogger(*logLevel, "text", stderr)
	if err != nil {
		fmt.Fprintf(stderr, "dmfs csi: %v\n", err)
		return exitUsage
	}
	dir, err := filepath.Abs(*stateDir)
	if err != nil {
		fmt.Fprintf(stderr, "dmfs csi: --state-dir: %v\n", err)
		return exitUsage
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "dmfs csi: %v\n", err)
		return exitFailure
	}
	// The mounts keep their pid files, session records and locks beside
	// the plugin's records: a remount after a crash then finds and closes
	// the session the dead process left open.
	os.Setenv("XDG_RUNTIME_DIR", dir)
	d, err := csi.New(ctx, csi.Options{
		DriverName:    *driver,
		NodeID:        *nodeID,
		Version:       version,
		StateDir:      dir,
		MountLogLevel: *logLevel,
		Launch:        mountLauncher(exe),
		Logger:        log,
	})
	if err != nil {
		fmt.Fprintf(stderr, "dmfs csi: %v\n", err)
		return exitFailure
	}
	defer d.Close()
	if err := d.Serve(ctx, *endpoint); err != nil {
		fmt.Fprintf(stderr, "dmfs csi: %v\n", err)
		return exitFailure
	}
	return exitOK
}

// csiStopWait bounds the wait for a mount told to stop during its start.
const csiStopWait = 10 * time.Second

// mountLauncher starts `dmfs mount` the way `dmfs mount` starts its own
// background process (startDaemon): detached in its own session, so that it
// outlives the plugin, with the token on a pipe and readiness reported on
// another.
func mountLauncher(exe string) csi.Launcher {
	return func(ctx context.Context, flags []string, target, token string, logf *os.File) (*exec.Cmd, error) {
		logStart, _ := logf.Seek(0, io.SeekEnd)
		args := append(append([]string{"mount"}, flags...), "--", target)
		cmd, ready, err := startDaemon(exe, args, token, logf)
		if err != nil {
			return nil, err
		}
		defer ready.Close()
		got := make(chan string, 1)
		go func() {
			line, _ := bufio.NewReader(ready).ReadString('\n')
			got <- strings.TrimSpace(line)
		}()
		select {
		case line := <-got:
			if _, ok := readyLine(line); ok {
				return cmd, nil
			}
			cmd.Wait()
			msg := strings.TrimPrefix(line, "error ")
			if line == "" { // it ended before it could report: the command line
				msg = logError(logf, logStart)
			}
			return nil, &csi.MountError{ExitCode: cmd.ProcessState.ExitCode(), Message: msg}
		case <-ctx.Done():
			cmd.Process.Signal(syscall.SIGTERM)
			exited := make(chan struct{})
			go func() {
				cmd.Wait()
				close(exited)
			}()
			select {
			case <-exited:
			case <-time.After(csiStopWait):
				cmd.Process.Kill()
				<-exited
			}
			return nil, ctx.Err()
		}
	}
}

// logError returns what the mount wrote to its log after offset that
// names its error (its first "dmfs mount: ..." line), when it failed before
// it could report one: a bad flag, from a volume attribute. The log is
// opened write-only; /proc/self/fd reopens that same file for reading.
func logError(f *os.File, offset int64) string {
	const max = 4 << 10
	r, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil {
		return "it ended before it was ready"
	}
	defer r.Close()
	b, _ := io.ReadAll(io.LimitReader(io.NewSectionReader(r, offset, max), max))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for _, l := range lines {
		if msg, ok := strings.CutPrefix(strings.TrimSpace(l), "dmfs mount: "); ok {
			return msg
		}
	}
	if last := strings.TrimSpace(lines[len(lines)-1]); last != "" {
		return last
	}
	return "it ended before it was ready"
}
