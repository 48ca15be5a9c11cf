package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
)

// helperName is the name mount(8) runs for `mount -t fuse.dmfs` and fstab
// lines of type fuse.dmfs: /sbin/mount.fuse.dmfs, a symlink to dmfs.
const helperName = "mount.fuse.dmfs"

// isHelperName reports whether dmfs was run under the helper's name.
func isHelperName(argv0 string) bool {
	b := filepath.Base(argv0)
	return b == helperName || b == "mount.dmfs"
}

// isHelperSource reports whether s is a mount source dmfs takes: "dmfs"
// (which mount(8) turns into a path when a file of that name is in its
// working directory), or the Datamesh service URL.
func isHelperSource(s string) bool {
	return filepath.Base(s) == "dmfs" || strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")
}

const helperUsage = `Usage: mount.fuse.dmfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]

The mount helper: mount(8) runs it for 'mount -t fuse.dmfs' and fstab lines of
type fuse.dmfs. SOURCE is 'dmfs', or the Datamesh service URL. OPTIONS are
'dmfs mount' flags in underscore form (token_file=F, service=URL,
cache_size=2GiB, allow_other, write, ...); see 'dmfs help mount'. It returns
once the mount serves, like 'dmfs mount'.
`

// helperCall is a mount helper's command line as mount(8) gives it.
type helperCall struct {
	mountArgs             []string // `dmfs mount` arguments: -o lists, --service, then -- MOUNTPOINT
	fake, verbose, sloppy bool
	help                  bool
}

// parseHelperArgs reads `SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS] [-t TYPE]`:
// -f (fake) checks the options and mounts nothing, -v prints the line a
// mount prints, -s (sloppy) skips unknown options, -n (no mtab) changes
// nothing. A source that is a URL is the service.
func parseHelperArgs(args []string) (helperCall, error) {
	var c helperCall
	var pos, opts []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-h" || a == "--help":
			c.help = true
			return c, nil
		case a == "-o" || a == "-t":
			if i+1 >= len(args) {
				return c, fmt.Errorf("%s needs a value", a)
			}
			i++
			if a == "-o" {
				opts = append(opts, args[i])
			}
		case strings.HasPrefix(a, "-o"):
			opts = append(opts, a[2:])
		case strings.HasPrefix(a, "-t"):
		case strings.HasPrefix(a, "-") && len(a) > 1:
			for _, f := range a[1:] {
				switch f {
				case 'f':
					c.fake = true
				case 'v':
					c.verbose = true
				case 's':
					c.sloppy = true
				case 'n':
				default:
					return c, fmt.Errorf("mount helper option -%c is not supported", f)
				}
			}
		default:
			pos = append(pos, a)
		}
	}
	if len(pos) != 2 {
		return c, fmt.Errorf("the mount helper wants SOURCE MOUNTPOINT, got %d arguments", len(pos))
	}
	source, mp := pos[0], pos[1]
	if !isHelperSource(source) {
		return c, fmt.Errorf("source %q: give 'dmfs' or the Datamesh service URL", source)
	}
	if strings.HasPrefix(source, "http://") || strings.HasPrefix(source, "https://") {
		c.mountArgs = append(c.mountArgs, "--service", source)
	}
	for _, o := range opts {
		c.mountArgs = append(c.mountArgs, "-o", o)
	}
	c.mountArgs = append(c.mountArgs, "--", mp)
	return c, nil
}

// runHelper runs dmfs as a mount helper: mounted as `dmfs mount -o
// OPTIONS MOUNTPOINT` would be (in the background), silent on success
// unless -v, as mount(8) is.
func runHelper(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, err := parseHelperArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "dmfs mount: %v\n%s", err, helperUsage)
		return exitUsage
	}
	if c.help {
		fmt.Fprint(stdout, helperUsage)
		return exitOK
	}
	o, flags, code, done := parseMount(c.mountArgs, stdout, stderr, c.sloppy)
	if done || c.fake {
		return code
	}
	if !c.verbose {
		stdout = io.Discard
	}
	return startMount(ctx, o, flags, stdout, stderr)
}
