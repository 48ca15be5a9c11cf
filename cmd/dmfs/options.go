package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/oceanum-dmfs/dmfs/internal/bytesize"
	"github.com/oceanum-dmfs/dmfs/internal/statedir"
	"github.com/oceanum-dmfs/dmfs/session"
)

// mountOptions holds every `dmfs mount` setting; flags fall back to the
// environment names the official Datamesh clients use.
type mountOptions struct {
	TokenFile       string
	Service         string
	Gateway         string
	SessionDuration time.Duration
	Datasources     []string
	CacheSize       byteSize
	Readahead       int
	MetadataTTL     time.Duration
	RetryBudget     time.Duration
	AllowOther      bool
	LogLevel        string
	LogFile         string
	FuseDebug       bool
	Foreground      bool
	Mountpoint      string
	// Queries are --query NAME=FILE; queryDocs the documents read.
	Queries   []string
	queryDocs map[string][]byte

	// The write flags (DESIGN §3 "Writing"); all but Write need it.
	Write           bool
	AllowDelete     bool
	AllowMultiwrite bool
	SpoolSize       byteSize
	SpoolDir        string // "": the "spool" folder in the state folder
	WriteBack       time.Duration
	Uploads         int

	statusOptions // --metrics-addr (status.go)
}

// writeOnlyFlags need --write: given alone they would silently do nothing.
var writeOnlyFlags = []string{"allow-delete", "allow-multiwrite", "write-spool-size", "spool-dir", "write-back", "uploads"}

// AddFlags declares the flags, with defaults taken from the environment.
func (o *mountOptions) AddFlags(fs *pflag.FlagSet, getenv func(string) string) {
	o.CacheSize = 1 << 30
	fs.StringVar(&o.TokenFile, "token-file", getenv("DATAMESH_TOKEN_FILE"),
		"read the Datamesh token from this file (env DATAMESH_TOKEN_FILE; else env DATAMESH_TOKEN)")
	fs.StringVar(&o.Service, "service", getenv("DATAMESH_SERVICE"),
		"Datamesh service URL (env DATAMESH_SERVICE; default https://datamesh.oceanum.io)")
	fs.StringVar(&o.Gateway, "gateway", getenv("DATAMESH_GATEWAY"),
		"Datamesh gateway URL for sessions and zarr data (env DATAMESH_GATEWAY; default: the service URL)")
	fs.DurationVar(&o.SessionDuration, "session-duration", time.Hour,
		"length of the Datamesh session; it is renewed before it ends for as long as the mount lives")
	fs.StringArrayVar(&o.Datasources, "datasource", nil,
		"mount only this datasource id (repeatable; default: every datasource in the catalog)")
	fs.Var(&o.CacheSize, "cache-size", "memory for fetched chunks, e.g. 512MiB, 2GiB")
	fs.IntVar(&o.Readahead, "readahead", 32,
		"chunks fetched ahead of a reader that reads an array in key order (0 disables)")
	fs.DurationVar(&o.MetadataTTL, "metadata-ttl", 5*time.Minute,
		"how long the catalog, store metadata and chunk existence are trusted before being fetched again")
	fs.DurationVar(&o.RetryBudget, "retry-budget", session.DefaultRetryMaxElapsed,
		"how long a request waits out a gateway that is down or restarting (502/503/504, refused connections) before it fails with EIO")
	fs.BoolVar(&o.AllowOther, "allow-other", false,
		"let other users read the mount (needs user_allow_other in /etc/fuse.conf when not root)")
	fs.StringVar(&o.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&o.LogFile, "log-file", "",
		"write logs to this file (default: stderr with --foreground, else a file beside the pid file)")
	fs.BoolVar(&o.FuseDebug, "fuse-debug", false, "log every FUSE operation (very verbose)")
	fs.BoolVarP(&o.Foreground, "foreground", "f", false,
		"stay attached to the terminal and log to stderr, instead of returning once the mount is ready")
	fs.StringArrayVar(&o.Queries, "query", nil,
		"mount the OceanQL query (JSON) in FILE at NAME, as NAME=FILE (repeatable)")

	o.SpoolSize = 4 << 30
	fs.BoolVar(&o.Write, "write", false,
		"mount read-write: new and changed files are uploaded, and the session is finalised at unmount only if every upload succeeded")
	fs.BoolVar(&o.AllowDelete, "allow-delete", false,
		"with --write: let rm and rmdir delete keys and datasources on Datamesh")
	fs.BoolVar(&o.AllowMultiwrite, "allow-multiwrite", false,
		"with --write: let other sessions that allow it write to the datasources this mount writes to")
	fs.Var(&o.SpoolSize, "write-spool-size", "with --write: local disk for files waiting to be uploaded, e.g. 512MiB, 20GiB")
	fs.StringVar(&o.SpoolDir, "spool-dir", "",
		"with --write: private folder (yours, mode 0700; created if missing) for files waiting to be uploaded (default: spool/ in the state folder)")
	fs.DurationVar(&o.WriteBack, "write-back", 2*time.Second,
		"with --write: how long a closed file waits before it is uploaded (a rename within that time costs no upload)")
	fs.IntVar(&o.Uploads, "uploads", 64, "with --write: uploads in flight at once")
	o.statusOptions.addFlags(fs)
}

// checkWrite validates the write flags once they are parsed, and makes
// --spool-dir absolute: the background mount runs in "/".
func (o *mountOptions) checkWrite(flags *pflag.FlagSet) error {
	if !o.Write {
		var given []string
		for _, name := range writeOnlyFlags {
			if flags.Changed(name) {
				given = append(given, "--"+name)
			}
		}
		if len(given) > 0 {
			return fmt.Errorf("%s only applies to a --write mount", strings.Join(given, ", "))
		}
		return nil
	}
	switch {
	case o.Uploads < 1:
		return fmt.Errorf("--uploads must be at least 1 (got %d)", o.Uploads)
	case o.SpoolSize <= 0:
		return fmt.Errorf("--write-spool-size must be more than 0 (got %s)", o.SpoolSize.String())
	case o.WriteBack < 0:
		return fmt.Errorf("--write-back must not be negative (got %s)", o.WriteBack)
	}
	if o.SpoolDir != "" {
		abs, err := filepath.Abs(o.SpoolDir)
		if err != nil {
			return fmt.Errorf("--spool-dir: %w", err)
		}
		o.SpoolDir = abs
	}
	return nil
}

// validNewID is the fs's check of a new datasource's name (mkdir at the
// root): Datamesh's rule for new ids, said in the error that is logged.
func validNewID(id string) error {
	if session.ValidNewID(id) {
		return nil
	}
	return fmt.Errorf("not a valid new datasource id: %q must match ^[a-z0-9_-]{3,80}$ (3 to 80 of a-z, 0-9, _ and -)", id)
}

// byteSize is a size flag that takes units (KiB, MiB, GiB, TiB, K, M, G, T, KB, MB, GB).
type byteSize int64

func (b *byteSize) String() string { return bytesize.Format(int64(*b)) }
func (b *byteSize) Type() string   { return "size" }
func (b *byteSize) Set(s string) error {
	n, err := bytesize.Parse(s)
	if err != nil {
		return err
	}
	*b = byteSize(n)
	return nil
}

// newLogger builds the slog logger for a level name and an output.
func newLogger(level string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("invalid --log-level %q (debug, info, warn, error)", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// openLogFile appends to the --log-file the user named: not through a
// symlink, and only to a regular file of the user's (see statedir.OpenLog).
func openLogFile(path string) (*os.File, error) { return statedir.OpenLog(path) }

// endpoints resolves the service and gateway URLs from the flags (whose
// defaults are DATAMESH_SERVICE and DATAMESH_GATEWAY): the service defaults
// to Datamesh's, the gateway to the service.
func endpoints(service, gateway string) (string, string) {
	service = strings.TrimRight(strings.TrimSpace(service), "/")
	if service == "" {
		service = session.DefaultService
	}
	gateway = strings.TrimRight(strings.TrimSpace(gateway), "/")
	if gateway == "" {
		gateway = service
	}
	return service, gateway
}

// readToken reads the token once, from tokenFile if given, else from
// DATAMESH_TOKEN, and takes DATAMESH_TOKEN out of this process's
// environment so that nothing it starts (fusermount3, the background mount)
// inherits it. (The kernel's copy in /proc/PID/environ keeps what this
// process was started with; the background mount is started without it.)
func readToken(tokenFile string) (string, error) {
	tok := strings.TrimSpace(os.Getenv(session.EnvToken))
	os.Unsetenv(session.EnvToken)
	if tokenFile != "" {
		return session.ReadTokenFile(tokenFile)
	}
	return tok, nil
}
