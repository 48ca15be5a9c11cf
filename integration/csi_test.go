package integration

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// csiPlugin is a running `dmfs csi` and a client of its socket, as the
// kubelet is.
type csiPlugin struct {
	proc     *process
	endpoint string
	node     csipb.NodeClient
	identity csipb.IdentityClient
}

// startCSI runs `dmfs csi` on a fresh socket with stateDir, and waits until
// it answers Probe.
func startCSI(t *testing.T, stateDir string) *csiPlugin {
	t.Helper()
	requireFUSE(t)
	sock := filepath.Join(t.TempDir(), "csi.sock")
	endpoint := "unix://" + sock
	p := start(t, nil, "csi", "--endpoint", endpoint, "--node-id", "test-node", "--state-dir", stateDir, "--log-level", "debug")
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	c := &csiPlugin{proc: p, endpoint: endpoint, node: csipb.NewNodeClient(conn), identity: csipb.NewIdentityClient(conn)}
	require.Eventually(t, func() bool {
		select {
		case <-p.exited:
			t.Fatalf("dmfs csi exited: %s", p.out.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := c.identity.Probe(ctx, &csipb.ProbeRequest{})
		return err == nil
	}, 30*time.Second, 20*time.Millisecond, "dmfs csi never answered Probe")
	return c
}

// mountCapability is what the kubelet sends for a filesystem volume.
func mountCapability(mode csipb.VolumeCapability_AccessMode_Mode) *csipb.VolumeCapability {
	return &csipb.VolumeCapability{
		AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: mode},
	}
}

// publishReq is a NodePublishVolume request as the kubelet makes it for an
// inline ephemeral volume (pod attributes included).
func publishReq(volID, target string, attrs map[string]string) *csipb.NodePublishVolumeRequest {
	ctxAttrs := map[string]string{
		"csi.storage.k8s.io/ephemeral":     "true",
		"csi.storage.k8s.io/pod.name":      "reader",
		"csi.storage.k8s.io/pod.namespace": "default",
	}
	for k, v := range attrs {
		ctxAttrs[k] = v
	}
	return &csipb.NodePublishVolumeRequest{
		VolumeId:         volID,
		TargetPath:       target,
		VolumeCapability: mountCapability(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER),
		VolumeContext:    ctxAttrs,
		Secrets:          map[string]string{"token": testToken},
	}
}

func (c *csiPlugin) publish(t *testing.T, req *csipb.NodePublishVolumeRequest) error {
	t.Helper()
	trackMount(req.TargetPath, true)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := c.node.NodePublishVolume(ctx, req)
	return err
}

func (c *csiPlugin) unpublish(t *testing.T, volID, target string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := c.node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: target})
	return err
}

// kubeletTarget is a target path under a parent the kubelet made (the
// plugin makes the target itself); it is unmounted at the end whatever
// happens.
func kubeletTarget(t *testing.T) string {
	t.Helper()
	target := filepath.Join(t.TempDir(), "pods", "uid", "volumes", "mount")
	require.NoError(t, os.MkdirAll(filepath.Dir(target), 0o750))
	t.Cleanup(func() {
		if isMounted(target) {
			if syscall.Unmount(target, 0) != nil {
				syscall.Unmount(target, syscall.MNT_DETACH)
			}
		}
		trackMount(target, false)
	})
	return target
}

// mountProcess finds the `dmfs mount` process serving target (its last
// argument), or 0.
func mountProcess(t *testing.T, target string) int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	require.NoError(t, err)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) > 2 && args[0] == dmfsBin && args[1] == "mount" && args[len(args)-1] == target {
			if start, ok := procState(pid); ok && start != "Z" {
				return pid
			}
		}
	}
	return 0
}

// procState returns the state letter of pid.
func procState(pid int) (string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return "", false
	}
	return s[i+2 : i+3], true
}

func processGone(pid int) bool {
	st, ok := procState(pid)
	return !ok || st == "Z"
}

// assertServesDemoGrid reads every file of demo_grid through target and
// compares it with what the gateway serves (its folder).
func assertServesDemoGrid(t *testing.T, target string) {
	t.Helper()
	names, err := os.ReadDir(target)
	require.NoError(t, err)
	require.Len(t, names, 1, "the volume mounts only datasource demo_grid")
	require.Equal(t, "demo_grid", names[0].Name())
	want := readAll(t, filepath.Join(demoDir, "demo_grid"))
	got := readAll(t, filepath.Join(target, "demo_grid"))
	for _, rel := range sourceFiles(t, filepath.Join(demoDir, "demo_grid")) {
		require.Contains(t, got, rel)
		assertSameFile(t, rel, want[rel], got[rel])
	}
}

func requireCode(t *testing.T, want codes.Code, err error, msgAndArgs ...any) {
	t.Helper()
	require.Error(t, err, msgAndArgs...)
	require.Equal(t, want, status.Code(err), "%v", err)
}

// TestCSIPublishLikeKubelet drives the node plugin over its socket as the
// kubelet does: publish (bad requests first), idempotent republish, a mount
// killed and healed by the next publish, unpublish closing the session.
func TestCSIPublishLikeKubelet(t *testing.T) {
	g := startGateway(t, "")
	plugin := startCSI(t, filepath.Join(t.TempDir(), "state"))
	target := kubeletTarget(t)
	attrs := map[string]string{"service": g.URL, "datasource": "demo_grid", "cacheSize": "64MiB", "metadataTTL": "1m"}

	// Refused before anything starts: no session is acquired.
	noToken := publishReq("vol-1", target, attrs)
	noToken.Secrets = nil
	requireCode(t, codes.InvalidArgument, plugin.publish(t, noToken))
	requireCode(t, codes.InvalidArgument, plugin.publish(t, publishReq("vol-1", target, map[string]string{"service": g.URL, "token": testToken})),
		"a token in the attributes is an unknown attribute, never used")
	block := publishReq("vol-1", target, attrs)
	block.VolumeCapability = &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}},
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	requireCode(t, codes.InvalidArgument, plugin.publish(t, block))
	// Refused by `dmfs mount` itself, with its message.
	err := plugin.publish(t, publishReq("vol-1", target, map[string]string{"service": g.URL, "cacheSize": "lots"}))
	requireCode(t, codes.InvalidArgument, err)
	assert.Contains(t, err.Error(), "cache-size")
	wrong := publishReq("vol-1", target, attrs)
	wrong.Secrets = map[string]string{"token": "not-the-token"}
	requireCode(t, codes.Unauthenticated, plugin.publish(t, wrong))
	_, statErr := os.Stat(target)
	assert.True(t, errors.Is(statErr, os.ErrNotExist), "a failed publish leaves no target: %v", statErr)
	c := g.counters(t)
	require.Zero(t, c.Sessions.Acquired)

	require.NoError(t, plugin.publish(t, publishReq("vol-1", target, attrs)))
	assertServesDemoGrid(t, target)
	c = g.counters(t)
	assert.Equal(t, int64(1), c.Sessions.Acquired)
	assert.Equal(t, int64(1), c.Sessions.Open)

	// The token is in no argv, environment or log.
	pid := mountProcess(t, target)
	require.NotZero(t, pid, "no dmfs mount process serves %s", target)
	track(pid)
	t.Cleanup(func() { untrack(pid) })
	for _, f := range []string{"cmdline", "environ"} {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), f))
		require.NoError(t, err)
		assert.NotContains(t, string(b), testToken, "/proc/%d/%s", pid, f)
	}
	assert.NotContains(t, plugin.proc.out.String(), testToken)

	// Republished as the kubelet does (requiresRepublish): nothing changes.
	require.NoError(t, plugin.publish(t, publishReq("vol-1", target, attrs)))
	requireCode(t, codes.AlreadyExists, plugin.publish(t, publishReq("vol-1", target, map[string]string{"service": g.URL, "datasource": "demo_stations"})),
		"the same volume with other attributes")
	ro := publishReq("vol-1", target, attrs)
	ro.Readonly = true
	assert.NoError(t, plugin.publish(t, ro), "read-only and read-write are the same mount when write is not set")
	assert.Equal(t, pid, mountProcess(t, target))
	assert.Equal(t, int64(1), g.counters(t).Sessions.Acquired)

	// Killed: the target fails with ENOTCONN; the next publish heals it,
	// and the new mount closes the session the dead one left open.
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	require.Eventually(t, func() bool {
		_, err := os.ReadDir(target)
		return errors.Is(err, syscall.ENOTCONN)
	}, 10*time.Second, 20*time.Millisecond, "the killed mount's target should fail with ENOTCONN")
	require.NoError(t, plugin.publish(t, publishReq("vol-1", target, attrs)))
	assertServesDemoGrid(t, target)
	healed := mountProcess(t, target)
	require.NotZero(t, healed)
	assert.NotEqual(t, pid, healed)
	track(healed)
	t.Cleanup(func() { untrack(healed) })
	c = g.counters(t)
	assert.Equal(t, int64(2), c.Sessions.Acquired)
	assert.Equal(t, int64(1), c.Sessions.Closed, "the killed mount's session is closed by the new mount")
	assert.Equal(t, int64(1), c.Sessions.Open)

	// Unpublished: unmounted, session closed, process gone, target removed;
	// and again, as the kubelet may retry.
	require.NoError(t, plugin.unpublish(t, "vol-1", target))
	assert.False(t, isMounted(target))
	_, statErr = os.Stat(target)
	assert.True(t, errors.Is(statErr, os.ErrNotExist), "unpublish removes the target: %v", statErr)
	assert.True(t, processGone(healed), "the mount's process has exited when unpublish returns")
	c = g.counters(t)
	assert.Equal(t, int64(2), c.Sessions.Closed)
	assert.Equal(t, int64(0), c.Sessions.Open)
	require.NoError(t, plugin.unpublish(t, "vol-1", target))
	requireCode(t, codes.InvalidArgument, plugin.unpublish(t, "", target))
	assert.NotContains(t, plugin.proc.out.String(), testToken)
}

// TestCSIPluginRestart restarts the plugin under a mount: the mount keeps
// serving, the new plugin finds it (a republish changes nothing) and its
// unpublish closes the session.
func TestCSIPluginRestart(t *testing.T) {
	g := startGateway(t, "")
	state := filepath.Join(t.TempDir(), "state")
	first := startCSI(t, state)
	target := kubeletTarget(t)
	attrs := map[string]string{"service": g.URL, "datasource": "demo_grid"}
	require.NoError(t, first.publish(t, publishReq("vol-r", target, attrs)))
	pid := mountProcess(t, target)
	require.NotZero(t, pid)
	track(pid)
	t.Cleanup(func() { untrack(pid) })

	require.NoError(t, first.proc.cmd.Process.Kill())
	first.proc.wait(t, 10*time.Second)
	assertServesDemoGrid(t, target)

	second := startCSI(t, state)
	assert.Contains(t, second.proc.out.String(), "found a mount")
	require.NoError(t, second.publish(t, publishReq("vol-r", target, attrs)))
	assert.Equal(t, pid, mountProcess(t, target), "the running mount is kept")
	c := g.counters(t)
	assert.Equal(t, int64(1), c.Sessions.Acquired)

	require.NoError(t, second.unpublish(t, "vol-r", target))
	assert.True(t, processGone(pid), "unpublish waits for the process it did not start")
	c = g.counters(t)
	assert.Equal(t, int64(1), c.Sessions.Closed)
	assert.Equal(t, int64(0), c.Sessions.Open)
	_, err := os.Stat(target)
	assert.True(t, errors.Is(err, os.ErrNotExist))
}

// TestCSIWriteVolume publishes a write volume: what the pod writes is
// uploaded, and unpublish returns once the session is finalised.
func TestCSIWriteVolume(t *testing.T) {
	src := fixtureStore(t)
	files := storeFiles(t, src)
	dir := t.TempDir()
	g := startGateway(t, dir)
	plugin := startCSI(t, filepath.Join(t.TempDir(), "state"))
	target := kubeletTarget(t)
	req := publishReq("vol-w", target, map[string]string{"service": g.URL, "write": "true"})
	require.NoError(t, plugin.publish(t, req))
	runCmd(t, "cp", "-r", src, filepath.Join(target, "fresh_ds"))
	require.NoError(t, plugin.unpublish(t, "vol-w", target))
	c := g.counters(t)
	assert.Equal(t, int64(1), c.Writes.SessionsFinalised)
	assert.Equal(t, int64(len(files)), c.Writes.CommittedKeys)
	assert.Zero(t, c.Sessions.Open)
	sameBytes(t, src, filepath.Join(dir, "fresh_ds"))

	// A read-only volume (or access mode) mounts read-only whatever
	// write says.
	req.Readonly = true
	require.NoError(t, plugin.publish(t, req))
	err := os.Mkdir(filepath.Join(target, "other_ds"), 0o755)
	assert.True(t, errors.Is(err, syscall.EROFS), "want EROFS, got %v", err)
	require.NoError(t, plugin.unpublish(t, "vol-w", target))
}

// staticVolumes stands in for what an administrator writes in a static
// PersistentVolume (volumeHandle, volumeAttributes) for csi-sanity, whose
// node tests get their volumes from a Controller's CreateVolume. dmfs offers
// no Controller (nothing to provision), so the test serves this one on its
// own socket: it makes nothing, and only names the demo datasource.
type staticVolumes struct {
	csipb.UnimplementedIdentityServer
	csipb.UnimplementedControllerServer
	attrs map[string]string
}

func (s *staticVolumes) GetPluginInfo(context.Context, *csipb.GetPluginInfoRequest) (*csipb.GetPluginInfoResponse, error) {
	return &csipb.GetPluginInfoResponse{Name: "static-volumes.test", VendorVersion: "0"}, nil
}

func (s *staticVolumes) GetPluginCapabilities(context.Context, *csipb.GetPluginCapabilitiesRequest) (*csipb.GetPluginCapabilitiesResponse, error) {
	return &csipb.GetPluginCapabilitiesResponse{}, nil
}

func (s *staticVolumes) Probe(context.Context, *csipb.ProbeRequest) (*csipb.ProbeResponse, error) {
	return &csipb.ProbeResponse{}, nil
}

func (s *staticVolumes) CreateVolume(_ context.Context, req *csipb.CreateVolumeRequest) (*csipb.CreateVolumeResponse, error) {
	return &csipb.CreateVolumeResponse{Volume: &csipb.Volume{VolumeId: "static-" + req.GetName(), VolumeContext: s.attrs}}, nil
}

func (s *staticVolumes) DeleteVolume(context.Context, *csipb.DeleteVolumeRequest) (*csipb.DeleteVolumeResponse, error) {
	return &csipb.DeleteVolumeResponse{}, nil
}

// serveStaticVolumes serves s on a unix socket and returns its endpoint.
func serveStaticVolumes(t *testing.T, s *staticVolumes) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "static.sock")
	lis, err := net.Listen("unix", sock)
	require.NoError(t, err)
	srv := grpc.NewServer()
	csipb.RegisterIdentityServer(srv, s)
	csipb.RegisterControllerServer(srv, s)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return "unix://" + sock
}
