package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/oceanum-dmfs/dmfs/cache"
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
	CacheDir        string // "": no disk tier
	CacheDirSize    byteSize
	Readahead       int
	MaxConnections  int
	MetadataTTL     time.Duration
	RetryBudget     time.Duration
	AllowOther      bool
	AllowRoot       bool
	UID, GID        ownerID
	FileMode        permBits
	DirMode         permBits
	LogLevel        string
	LogFormat       string
	LogFile         string
	FuseDebug       bool
	Passthrough     bool
	Foreground      bool
	Mountpoint      string
	// Options are the -o lists as given; applyOptions turns them into the
	// flags they name, and fuseOpts into the kernel options kept.
	Options  []string
	fuseOpts []string
	sloppy   bool // mount -s: unknown -o options are skipped
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
	o.CacheDirSize = cache.DefaultDiskMaxBytes
	fs.StringVar(&o.CacheDir, "cache-dir", "",
		"keep fetched chunks in this private folder (yours, mode 0700; created if missing) too, so that they survive remounts; "+
			"mounts may share it (default: memory only)")
	fs.Var(&o.CacheDirSize, "cache-dir-size", "with --cache-dir: most disk it may use, e.g. 20GiB (a hard cap, shared by the mounts using the folder)")
	fs.IntVar(&o.Readahead, "readahead", 32,
		"least number of chunks fetched ahead of a reader that reads an array in key order; more while the gateway sustains more (0 disables)")
	fs.IntVar(&o.MaxConnections, "max-connections", 128,
		"most requests in flight to the gateway at once; the number actually used adapts to what the gateway sustains")
	fs.DurationVar(&o.MetadataTTL, "metadata-ttl", 5*time.Minute,
		"how long the catalog, store metadata and chunk existence are trusted before being fetched again")
	fs.DurationVar(&o.RetryBudget, "retry-budget", session.DefaultRetryMaxElapsed,
		"how long a request waits out a gateway that is down or restarting (502/503/504, refused connections) before it fails with EIO")
	fs.BoolVar(&o.AllowOther, "allow-other", false,
		"let other users read the mount (needs user_allow_other in /etc/fuse.conf when not root)")
	fs.BoolVar(&o.AllowRoot, "allow-root", false,
		"let root (besides you) into the mount: files show no group or other permissions; not with --allow-other (needs user_allow_other in /etc/fuse.conf when not root)")
	o.UID.group, o.GID.group = false, true
	fs.Var(&o.UID, "uid", "owner shown for every file, a user id or name (default: yours)")
	fs.Var(&o.GID, "gid", "group shown for every file, a group id or name (default: yours)")
	fs.Var(&o.FileMode, "file-mode", "permission bits of files, octal (default 0444, 0644 with --write)")
	fs.Var(&o.DirMode, "dir-mode", "permission bits of directories, octal (default 0555, 0755 with --write)")
	fs.StringArrayVarP(&o.Options, "options", "o", nil,
		"mount options, comma-separated: any flag above in underscore form (cache_size=2GiB, token_file=F, allow_other), "+
			"write, ro, exec, noexec, nosuid, nodev; fstab's defaults, _netdev, nofail, noauto, user, rw and x-* are accepted and change nothing")
	fs.StringVar(&o.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&o.LogFormat, "log-format", "text", "log format: text (key=value) or json (one object per line)")
	fs.StringVar(&o.LogFile, "log-file", "",
		"write logs to this file (default: stderr with --foreground, else a file beside the pid file)")
	fs.BoolVar(&o.Passthrough, "passthrough", true,
		"let the kernel read large chunks (1 MiB and more) straight from dmfs's memory, by FUSE passthrough (root mounts, Linux 6.9 and later); "+
			"every open then costs one request to dmfs, which --passthrough=false saves where chunks are small")
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

// minCacheDirSize is the least --cache-dir-size: room for a few chunks.
const minCacheDirSize = 1 << 20

// maxConnections bounds --max-connections: far more than any gateway
// sustains for one client, few enough to keep descriptors and memory sane.
const maxConnections = 4096

// check validates every flag once they are parsed (and -o applied): a value
// that means nothing is a usage error here, not a surprise later. Paths are
// made absolute: the background mount runs in "/".
func (o *mountOptions) check(flags *pflag.FlagSet) error {
	switch {
	case o.SessionDuration < time.Second:
		return fmt.Errorf("--session-duration must be at least 1s (got %s)", o.SessionDuration)
	case o.CacheSize <= 0:
		return fmt.Errorf("--cache-size must be more than 0 (got %s)", o.CacheSize.String())
	case o.CacheDir == "" && flags.Changed("cache-dir-size"):
		return errors.New("--cache-dir-size only applies with --cache-dir")
	case o.CacheDir != "" && o.CacheDirSize < minCacheDirSize:
		return fmt.Errorf("--cache-dir-size must be at least %s (got %s)", bytesize.Format(minCacheDirSize), o.CacheDirSize.String())
	case o.CacheDir != "" && o.Write:
		return errors.New("--cache-dir does not apply to a --write mount: what it uploads would leave the disk's copies stale")
	case o.Readahead < 0:
		return fmt.Errorf("--readahead must not be negative (got %d; 0 disables it)", o.Readahead)
	case o.MaxConnections < 1 || o.MaxConnections > maxConnections:
		return fmt.Errorf("--max-connections must be from 1 to %d (got %d)", maxConnections, o.MaxConnections)
	case o.MetadataTTL <= 0:
		return fmt.Errorf("--metadata-ttl must be more than 0 (got %s)", o.MetadataTTL)
	case o.RetryBudget <= 0:
		return fmt.Errorf("--retry-budget must be more than 0 (got %s)", o.RetryBudget)
	case o.AllowOther && o.AllowRoot:
		return errors.New("--allow-other and --allow-root exclude each other (--allow-other already lets root in)")
	case o.AllowRoot && o.FileMode&0o077 != 0:
		return fmt.Errorf("--allow-root lets in only you and root, but --file-mode %s gives group or others access", o.FileMode.String())
	case o.AllowRoot && o.DirMode&0o077 != 0:
		return fmt.Errorf("--allow-root lets in only you and root, but --dir-mode %s gives group or others access", o.DirMode.String())
	}
	if _, err := newLogger(o.LogLevel, o.LogFormat, io.Discard); err != nil {
		return err
	}
	for _, id := range o.Datasources {
		if !session.ValidID(id) {
			return fmt.Errorf("--datasource %q is not a datasource id (empty, '.', '..', or holding '/' or NUL)", id)
		}
	}
	if o.CacheDir != "" {
		abs, err := filepath.Abs(o.CacheDir)
		if err != nil {
			return fmt.Errorf("--cache-dir: %w", err)
		}
		o.CacheDir = abs
		if flags.Lookup("cache-dir") != nil {
			_ = flags.Set("cache-dir", abs)
		}
	}
	if o.LogFile != "" {
		abs, err := filepath.Abs(o.LogFile)
		if err != nil {
			return fmt.Errorf("--log-file: %w", err)
		}
		o.LogFile = abs
		if flags.Lookup("log-file") != nil {
			_ = flags.Set("log-file", abs)
		}
	}
	return o.checkWrite(flags)
}

// modes are the permission bits of files and directories (0: the fs's
// defaults). --allow-root is the kernel's allow_other (the kernel knows no
// allow_root; libfuse emulates it in the server, go-fuse does not) with
// modes that give group and others nothing: with default_permissions the
// kernel then lets in the owner, and root, which passes permission checks.
func (o *mountOptions) modes() (file, dir uint32) {
	file, dir = uint32(o.FileMode), uint32(o.DirMode)
	if o.AllowRoot {
		if file == 0 {
			file = 0o400
			if o.Write {
				file = 0o600
			}
		}
		if dir == 0 {
			dir = 0o500
			if o.Write {
				dir = 0o700
			}
		}
	}
	return file, dir
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

// newLogger builds the slog logger for a level name, a format (text or
// json; "" is text) and an output.
func newLogger(level, format string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("invalid --log-level %q (debug, info, warn, error)", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("invalid --log-format %q (text, json)", format)
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
