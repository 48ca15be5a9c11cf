package csi

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/oceanum-dmfs/dmfs/internal/testenv"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestSocketPath(t *testing.T) {
	tests := []struct{ endpoint, want, err string }{
		{"unix:///csi/csi.sock", "/csi/csi.sock", ""},
		{"unix:/csi/csi.sock", "/csi/csi.sock", ""},
		{"unix:///csi/../csi/csi.sock", "/csi/csi.sock", ""},
		{"/csi/csi.sock", "", "want unix://"},
		{"tcp://127.0.0.1:10000", "", "want unix://"},
		{"unix://host/csi.sock", "", "absolute socket path"},
		{"unix:csi.sock", "", "absolute socket path"},
	}
	for _, tt := range tests {
		got, err := socketPath(tt.endpoint)
		if tt.err != "" {
			assert.ErrorContains(t, err, tt.err, tt.endpoint)
			continue
		}
		assert.NoError(t, err, tt.endpoint)
		assert.Equal(t, tt.want, got, tt.endpoint)
	}
}

func TestParseStat(t *testing.T) {
	line := func(comm, state string) string {
		return "1234 (" + comm + ") " + state + " 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 12 0 987654 1000000 200"
	}
	start, ok := parseStat(line("dmfs", "S"))
	assert.True(t, ok)
	assert.Equal(t, uint64(987654), start)
	start, ok = parseStat(line("we) ird (name", "R"))
	assert.True(t, ok, "a command name with parentheses")
	assert.Equal(t, uint64(987654), start)
	_, ok = parseStat(line("dmfs", "Z"))
	assert.False(t, ok, "a zombie has exited")
	_, ok = parseStat("1234 (dmfs) S 1")
	assert.False(t, ok, "truncated")
	_, ok = processStart(os.Getpid())
	assert.True(t, ok, "this process runs")
}

func TestCheckCapability(t *testing.T) {
	mount := func(mode csipb.VolumeCapability_AccessMode_Mode, flags ...string) *csipb.VolumeCapability {
		return &csipb.VolumeCapability{
			AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{MountFlags: flags}},
			AccessMode: &csipb.VolumeCapability_AccessMode{Mode: mode},
		}
	}
	ro, err := checkCapability(mount(csipb.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY))
	require.NoError(t, err)
	assert.True(t, ro)
	ro, err = checkCapability(mount(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER))
	require.NoError(t, err)
	assert.False(t, ro)
	_, err = checkCapability(mount(csipb.VolumeCapability_AccessMode_UNKNOWN))
	assert.ErrorContains(t, err, "access_mode")
	_, err = checkCapability(mount(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "ro"))
	assert.ErrorContains(t, err, "set volumeAttributes instead")
	_, err = checkCapability(&csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}}})
	assert.ErrorContains(t, err, "block")
	_, err = checkCapability(nil)
	assert.Error(t, err)
}

func TestMountErrorCodes(t *testing.T) {
	for exit, want := range map[int]codes.Code{1: codes.Internal, 2: codes.InvalidArgument, 3: codes.Unauthenticated,
		4: codes.Unavailable, 5: codes.FailedPrecondition, -1: codes.Internal} {
		assert.Equal(t, want, (&MountError{ExitCode: exit}).grpcCode(), "exit %d", exit)
	}
}

// launch records what the driver asked a Launcher for.
type launch struct {
	flags  []string
	target string
	token  string
}

// newTestDriver is a driver on a private state folder whose mounts are made
// by fake; it logs to the returned buffer.
func newTestDriver(t *testing.T, fake Launcher) (*Driver, *testenv.Buffer) {
	t.Helper()
	var logs testenv.Buffer
	d, err := New(context.Background(), Options{
		NodeID:        "node-1",
		StateDir:      filepath.Join(t.TempDir(), "state"),
		MountLogLevel: "debug",
		Launch:        fake,
		Logger:        slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	return d, &logs
}

func publishRequest(target string) *csipb.NodePublishVolumeRequest {
	return &csipb.NodePublishVolumeRequest{
		VolumeId:   "vol-1",
		TargetPath: target,
		VolumeCapability: &csipb.VolumeCapability{
			AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
			AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
		VolumeContext: map[string]string{"service": "http://127.0.0.1:1", "datasource": "demo_grid"},
		Secrets:       map[string]string{TokenKey: "s3cret-token"},
	}
}

func TestNew(t *testing.T) {
	fake := noLaunch
	_, err := New(context.Background(), Options{StateDir: t.TempDir(), Launch: fake})
	assert.ErrorContains(t, err, "node id")
	_, err = New(context.Background(), Options{NodeID: "n", StateDir: "state", Launch: fake})
	assert.ErrorContains(t, err, "absolute")

	open := t.TempDir()
	require.NoError(t, os.Chmod(open, 0o777))
	_, err = New(context.Background(), Options{NodeID: "n", StateDir: open, Launch: fake})
	assert.ErrorContains(t, err, "writable by group or others", "a state folder others can write to is refused")

	dir := filepath.Join(t.TempDir(), "state")
	first, err := New(context.Background(), Options{NodeID: "n", StateDir: dir, Launch: fake})
	require.NoError(t, err)
	defer first.Close()
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	old := stateLockWait
	stateLockWait = 100 * time.Millisecond
	defer func() { stateLockWait = old }()
	_, err = New(context.Background(), Options{NodeID: "n", StateDir: dir, Launch: fake})
	assert.ErrorContains(t, err, "another dmfs csi uses it")
}

func TestPublishRefusesBadRequests(t *testing.T) {
	called := false
	d, _ := newTestDriver(t, func(context.Context, []string, string, string, *os.File) (*exec.Cmd, error) {
		called = true
		return nil, errors.New("must not be called")
	})
	target := filepath.Join(t.TempDir(), "target")
	for name, change := range map[string]func(r *csipb.NodePublishVolumeRequest){
		"no volume id":       func(r *csipb.NodePublishVolumeRequest) { r.VolumeId = "" },
		"no target":          func(r *csipb.NodePublishVolumeRequest) { r.TargetPath = "" },
		"relative target":    func(r *csipb.NodePublishVolumeRequest) { r.TargetPath = "pods/target" },
		"no capability":      func(r *csipb.NodePublishVolumeRequest) { r.VolumeCapability = nil },
		"no token":           func(r *csipb.NodePublishVolumeRequest) { r.Secrets = map[string]string{"password": "x"} },
		"unknown attribute":  func(r *csipb.NodePublishVolumeRequest) { r.VolumeContext["tokn"] = "x" },
		"token as attribute": func(r *csipb.NodePublishVolumeRequest) { r.VolumeContext["token"] = "s3cret-token" },
	} {
		req := publishRequest(target)
		change(req)
		_, err := d.NodePublishVolume(context.Background(), req)
		assert.Equal(t, codes.InvalidArgument, status.Code(err), "%s: %v", name, err)
		assert.NotContains(t, err.Error(), "s3cret-token", name)
	}
	assert.False(t, called)
	_, err := os.Stat(target)
	assert.True(t, errors.Is(err, os.ErrNotExist), "nothing made at the target")

	release, ok := d.claim(target)
	require.True(t, ok)
	_, err = d.NodePublishVolume(context.Background(), publishRequest(target))
	assert.Equal(t, codes.Aborted, status.Code(err), "a call on a busy target")
	release()
}

func TestPublishFailureLeavesNothing(t *testing.T) {
	d, _ := newTestDriver(t, func(context.Context, []string, string, string, *os.File) (*exec.Cmd, error) {
		return nil, &MountError{ExitCode: 3, Message: "token refused"}
	})
	target := filepath.Join(t.TempDir(), "target")
	_, err := d.NodePublishVolume(context.Background(), publishRequest(target))
	assert.Equal(t, codes.Unauthenticated, status.Code(err))
	assert.ErrorContains(t, err, "token refused")
	_, statErr := os.Stat(target)
	assert.True(t, errors.Is(statErr, os.ErrNotExist), "the target it made is removed")
	_, ok, err := d.recs.read(target)
	require.NoError(t, err)
	assert.False(t, ok, "no record is left")
}

// TestPublishUnpublishBookkeeping runs a publish whose "mount" is a process
// that exits at once (no FUSE here: the integration tests mount for real),
// and checks what the driver hands the Launcher and what it records.
func TestPublishUnpublishBookkeeping(t *testing.T) {
	var got launch
	d, logs := newTestDriver(t, func(_ context.Context, flags []string, target, token string, logf *os.File) (*exec.Cmd, error) {
		got = launch{flags, target, token}
		cmd := exec.Command("true")
		cmd.Stdout, cmd.Stderr = logf, logf
		return cmd, cmd.Start()
	})
	target := filepath.Join(t.TempDir(), "target")
	_, err := d.NodePublishVolume(context.Background(), publishRequest(target))
	require.NoError(t, err)
	assert.Equal(t, target, got.target)
	assert.Equal(t, "s3cret-token", got.token)
	assert.Equal(t, []string{"--datasource=demo_grid", "--service=http://127.0.0.1:1", "--allow-other", "--log-level=debug"}, got.flags)
	fi, err := os.Stat(target)
	require.NoError(t, err)
	assert.True(t, fi.IsDir(), "the plugin makes the target")

	rec, ok, err := d.recs.read(target)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, "vol-1", rec.VolumeID)
	assert.Positive(t, rec.PID)
	b, err := os.ReadFile(d.dir.File(recordName(target)))
	require.NoError(t, err)
	assert.NotContains(t, string(b), "s3cret-token", "the record holds no token")
	recFile, err := os.Stat(d.dir.File(recordName(target)))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), recFile.Mode().Perm())

	_, err = d.NodeUnpublishVolume(context.Background(), &csipb.NodeUnpublishVolumeRequest{VolumeId: "vol-1", TargetPath: target})
	require.NoError(t, err)
	_, ok, err = d.recs.read(target)
	require.NoError(t, err)
	assert.False(t, ok, "the record is removed")
	_, err = os.Stat(target)
	assert.True(t, errors.Is(err, os.ErrNotExist), "the target is removed")
	_, err = d.NodeUnpublishVolume(context.Background(), &csipb.NodeUnpublishVolumeRequest{VolumeId: "vol-1", TargetPath: target})
	assert.NoError(t, err, "unpublish is idempotent")
	assert.Contains(t, logs.String(), "ended on its own", "a mount process that ends by itself is logged")
	assert.NotContains(t, logs.String(), "s3cret-token")
}

// noLaunch is a Launcher for tests that mount nothing.
func noLaunch(context.Context, []string, string, string, *os.File) (*exec.Cmd, error) {
	return nil, errors.New("no mounts in this test")
}

func TestRecordsRefuseUntrusted(t *testing.T) {
	d, _ := newTestDriver(t, noLaunch)
	target := "/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/v/mount"
	require.NoError(t, d.recs.write(record{VolumeID: "v", Target: target, PID: 1}))
	rec, ok, err := d.recs.read(target)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, "v", rec.VolumeID)

	path := d.dir.File(recordName(target))
	require.NoError(t, os.Chmod(path, 0o644))
	_, _, err = d.recs.read(target)
	assert.ErrorContains(t, err, "open to group or others")

	require.NoError(t, os.Remove(path))
	require.NoError(t, os.Symlink("/etc/passwd", path))
	_, _, err = d.recs.read(target)
	assert.ErrorContains(t, err, "symbolic link")

	require.NoError(t, os.Remove(path))
	require.NoError(t, os.WriteFile(path, []byte(`{"volume_id":"v","target":"/elsewhere","pid":1}`), 0o600))
	_, _, err = d.recs.read(target)
	assert.ErrorContains(t, err, "not a dmfs csi volume record")
	recs, errs := d.recs.all()
	assert.Empty(t, recs)
	assert.Len(t, errs, 1)
}

func TestLogCallKeepsSecretsOut(t *testing.T) {
	d, logs := newTestDriver(t, noLaunch)
	req := publishRequest("/target")
	_, err := d.logCall(context.Background(), req, &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Node/NodePublishVolume"},
		func(context.Context, any) (any, error) {
			return nil, status.Error(codes.Unavailable, "gateway down")
		})
	require.Error(t, err)
	assert.Contains(t, logs.String(), "method=NodePublishVolume")
	assert.Contains(t, logs.String(), "volume_id=vol-1")
	assert.Contains(t, logs.String(), "code=Unavailable")
	assert.NotContains(t, logs.String(), "s3cret-token")
}
