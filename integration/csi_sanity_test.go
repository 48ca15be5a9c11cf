package integration

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"
	"github.com/stretchr/testify/require"
)

// TestCSISanity runs the upstream csi-sanity suite against `dmfs csi`, with
// real FUSE mounts of the demo gateway's data. Skipped, because dmfs does
// not advertise them: every Controller and GroupController spec (no
// CONTROLLER_SERVICE; see staticVolumes), NodeStageVolume and
// NodeUnstageVolume (no STAGE_UNSTAGE_VOLUME), NodeGetVolumeStats,
// NodeExpandVolume, NodeGetVolumeHealth, NodeGetStorageHealth, the
// single-node-multi-writer spec, and "should work"/"should be idempotent"
// (they need CONTROLLER_SERVICE on the node's own Identity; the same
// lifecycle is TestCSIPublishLikeKubelet).
func TestCSISanity(t *testing.T) {
	if f := flag.Lookup("test.count"); f != nil && f.Value.String() != "1" {
		// Ginkgo refuses to run in a binary started with -count N > 1.
		t.Skip("csi-sanity (Ginkgo) runs only with go test -count=1")
	}
	g := startGateway(t, "")
	plugin := startCSI(t, filepath.Join(t.TempDir(), "state"))
	controller := serveStaticVolumes(t, &staticVolumes{attrs: map[string]string{"service": g.URL, "datasource": "demo_grid"}})

	dir := t.TempDir()
	secrets := filepath.Join(dir, "secrets.yaml")
	require.NoError(t, os.WriteFile(secrets, []byte("NodePublishVolumeSecret:\n  token: "+testToken+"\n"), 0o600))
	cfg := sanity.NewTestConfig()
	cfg.Address = plugin.endpoint
	cfg.ControllerAddress = controller
	cfg.TargetPath = filepath.Join(dir, "target")
	cfg.StagingPath = filepath.Join(dir, "staging")
	cfg.SecretsFile = secrets
	// Whatever a spec leaves mounted is unmounted at the end.
	trackMount(filepath.Join(cfg.TargetPath, "target"), true)
	t.Cleanup(func() { (&mount{Dir: filepath.Join(cfg.TargetPath, "target")}).unmountQuietly() })

	sc := sanity.GinkgoTest(&cfg)
	gomega.RegisterFailHandler(ginkgo.Fail)
	suite, reporter := ginkgo.GinkgoConfiguration()
	suite.SkipStrings = []string{`\[Controller Server\]`, `GroupController`}
	suite.Timeout = 3 * time.Minute
	reporter.NoColor = true
	ginkgo.RunSpecs(t, "dmfs csi sanity", suite, reporter)
	sc.Finalize()

	c := g.counters(t)
	require.Positive(t, c.Sessions.Acquired, "the suite's publish mounted the demo gateway")
	require.Equal(t, c.Sessions.Acquired, c.Sessions.Closed, "every session the suite's mounts opened is closed")
}
