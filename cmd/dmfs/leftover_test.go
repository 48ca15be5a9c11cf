package main

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/internal/statedir"
	"github.com/oceanum-dmfs/dmfs/session"
)

const testToken = "unit-test-token-value"

// fakeGateway records every request it gets (method, path, whether the
// token came along) and answers 204.
type fakeGateway struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []string
}

func newFakeGateway(t *testing.T) *fakeGateway {
	t.Helper()
	g := &fakeGateway{}
	g.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		tok := ""
		if r.Header.Get("X-DATAMESH-TOKEN") == testToken {
			tok = " with token"
		}
		g.reqs = append(g.reqs, r.Method+" "+r.URL.Path+tok)
		g.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(g.Close)
	return g
}

func (g *fakeGateway) requests() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.reqs...)
}

// goneProcess returns the pid of a process that has exited.
func goneProcess(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	require.NoError(t, cmd.Run())
	return cmd.Process.Pid
}

func TestLeftoverSessionIsClosedOnlyAtTheConfiguredGateway(t *testing.T) {
	configured, other := newFakeGateway(t), newFakeGateway(t)
	end := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	cases := []struct {
		name       string
		recGateway string
		wantConfig []string // requests the configured gateway gets
		logs       []string
		kept       bool // the record stays
	}{
		{"at the configured gateway", configured.URL, []string{"DELETE /session/s1 with token"},
			[]string{"closed the session a killed mount left open"}, false},
		{"at another gateway", other.URL, nil,
			[]string{"not closed", other.URL, configured.URL, end.Format(time.RFC3339)}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			configured.reqs, other.reqs = nil, nil
			dir := openStateDir(t)
			mp := "/mnt/x"
			rec := sessionRecord{Gateway: c.recGateway, ID: "s1", EndTime: end, PID: goneProcess(t)}
			require.NoError(t, writeSessionRecord(dir, mp, rec))
			client, err := session.New(session.Config{Token: testToken, Service: configured.URL, Gateway: configured.URL})
			require.NoError(t, err)
			var logged bytes.Buffer
			got, ok := leftoverSession(dir, mp, slog.New(slog.NewTextHandler(&logged, nil)))
			require.True(t, ok)
			closeLeftoverSession(context.Background(), client, configured.URL, dir, mp, got, slog.New(slog.NewTextHandler(&logged, nil)))

			assert.Equal(t, c.wantConfig, configured.requests())
			assert.Empty(t, other.requests(), "the gateway read from the record gets nothing")
			for _, s := range c.logs {
				assert.Contains(t, logged.String(), s)
			}
			_, err = os.Lstat(dir.File(sessionRecordName(mp)))
			assert.Equal(t, c.kept, err == nil, "record kept: %v", err)
		})
	}
}

func TestUnmountClosesALeftoverSessionOnlyAtTheConfiguredGateway(t *testing.T) {
	configured, other := newFakeGateway(t), newFakeGateway(t)
	// The token as for `dmfs mount`: --token-file, DATAMESH_TOKEN_FILE.
	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(testToken+"\n"), 0o600))
	cases := []struct {
		name       string
		recGateway string
		env        map[string]string
		args       []string
		wantConfig []string
		out        []string
	}{
		{"--service names the record's gateway", "configured", map[string]string{"DATAMESH_TOKEN": testToken},
			[]string{"--service", configured.URL}, []string{"DELETE /session/s1 with token"},
			[]string{"closed the session a killed mount left open"}},
		{"DATAMESH_GATEWAY names the record's gateway", "configured",
			map[string]string{"DATAMESH_TOKEN": testToken, "DATAMESH_GATEWAY": configured.URL},
			nil, []string{"DELETE /session/s1 with token"}, []string{"closed the session"}},
		{"the record names another gateway", "other", map[string]string{"DATAMESH_TOKEN": testToken},
			[]string{"--service", configured.URL}, nil, []string{"not closed", "it expires at", "--service or --gateway"}},
		{"nothing configured: the default gateway is not the record's", "other", map[string]string{"DATAMESH_TOKEN": testToken},
			nil, nil, []string{"not closed", session.DefaultService}},
		{"--token-file", "configured", map[string]string{"DATAMESH_TOKEN": ""},
			[]string{"--service", configured.URL, "--token-file", tokenFile}, []string{"DELETE /session/s1 with token"},
			[]string{"closed the session a killed mount left open"}},
		{"DATAMESH_TOKEN_FILE", "configured", map[string]string{"DATAMESH_TOKEN": "", "DATAMESH_TOKEN_FILE": tokenFile},
			[]string{"--service", configured.URL}, []string{"DELETE /session/s1 with token"},
			[]string{"closed the session a killed mount left open"}},
		{"no token", "configured", map[string]string{"DATAMESH_TOKEN": ""},
			[]string{"--service", configured.URL}, nil, []string{"left session", "DATAMESH_TOKEN"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			configured.reqs, other.reqs = nil, nil
			t.Setenv("DATAMESH_GATEWAY", "")
			t.Setenv("DATAMESH_SERVICE", "")
			t.Setenv("DATAMESH_TOKEN_FILE", "")
			dir := openStateDir(t)
			mp := t.TempDir() // not mounted: the leftover is all there is
			gw := configured.URL
			if c.recGateway == "other" {
				gw = other.URL
			}
			rec := sessionRecord{Gateway: gw, ID: "s1", EndTime: time.Now().Add(time.Hour), PID: goneProcess(t)}
			require.NoError(t, writeSessionRecord(dir, mp, rec))

			code, _, stderr := runArgs(t, c.env, append(append([]string{"unmount"}, c.args...), mp)...)
			assert.Equal(t, exitNotMounted, code, stderr)
			assert.Equal(t, c.wantConfig, configured.requests())
			assert.Empty(t, other.requests(), "the gateway read from the record gets nothing")
			for _, s := range c.out {
				assert.Contains(t, stderr, s)
			}
			assert.NotContains(t, stderr, testToken)
			assert.NotContains(t, stderr, "level=", "messages, not log lines")
		})
	}
}

func TestUnmountWarnsAboutAnUnsafeStateFolderAndGoesOn(t *testing.T) {
	runtime := t.TempDir()
	t.Setenv("XDG_RUNTIME_DIR", runtime)
	require.NoError(t, os.Symlink(t.TempDir(), filepath.Join(runtime, "dmfs")))
	code, _, stderr := runArgs(t, nil, "unmount", t.TempDir())
	assert.Equal(t, exitNotMounted, code)
	assert.Contains(t, stderr, "state folder not used")
	assert.Contains(t, stderr, "symbolic link")
	_, err := statedir.Open(false)
	assert.ErrorIs(t, err, statedir.ErrUnsafe)
}
