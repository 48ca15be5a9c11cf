package csi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/oceanum-dmfs/dmfs/internal/statedir"
)

// DefaultDriverName is the CSI driver name (CSIDriver object, volumes'
// "driver" field).
const DefaultDriverName = "dmfs.csi.oceanum.io"

// A Launcher starts one `dmfs mount` process serving at target: flags are
// mount flags, token goes to the process privately (never in its argv or
// environment), and its logs go to logFile. It returns once the mount
// serves, with the running process, which the caller waits for; or, when
// the mount failed, with a *MountError and the process reaped. When ctx
// ends first, it stops the process and returns ctx's error.
type Launcher func(ctx context.Context, flags []string, target, token string, logFile *os.File) (*exec.Cmd, error)

// MountError is a mount that failed before it served: the exit status of
// `dmfs mount` (README's table) and its own message.
type MountError struct {
	ExitCode int
	Message  string
}

func (e *MountError) Error() string {
	return fmt.Sprintf("dmfs mount failed (exit status %d): %s", e.ExitCode, e.Message)
}

// grpcCode maps `dmfs mount`'s exit codes (README "Exit codes") to the
// answer the kubelet shows in the pod's events.
func (e *MountError) grpcCode() codes.Code {
	switch e.ExitCode {
	case 2: // bad command line: an attribute's value
		return codes.InvalidArgument
	case 3: // no token, or the token was refused
		return codes.Unauthenticated
	case 4: // the service or gateway could not be reached
		return codes.Unavailable
	case 5: // the target cannot be mounted on
		return codes.FailedPrecondition
	default:
		return codes.Internal
	}
}

// Options configure the plugin.
type Options struct {
	DriverName string // DefaultDriverName when empty
	NodeID     string // required: the Kubernetes node name
	Version    string // reported by GetPluginInfo
	// StateDir holds the plugin's records ("csi/") and its mounts' own state
	// ("dmfs/", see cmd/dmfs): a folder owned by the plugin's user that
	// group and others cannot write to; created 0700 if missing.
	StateDir string
	// MountLogLevel is each mount's --log-level ("" leaves dmfs's default).
	MountLogLevel string
	Launch        Launcher     // required
	Logger        *slog.Logger // discarded when nil
}

// Driver is the CSI node plugin.
type Driver struct {
	csipb.UnimplementedIdentityServer
	csipb.UnimplementedNodeServer

	opt  Options
	log  *slog.Logger
	dir  *statedir.Dir
	recs records
	lock *statedir.Lock

	mu       sync.Mutex
	busy     map[string]bool   // targets with a call in progress
	children map[string]*child // mounts this process started, by target
}

// stateLockWait bounds how long a starting plugin waits for the one before
// it (same state folder) to let go.
var stateLockWait = 10 * time.Second

// New checks the options, opens the state folder and takes its lock (one
// plugin per state folder), and logs the mounts it finds there.
func New(ctx context.Context, o Options) (*Driver, error) {
	if o.DriverName == "" {
		o.DriverName = DefaultDriverName
	}
	switch {
	case o.NodeID == "":
		return nil, errors.New("a node id is required (the Kubernetes node name)")
	case o.Launch == nil:
		return nil, errors.New("csi: no Launcher")
	case o.StateDir == "" || !filepath.IsAbs(o.StateDir):
		return nil, fmt.Errorf("the state folder must be an absolute path (got %q)", o.StateDir)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state folder: %w", err)
	}
	dir, err := statedir.OpenIn(filepath.Clean(o.StateDir), "csi", true, true)
	if err != nil {
		return nil, fmt.Errorf("state folder: %w", err)
	}
	lock, err := lockState(ctx, dir)
	if err != nil {
		dir.Close()
		return nil, err
	}
	d := &Driver{opt: o, log: log, dir: dir, recs: records{dir}, lock: lock,
		busy: map[string]bool{}, children: map[string]*child{}}
	d.logFound()
	return d, nil
}

func lockState(ctx context.Context, dir *statedir.Dir) (*statedir.Lock, error) {
	deadline := time.Now().Add(stateLockWait)
	for {
		lock, err := dir.TryLock("plugin.lock")
		if err == nil {
			return lock, nil
		}
		if !errors.Is(err, statedir.ErrLocked) || time.Now().After(deadline) {
			return nil, fmt.Errorf("state folder %s: %w (another dmfs csi uses it)", dir.Path(), err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// logFound says which mounts a restarted plugin found: those that still
// serve, and those whose process is gone (remounted at the next
// NodePublishVolume, cleaned up at NodeUnpublishVolume).
func (d *Driver) logFound() {
	recs, errs := d.recs.all()
	for _, err := range errs {
		d.log.Warn("volume record ignored", "err", err)
	}
	for _, rec := range recs {
		if rec.alive() {
			d.log.Info("found a mount", "volume_id", rec.VolumeID, "target", rec.Target, "pid", rec.PID)
		} else {
			d.log.Warn("found a mount whose process is gone; NodePublishVolume remounts it, NodeUnpublishVolume cleans it up",
				"volume_id", rec.VolumeID, "target", rec.Target, "pid", rec.PID)
		}
	}
}

// Close releases the state folder. Mounts keep serving.
func (d *Driver) Close() error {
	d.lock.Close()
	return d.dir.Close()
}

// Serve answers CSI calls on endpoint (unix:///path/csi.sock) until ctx
// ends, then stops taking calls and returns; the mounts keep serving.
func (d *Driver) Serve(ctx context.Context, endpoint string) error {
	path, err := socketPath(endpoint)
	if err != nil {
		return err
	}
	if err := removeStaleSocket(path); err != nil {
		return err
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", endpoint, err)
	}
	// Only the kubelet and its registrar (root) talk to the plugin.
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(d.logCall))
	csipb.RegisterIdentityServer(srv, d)
	csipb.RegisterNodeServer(srv, d)
	d.log.Info("serving CSI", "driver", d.opt.DriverName, "node_id", d.opt.NodeID, "endpoint", endpoint, "state_dir", d.opt.StateDir)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		srv.Stop()
	}
	d.log.Info("stopped serving CSI; mounts keep serving")
	return nil
}

// socketPath reads a CSI endpoint: unix:///abs/path or unix:/abs/path.
func socketPath(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "unix" {
		return "", fmt.Errorf("endpoint %q: want unix:///path/to/csi.sock", endpoint)
	}
	p := u.Path
	if p == "" {
		p = u.Opaque
	}
	if u.Host != "" || !filepath.IsAbs(p) {
		return "", fmt.Errorf("endpoint %q: want an absolute socket path, as unix:///path/to/csi.sock", endpoint)
	}
	return filepath.Clean(p), nil
}

// removeStaleSocket removes the socket a previous plugin left; anything
// else at the path is refused.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	return os.Remove(path)
}

// logCall logs each call once, with its outcome: never the request itself,
// which carries the secrets.
func (d *Driver) logCall(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	began := time.Now()
	resp, err := handler(ctx, req)
	attrs := []any{"method", filepath.Base(info.FullMethod), "duration", time.Since(began).Round(time.Millisecond)}
	level := slog.LevelDebug
	switch r := req.(type) {
	case *csipb.NodePublishVolumeRequest:
		attrs = append(attrs, "volume_id", r.GetVolumeId(), "target", r.GetTargetPath())
		level = slog.LevelInfo
	case *csipb.NodeUnpublishVolumeRequest:
		attrs = append(attrs, "volume_id", r.GetVolumeId(), "target", r.GetTargetPath())
		level = slog.LevelInfo
	}
	if err != nil {
		attrs = append(attrs, "code", status.Code(err), "err", status.Convert(err).Message())
		level = slog.LevelWarn
	}
	d.log.Log(ctx, level, "csi call", attrs...)
	return resp, err
}

// GetPluginInfo names the driver.
func (d *Driver) GetPluginInfo(context.Context, *csipb.GetPluginInfoRequest) (*csipb.GetPluginInfoResponse, error) {
	return &csipb.GetPluginInfoResponse{Name: d.opt.DriverName, VendorVersion: d.opt.Version}, nil
}

// GetPluginCapabilities offers no controller: dmfs volumes are views of
// Datamesh, made by the pod spec or a static PersistentVolume, with nothing
// to provision or attach.
func (d *Driver) GetPluginCapabilities(context.Context, *csipb.GetPluginCapabilitiesRequest) (*csipb.GetPluginCapabilitiesResponse, error) {
	return &csipb.GetPluginCapabilitiesResponse{}, nil
}

// Probe says the plugin is ready: it answers only once its state folder is
// open.
func (d *Driver) Probe(context.Context, *csipb.ProbeRequest) (*csipb.ProbeResponse, error) {
	return &csipb.ProbeResponse{}, nil
}
