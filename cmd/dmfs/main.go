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

// Exit codes, documented in README.md.
const (
	exitOK         = 0 // success
	exitFailure    = 1 // any other failure
	exitUsage      = 2 // bad command line
	exitAuth       = 3 // no token, or the token was refused
	exitGateway    = 4 // the Datamesh service or gateway could not be reached
	exitMountPoint = 5 // the mount point is missing, not a directory, not empty, or already mounted
	exitBusy       = 6 // unmount: files are still open under the mount
	exitNotMounted = 7 // unmount: the path is not a dmfs mount
	exitWrite      = 8 // writes were not finalised: an upload failed, a file was never uploaded, or the finalise failed
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `dmfs mounts Oceanum Datamesh datasources as a filesystem of Zarr stores.

Usage:
  dmfs mount [flags] MOUNTPOINT     mount the datasources the token can see (read-only; --write to write)
  dmfs unmount [--lazy] MOUNTPOINT  unmount, wait for uploads, and close the session
  dmfs ls [--search TEXT] [--json]  list the catalog: id, name, time range, container
  dmfs serve [flags] DIR            run a local Datamesh gateway over a folder of Zarr stores
  dmfs serve --demo [DIR]           ... over generated sample datasources
  dmfs csi [flags]                  run the Kubernetes CSI node plugin (--endpoint, --node-id)
  dmfs version                      print the version

The token comes from DATAMESH_TOKEN or --token-file, never from the command line.
Run 'dmfs COMMAND --help' for the flags of a command.
`

// run dispatches a subcommand and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "mount":
		return runMount(ctx, args[1:], stdout, stderr)
	case "unmount", "umount":
		return runUnmount(ctx, args[1:], stdout, stderr)
	case "serve":
		return runServe(ctx, args[1:], stdout, stderr)
	case "ls":
		return runLs(ctx, args[1:], stdout, stderr)
	case "csi":
		return runCSI(ctx, args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintf(stdout, "dmfs %s\n", version)
		return exitOK
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "dmfs: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
}
