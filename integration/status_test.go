package integration

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/mountstat"
)

// dmfsStatus runs `dmfs status --json mp` in env and returns its one mount.
func dmfsStatus(t *testing.T, env []string, mp string) mountstat.Mount {
	t.Helper()
	cmd := exec.Command(dmfsBin, "status", "--json", mp)
	// A -race binary sleeps 1 s at exit by default: the copy is watched
	// by many of these.
	cmd.Env = append(os.Environ(), append(env, "GORACE=atexit_sleep_ms=0")...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "dmfs status: %s", stderr.String())
	var doc mountstat.Status
	require.NoError(t, json.Unmarshal(out, &doc), "%s", out)
	require.Equal(t, mountstat.Version, doc.Version)
	require.Len(t, doc.Mounts, 1, "%s", out)
	return doc.Mounts[0]
}

// figures sums a snapshot's request totals over kinds.
func figures(m mountstat.Mount, kinds ...string) int64 {
	var n int64
	for _, k := range kinds {
		n += m.Requests[k].Total
	}
	return n
}

func TestStatusShowsLiveFiguresDuringACopy(t *testing.T) {
	// One chunk at a time, 10 ms each: the copy lasts long enough to be
	// watched.
	g := startGateway(t, "", "--latency", "10ms")
	env := []string{"XDG_RUNTIME_DIR=" + t.TempDir()}
	m := mountForegroundEnv(t, g, env, "--readahead", "0", "--metrics-addr", "127.0.0.1:0")

	before := dmfsStatus(t, env, m.Dir)
	require.Equal(t, mountstat.StateRunning, before.State, before.Problem)
	assert.Equal(t, m.Dir, before.Mountpoint)
	assert.Equal(t, m.proc.cmd.Process.Pid, before.PID)
	assert.Equal(t, g.URL, before.Service)
	assert.Equal(t, g.URL, before.Gateway)
	assert.NotEmpty(t, before.Session.ID)
	assert.True(t, before.Session.EndTime.After(time.Now().Add(50*time.Minute)), "a one-hour session")
	assert.Equal(t, int64(1), before.Requests["session"].Total, "the acquire")
	assert.Nil(t, before.Uploads, "read-only")
	require.Regexp(t, `^http://127\.0\.0\.1:\d+/metrics$`, before.Metrics)

	g.resetCounters(t)
	dst := filepath.Join(t.TempDir(), "copy")
	cp := exec.Command("cp", "-r", filepath.Join(m.Dir, "demo_grid"), dst)
	var cpOut bytes.Buffer
	cp.Stdout, cp.Stderr = &cpOut, &cpOut
	require.NoError(t, cp.Start())
	copied := make(chan error, 1)
	go func() { copied <- cp.Wait() }()
	var seen []int64 // chunk requests, as status reported them during the copy
	var cpErr error
watch:
	for {
		select {
		case cpErr = <-copied:
			break watch
		default:
		}
		seen = append(seen, dmfsStatus(t, env, m.Dir).Requests["chunk"].Total)
		time.Sleep(50 * time.Millisecond)
	}
	require.NoError(t, cpErr, cpOut.String())
	t.Logf("chunk requests seen by dmfs status during the copy: %v", seen)
	after := dmfsStatus(t, env, m.Dir)
	c := g.counters(t)

	// The figures moved while the copy ran, and only up.
	final := after.Requests["chunk"].Total
	var midway bool
	for i, n := range seen {
		midway = midway || (n > before.Requests["chunk"].Total && n < final)
		if i > 0 {
			assert.GreaterOrEqual(t, n, seen[i-1], "a counter never goes down")
		}
	}
	assert.True(t, midway, "status showed the copy in progress: chunk requests seen %v, before %d, after %d",
		seen, before.Requests["chunk"].Total, final)

	// They agree with what the gateway answered.
	assert.Equal(t, c.ByRoute["zarr_get"], figures(after, "chunk", "metadata")-figures(before, "chunk", "metadata"))
	assert.Equal(t, c.ByRoute["zarr_head"], figures(after, "head")-figures(before, "head"))
	assert.Equal(t, c.ByRoute["zarr_list"], figures(after, "listing")-figures(before, "listing"))
	assert.Positive(t, final-before.Requests["chunk"].Total)
	for _, r := range after.Requests {
		assert.Zero(t, r.Errors)
		assert.Zero(t, r.InFlight, "nothing in flight once the copy is done")
	}
	assert.Greater(t, after.Cache.Bytes, before.Cache.Bytes)
	assert.Greater(t, after.Cache.Entries, before.Cache.Entries)
	assert.Greater(t, after.Cache.Misses, before.Cache.Misses)
	assert.Equal(t, before.Session.ID, after.Session.ID)

	// The metrics endpoint serves the same figures as Prometheus text.
	resp, err := http.Get(after.Metrics)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	for _, name := range []string{"dmfs_cache_bytes", "dmfs_cache_hits_total", "dmfs_cache_misses_total",
		"dmfs_requests_total", "dmfs_request_errors_total", "dmfs_requests_in_flight", "dmfs_session_end_time_seconds",
		"process_resident_memory_bytes"} {
		assert.Contains(t, fams, name)
	}
	assert.Equal(t, dto.MetricType_COUNTER, fams["dmfs_requests_total"].GetType())
	assert.Equal(t, dto.MetricType_GAUGE, fams["dmfs_cache_bytes"].GetType())
	var chunkMetric float64 = -1
	for _, mt := range fams["dmfs_requests_total"].Metric {
		labels := map[string]string{}
		for _, l := range mt.Label {
			labels[l.GetName()] = l.GetValue()
		}
		assert.Equal(t, g.URL, labels["service"])
		assert.Equal(t, m.Dir, labels["mountpoint"])
		if labels["kind"] == "chunk" {
			chunkMetric = mt.GetCounter().GetValue()
		}
	}
	assert.Equal(t, float64(final), chunkMetric, "metrics and status agree")
}

func TestStatusOfABackgroundWriteMountAndOfItsDeath(t *testing.T) {
	requireFUSE(t)
	g := startGateway(t, "")
	env := []string{"XDG_RUNTIME_DIR=" + t.TempDir()}
	mp := trackedMountPoint(t)
	cmd := exec.Command(dmfsBin, "mount", "--service", g.URL, "--write", "--write-back", "1h", mp)
	cmd.Env = append(os.Environ(), append([]string{"DATAMESH_TOKEN=" + testToken}, env...)...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, string(out))

	st := dmfsStatus(t, env, mp)
	require.Equal(t, mountstat.StateRunning, st.State, st.Problem)
	assert.True(t, st.Write)
	assert.True(t, strings.HasPrefix(st.Log, filepath.Join(strings.TrimPrefix(env[0], "XDG_RUNTIME_DIR="), "dmfs")+"/"),
		"a background mount logs in the state folder: %s", st.Log)
	require.NotNil(t, st.Uploads)
	assert.Zero(t, st.Uploads.Pending)
	assert.Empty(t, st.Metrics, "no metrics endpoint without --metrics-addr")
	pid := st.PID
	require.Positive(t, pid)
	track(pid)
	t.Cleanup(func() { untrack(pid) })

	// A file written waits out --write-back: one upload pending.
	require.NoError(t, os.Mkdir(filepath.Join(mp, "status_run"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(mp, "status_run", "a"), []byte("hello"), 0o644))
	st = dmfsStatus(t, env, mp)
	require.NotNil(t, st.Uploads)
	assert.Equal(t, int64(1), st.Uploads.Pending)
	assert.Equal(t, int64(5), st.Uploads.SpoolBytes)

	// Human output names the mount, its log and its uploads.
	human := exec.Command(dmfsBin, "status")
	human.Env = append(os.Environ(), append(env, "GORACE=atexit_sleep_ms=0")...)
	text, err := human.Output()
	require.NoError(t, err)
	assert.Contains(t, string(text), mp+"  running (pid ")
	assert.Contains(t, string(text), "uploads   1 pending")
	assert.Contains(t, string(text), st.Log)

	// Killed: shown as dead, not an error.
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	require.Eventually(t, func() bool { return !running(pid) }, 10*time.Second, 20*time.Millisecond)
	st = dmfsStatus(t, env, mp)
	assert.Equal(t, mountstat.StateDead, st.State)
	assert.Equal(t, pid, st.PID)
	assert.Contains(t, st.Problem, "dmfs unmount "+mp)
	assert.NotEmpty(t, st.Session.ID, "the session it left open")
	assert.Nil(t, st.Cache)

	out2, code := dmfsUnmount(t, g, env, mp)
	assert.Equal(t, 8, code, "a killed write mount finalised nothing: %s", out2)
	assert.False(t, isMounted(mp))
}
