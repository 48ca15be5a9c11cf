// Command dmfs mounts Oceanum Datamesh datasources as a filesystem of Zarr
// stores (read-only, or read-write with --write), and serves a local
// Datamesh gateway for offline use.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes, documented in README.md and in exitCodesHelp.
const (
	exitOK         = 0 // success
	exitFailure    = 1 // any other failure
	exitUsage      = 2 // bad command line
	exitAuth       = 3 // no token, or the token was refused
	exitGateway    = 4 // the Datamesh service or gateway could not be reached
	exitMountPoint = 5 // the mount point is unusable, or the mount itself failed
	exitBusy       = 6 // unmount: files are still open under the mount
	exitNotMounted = 7 // unmount: the path is not a dmfs mount
	exitWrite      = 8 // writes were not finalised: an upload failed, a file was never uploaded, or the finalise failed
)

// exitCodesHelp lists the exit codes in help texts.
const exitCodesHelp = `Exit codes:
  0  success
  1  any other failure (an unsafe state folder, ...; see the message, or the log it names)
  2  bad command line: unknown flag or mount option, a value out of range, an unknown --datasource
  3  no token, or the token was refused
  4  the Datamesh service or gateway could not be reached
  5  the mount point is missing, not an empty directory or already mounted, or the mount failed
     (no access to /dev/fuse, allow_other without user_allow_other, fusermount3 refused)
  6  unmount: files are still open under the mount (see 'fuser -vm MOUNTPOINT', or use --lazy)
  7  unmount: the path is not a dmfs mount
  8  --write mounts: writes were not finalised (an upload failed, or the finalise failed)
`

// version is set at build time with -ldflags "-X main.version=..."; "dev"
// means: the module version from the build information.
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	hangups = hup
	var code int
	if isHelperName(os.Args[0]) {
		code = runHelper(ctx, os.Args[1:], os.Stdout, os.Stderr)
	} else {
		code = run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	}
	stop()
	os.Exit(code)
}

const usage = `dmfs mounts Oceanum Datamesh datasources as a filesystem of Zarr stores.

Usage:
  dmfs mount [flags] MOUNTPOINT     mount the datasources the token can see (read-only; --write to write)
  dmfs unmount [--lazy] MOUNTPOINT  unmount, wait for uploads, and close the session
  dmfs ls [--search TEXT] [--json]  list the catalog: id, name, time range, container
  dmfs status [--json] [MOUNTPOINT] show your mounts: session, log, live cache and request figures
  dmfs serve [flags] DIR            run a local Datamesh gateway over a folder of Zarr stores
  dmfs serve --demo [DIR]           ... over generated sample datasources
  dmfs csi [flags]                  run the Kubernetes CSI node plugin (--endpoint, --node-id)
  dmfs version                      print the version, commit and Go version
  dmfs help COMMAND                 the flags of a command (also 'dmfs COMMAND --help')

  mount -t fuse.dmfs dmfs MOUNTPOINT -o OPTIONS, and fstab, run dmfs as the mount helper
  /sbin/mount.fuse.dmfs (a symlink to dmfs); see 'dmfs help mount' for the options.

The token comes from DATAMESH_TOKEN or --token-file, never from the command line.

` + exitCodesHelp

// commands are the subcommands 'dmfs help COMMAND' knows.
var commands = map[string]func(context.Context, []string, io.Writer, io.Writer) int{
	"mount":   runMount,
	"unmount": runUnmount,
	"umount":  runUnmount,
	"serve":   runServe,
	"ls":      runLs,
	"status":  runStatus,
	"csi":     runCSI,
	"version": runVersion,
}

// run dispatches a subcommand and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	if cmd, ok := commands[args[0]]; ok {
		return cmd(ctx, args[1:], stdout, stderr)
	}
	switch args[0] {
	case "--version":
		return runVersion(ctx, nil, stdout, stderr)
	case "help", "-h", "--help":
		if len(args) > 1 && args[0] == "help" {
			cmd, ok := commands[args[1]]
			if !ok {
				fmt.Fprintf(stderr, "dmfs help: unknown command %q\n\n%s", args[1], usage)
				return exitUsage
			}
			return cmd(ctx, []string{"--help"}, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	// mount.fuse3 runs the helper of type fuse.dmfs as 'dmfs SOURCE
	// MOUNTPOINT -o OPTIONS' when there is no /sbin/mount.fuse.dmfs.
	if len(args) >= 2 && isHelperSource(args[0]) {
		return runHelper(ctx, args, stdout, stderr)
	}
	fmt.Fprintf(stderr, "dmfs: unknown command %q\n\n%s", args[0], usage)
	return exitUsage
}

// runVersion runs `dmfs version`.
func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		if args[0] == "-h" || args[0] == "--help" {
			fmt.Fprint(stdout, "Usage: dmfs version\n\nPrints the version of dmfs, the commit it was built from and the Go that built it.\n")
			return exitOK
		}
		fmt.Fprintf(stderr, "dmfs version: takes no arguments\n")
		return exitUsage
	}
	fmt.Fprint(stdout, versionText())
	return exitOK
}
