package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/oceanum-dmfs/dmfs/cache"
	"github.com/oceanum-dmfs/dmfs/fs"
	"github.com/oceanum-dmfs/dmfs/internal/mountinfo"
	"github.com/oceanum-dmfs/dmfs/internal/statedir"
	"github.com/oceanum-dmfs/dmfs/mountstat"
	"github.com/oceanum-dmfs/dmfs/session"
)

// statusTimeout bounds how long `dmfs status` waits for one mount's answer.
const statusTimeout = 3 * time.Second

// statusOptions are the `dmfs mount` flags of this file.
type statusOptions struct {
	MetricsAddr        string
	MetricsAllowRemote bool
}

func (o *statusOptions) addFlags(flags *pflag.FlagSet) {
	flags.StringVar(&o.MetricsAddr, "metrics-addr", "",
		"serve Prometheus metrics at http://ADDR/metrics, ADDR such as 127.0.0.1:9100 (default: off); "+
			"the endpoint has no authentication, so only loopback addresses are accepted")
	flags.BoolVar(&o.MetricsAllowRemote, "metrics-allow-remote", false,
		"accept a --metrics-addr that is not a loopback address: anyone who reaches it reads the mount's figures")
}

// check validates the flags once they are parsed.
func (o *statusOptions) check() error {
	if o.MetricsAddr == "" {
		if o.MetricsAllowRemote {
			return errors.New("--metrics-allow-remote needs --metrics-addr")
		}
		return nil
	}
	return mountstat.CheckMetricsAddr(o.MetricsAddr, o.MetricsAllowRemote)
}

// statusSocketName names a mount's status socket in the state folder, by
// the mount point as the mount table shows it (symlinks resolved), where
// `dmfs status` finds mounts.
func statusSocketName(mountpoint string) string {
	if r, err := filepath.EvalSymlinks(mountpoint); err == nil {
		mountpoint = r
	}
	return stateName(mountpoint, ".sock")
}

// mountStatus is what a mount serves about itself: its status socket, and
// the metrics endpoint when --metrics-addr is set, both from one snapshot
// (see snapshot). Requests counts the session client's requests.
type mountStatus struct {
	Requests mountstat.RequestCounter

	dir        *statedir.Dir
	mp         string
	log        *slog.Logger
	started    time.Time
	metricsLn  net.Listener
	metricsURL string
	servers    []*mountstat.Server
	socket     string // the socket's name in dir, once listening
}

// statusParts are the parts of a mount that its figures come from.
type statusParts struct {
	client           *session.Client
	cache            *cache.Cache
	root             *fs.Root
	service, gateway string
	write            bool
	logPath          string
}

// startStatus takes the metrics address before anything else starts, so
// that one already in use fails the mount before a session is acquired.
func startStatus(o *statusOptions, dir *statedir.Dir, mp string, log *slog.Logger) (*mountStatus, error) {
	s := &mountStatus{dir: dir, mp: mp, log: log, started: time.Now()}
	if o.MetricsAddr != "" {
		l, err := net.Listen("tcp", o.MetricsAddr)
		if err != nil {
			return nil, fmt.Errorf("--metrics-addr: %w", err)
		}
		s.metricsLn = l
		s.metricsURL = "http://" + l.Addr().String() + "/metrics"
	}
	return s, nil
}

// observe is session.Config.OnRequest.
func (s *mountStatus) observe(op, key string) func(int, error) { return s.Requests.Start(op, key) }

// serve starts answering, once the mount serves. A status socket that
// cannot be made is a warning: the mount works without it.
func (s *mountStatus) serve(p statusParts) {
	snapshot := func() mountstat.Snapshot { return s.snapshot(p) }
	if s.metricsLn != nil {
		h := mountstat.NewMetricsHandler(snapshot, p.service, s.mp)
		s.servers = append(s.servers, mountstat.ServeMetrics(s.metricsLn, h, s.log))
		s.metricsLn = nil
		s.log.Info("serving metrics", "url", s.metricsURL)
	}
	name := statusSocketName(s.mp)
	l, err := s.dir.ListenUnix(name)
	if err != nil {
		s.log.Warn("status socket not made; 'dmfs status' will show no figures for this mount", "err", err)
		return
	}
	s.socket = name
	s.servers = append(s.servers, mountstat.Serve(l, snapshot, s.log))
}

// close stops serving and removes the socket; the state folder must still
// be open.
func (s *mountStatus) close() {
	if s.metricsLn != nil {
		s.metricsLn.Close()
	}
	for _, srv := range s.servers {
		srv.Close()
	}
	if s.socket != "" {
		s.dir.RemoveSocket(s.socket)
	}
}

// snapshot is the one place where a mount's figures are read from its
// parts: the status socket and the metrics both serve it.
func (s *mountStatus) snapshot(p statusParts) mountstat.Snapshot {
	info := p.client.Info()
	cs := p.cache.Stats()
	snap := mountstat.Snapshot{
		Mountpoint:          s.mp,
		PID:                 os.Getpid(),
		Service:             p.service,
		Gateway:             p.gateway,
		Write:               p.write,
		PassthroughMinBytes: p.root.PassthroughMin(),
		Log:                 p.logPath,
		Metrics:             s.metricsURL,
		Started:             s.started,
		Session:             mountstat.Session{ID: info.ID, EndTime: info.EndTime},
		Cache: &mountstat.Cache{
			Bytes:           cs.Bytes + cs.OversizeBytes,
			MaxBytes:        cs.MaxBytes,
			Entries:         int64(cs.Entries),
			Hits:            cs.Hits,
			Misses:          cs.Misses,
			Fetches:         cs.Fetches,
			FetchErrors:     cs.FetchErrors,
			Heads:           cs.Heads,
			Prefetches:      cs.PrefetchStarted,
			PrefetchDropped: cs.PrefetchDropped,
			Evictions:       cs.Evictions,

			MemoryFileBytes:     cs.MemFileBytes,
			MemoryFilePeakBytes: cs.MemFilePeakBytes,
		},
		Requests: s.Requests.Figures(),
	}
	if cs.DiskMaxBytes > 0 {
		snap.Cache.Disk = &mountstat.DiskCache{
			Bytes:     cs.DiskBytes,
			MaxBytes:  cs.DiskMaxBytes,
			Hits:      cs.DiskHits,
			Writes:    cs.DiskWrites,
			Dropped:   cs.DiskDropped,
			Evictions: cs.DiskEvictions,
			Corrupt:   cs.DiskCorrupt,
		}
	}
	if ws, ok := p.root.WriteStats(); ok {
		snap.Uploads = &mountstat.Uploads{
			Pending:       int64(ws.Pending),
			InFlight:      int64(ws.InFlight),
			Uploaded:      int64(ws.Uploaded),
			Failed:        int64(ws.Failed),
			SpoolBytes:    ws.SpoolBytes,
			SpoolMaxBytes: ws.SpoolMax,
		}
	}
	return snap
}

// runStatus runs `dmfs status`.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	flags := pflag.NewFlagSet("dmfs status", pflag.ContinueOnError)
	flags.SetOutput(stderr)
	asJSON := flags.Bool("json", false, fmt.Sprintf("print JSON (a stable document, version %d; see README)", mountstat.Version))
	flags.Usage = func() {
		fmt.Fprintf(stdout, "Usage: dmfs status [--json] [MOUNTPOINT]\n\nShows your dmfs mounts (or the one at MOUNTPOINT): service, session, log, pid, and live figures\n"+
			"(cache, requests to Datamesh by kind, uploads of a --write mount), read from each mount's private socket.\n"+
			"A mount whose process is gone is shown as dead.\n\nFlags:\n%s", flags.FlagUsages())
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "dmfs status: %v\nRun 'dmfs status --help' for usage.\n", err)
		return exitUsage
	}
	if flags.NArg() > 1 {
		fmt.Fprintln(stderr, "dmfs status: expected at most one MOUNTPOINT")
		flags.Usage()
		return exitUsage
	}
	// Not created here: without the folder there is no mount of ours.
	dir, err := statedir.Open(false)
	switch {
	case errors.Is(err, os.ErrNotExist):
		dir = nil
	case err != nil:
		fmt.Fprintf(stderr, "dmfs status: state folder: %v\n", err)
		return exitFailure
	default:
		defer dir.Close()
	}
	table, err := readMountTable()
	if err != nil {
		fmt.Fprintf(stderr, "dmfs status: reading the mount table: %v\n", err)
		return exitFailure
	}
	var mounts []mountstat.Mount
	if flags.NArg() == 1 {
		mp, err := filepath.Abs(flags.Arg(0))
		if err == nil {
			if r, rerr := filepath.EvalSymlinks(mp); rerr == nil {
				mp = r
			}
		}
		if err != nil || !slices.Contains(table, mp) {
			fmt.Fprintf(stderr, "dmfs status: %s is not a dmfs mount\n", flags.Arg(0))
			return exitNotMounted
		}
		m, _ := inspectMount(ctx, dir, mp)
		mounts = append(mounts, m)
	} else {
		for _, mp := range table {
			if m, ours := inspectMount(ctx, dir, mp); ours {
				mounts = append(mounts, m)
			}
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if mounts == nil {
			mounts = []mountstat.Mount{}
		}
		enc.Encode(mountstat.Status{Version: mountstat.Version, Mounts: mounts})
		return exitOK
	}
	mountstat.WriteText(stdout, mounts, time.Now())
	return exitOK
}

// readMountTable lists the dmfs mount points of the mount table, sorted.
func readMountTable() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	entries, err := mountinfo.Parse(f)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if isDmfsMount(e) && !slices.Contains(out, e.Mountpoint) {
			out = append(out, e.Mountpoint)
		}
	}
	slices.Sort(out)
	return out, nil
}

// inspectMount asks the mount at mp for its snapshot; when it cannot
// answer, what the state folder says of it stands in. ours is false when
// the state folder (dir, nil when there is none) holds nothing of mp: the
// mount is another user's.
func inspectMount(ctx context.Context, dir *statedir.Dir, mp string) (m mountstat.Mount, ours bool) {
	m.Mountpoint = mp
	if dir == nil {
		m.State, m.Problem = mountstat.StateUnreachable, "not a mount of yours (no state folder)"
		return m, false
	}
	name := statusSocketName(mp)
	fctx, cancel := context.WithTimeout(ctx, statusTimeout)
	snap, err := mountstat.Fetch(fctx, func(ctx context.Context) (net.Conn, error) { return dir.DialUnix(ctx, name) })
	cancel()
	if err == nil {
		// The mount table's path, as for the mounts that do not answer.
		snap.Mountpoint = mp
		return mountstat.Mount{State: mountstat.StateRunning, Snapshot: snap}, true
	}
	ours = !errors.Is(err, os.ErrNotExist)
	if pid, perr := readPidFile(dir, mp); perr == nil {
		ours, m.PID = true, pid
	}
	if b, rerr := dir.ReadRecord(sessionRecordName(mp)); rerr == nil {
		var rec sessionRecord
		if json.Unmarshal(b, &rec) == nil && rec.ID != "" {
			ours = true
			m.Gateway = rec.Gateway
			m.Session = mountstat.Session{ID: rec.ID, EndTime: rec.EndTime}
			if m.PID == 0 {
				m.PID = rec.PID
			}
		}
	}
	if log := dir.File(stateName(mp, ".log")); ours {
		if fi, err := os.Lstat(log); err == nil && fi.Mode().IsRegular() {
			m.Log = log
		}
	}
	switch {
	case m.PID > 0 && !processAlive(m.PID):
		m.State = mountstat.StateDead
		m.Problem = fmt.Sprintf("its process is gone; run 'dmfs unmount %s'", mp)
	case errors.Is(err, os.ErrNotExist):
		m.State = mountstat.StateUnreachable
		m.Problem = "it has no status socket (made by an older dmfs, or still starting)"
	default:
		m.State = mountstat.StateUnreachable
		m.Problem = "no answer on its status socket: " + strings.TrimSpace(err.Error())
	}
	return m, ours
}
