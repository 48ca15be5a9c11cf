package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/gateway"
)

// serveLockedBuffer is a bytes.Buffer safe for the server goroutine and the
// test to share.
type serveLockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *serveLockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *serveLockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestServeHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := runServe(context.Background(), []string{"--help"}, &stdout, &stderr)
	assert.Equal(t, exitOK, code)
	for _, want := range []string{"--addr", "127.0.0.1:8765", "--addr-file", "--token ", "--token-file", "--demo ",
		"--demo-size", "--latency", "--fail-rate", "--seed", "(default 1)", "--session-ttl", "--max-sessions",
		"--fail-codes", "(default [503])", "--fail-retry-after", "(default 1s)", "--session-idle", "--head-without-length",
		"--log-level", `(default "info")`, "any non-empty token", "/_dmfs/counters included",
		"--staging-dir", "--max-write-size", `(default "1GiB")`, "--write-fail-rate", "--write-fail-keys",
		"--query-dir", "/oceanql/stage/", "data.parquet"} {
		assert.Contains(t, stdout.String(), want)
	}
	assert.Empty(t, stderr.String(), "help goes to stdout")
}

func TestServeUsageErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"no dir", nil, exitUsage, "missing DIR"},
		{"two dirs", []string{dir, dir}, exitUsage, "one folder expected"},
		{"unknown flag", []string{"--bogus", dir}, exitUsage, "bogus"},
		{"fail rate", []string{"--fail-rate", "1.5", dir}, exitUsage, "--fail-rate"},
		{"demo size", []string{"--demo", "--demo-size", "lots", dir}, exitUsage, "--demo-size"},
		{"demo size without demo", []string{"--demo-size", "1GiB", dir}, exitUsage, "needs --demo"},
		{"log level", []string{"--log-level", "loud", dir}, exitUsage, "--log-level"},
		{"negative latency", []string{"--latency", "-1s", dir}, exitUsage, "negative"},
		{"bad duration", []string{"--session-ttl", "soon", dir}, exitUsage, "session-ttl"},
		{"negative session idle", []string{"--session-idle", "-1s", dir}, exitUsage, "--session-idle"},
		{"fail code not a failure", []string{"--fail-codes", "502,404", dir}, exitUsage, "404 is not 429 or 5xx"},
		{"fail code not a number", []string{"--fail-codes", "bad", dir}, exitUsage, "fail-codes"},
		{"no fail code", []string{"--fail-codes", "", dir}, exitUsage, "--fail-codes"},
		{"retry after fraction", []string{"--fail-retry-after", "1500ms", dir}, exitUsage, "--fail-retry-after"},
		{"retry after negative", []string{"--fail-retry-after", "-1s", dir}, exitUsage, "--fail-retry-after"},
		{"missing folder", []string{"--addr", "127.0.0.1:0", filepath.Join(dir, "nope")}, exitFailure, "nope"},
		{"token and token file", []string{"--token", "a", "--token-file", filepath.Join(dir, "t"), dir}, exitFailure, "not both"},
		{"missing token file", []string{"--token-file", filepath.Join(dir, "t"), dir}, exitFailure, "--token-file"},
		{"bad address", []string{"--addr", "256.0.0.1:1", dir}, exitFailure, "listen"},
		{"write fail rate", []string{"--write-fail-rate", "2", dir}, exitUsage, "--write-fail-rate"},
		{"max write size", []string{"--max-write-size", "huge", dir}, exitUsage, "--max-write-size"},
		{"max write size zero", []string{"--max-write-size", "0", dir}, exitUsage, "--max-write-size"},
		{"write fail glob", []string{"--write-fail-keys", "[bad", dir}, exitUsage, "--write-fail-keys"},
		{"missing staging dir", []string{"--staging-dir", filepath.Join(dir, "nope"), dir}, exitFailure, "staging"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := runServe(context.Background(), tc.args, &stdout, &stderr)
			assert.Equal(t, tc.code, code)
			assert.Contains(t, stderr.String(), tc.msg)
			assert.Empty(t, stdout.String())
		})
	}
}

func TestServeDemoDir(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", cache)
	dir, err := serveDir(&serveOptions{demo: true}, nil)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(cache, "dmfs", "demo"), dir)

	t.Setenv("XDG_CACHE_HOME", "")
	t.Setenv("HOME", "/home/someone")
	dir, err = serveDir(&serveOptions{demo: true}, nil)
	require.NoError(t, err)
	assert.Equal(t, "/home/someone/.cache/dmfs/demo", dir)

	dir, err = serveDir(&serveOptions{demo: true}, []string{"/x"})
	require.NoError(t, err)
	assert.Equal(t, "/x", dir)
}

// startServe runs runServe in the background and waits for --addr-file.
func startServe(t *testing.T, args ...string) (addr string, stdout, stderr *serveLockedBuffer, stop func() int) {
	t.Helper()
	addrFile := filepath.Join(t.TempDir(), "addr")
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr = &serveLockedBuffer{}, &serveLockedBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- runServe(ctx, append([]string{"--addr", "127.0.0.1:0", "--addr-file", addrFile}, args...), stdout, stderr)
	}()
	// The demo data takes about 25 s to generate under -race on 2 cores.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		b, err := os.ReadFile(addrFile)
		if err == nil {
			addr = string(b)
			break
		}
		select {
		case code := <-done:
			cancel()
			t.Fatalf("dmfs serve exited with %d before it was ready: %s", code, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("no address file after 2m: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop = func() int {
		cancel()
		select {
		case code := <-done:
			return code
		case <-time.After(5 * time.Second):
			t.Fatal("dmfs serve did not stop within 5s of cancellation")
			return -1
		}
	}
	return addr, stdout, stderr, stop
}

func serveGet(t *testing.T, url string, hdr ...string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

func TestServeDemoWithTokenFile(t *testing.T) {
	const token = "file-token-123"
	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(token+"\n"), 0o600))
	t.Setenv("DATAMESH_TOKEN", "env-token-ignored")
	demo := t.TempDir()

	addr, stdout, stderr, stop := startServe(t, "--demo", "--token-file", tokenFile, "--latency", "1ms", demo)
	assert.Regexp(t, `^127\.0\.0\.1:\d+$`, addr)
	base := "http://" + addr
	assert.Contains(t, stdout.String(), base)

	assert.Equal(t, 200, serveGet(t, base+"/session/", "X-DATAMESH-TOKEN", token))
	assert.Equal(t, 401, serveGet(t, base+"/session/", "X-DATAMESH-TOKEN", "env-token-ignored"))
	assert.Equal(t, 401, serveGet(t, base+"/session/"))
	assert.Equal(t, 200, serveGet(t, base+"/datasource/demo_grid", "Authorization", "Token "+token))
	assert.Equal(t, 401, serveGet(t, base+"/_dmfs/counters"), "the counters need the token too")
	assert.Equal(t, 200, serveGet(t, base+"/_dmfs/counters", "X-DATAMESH-TOKEN", token))

	assert.Equal(t, exitOK, stop())
	_, err := os.Stat(filepath.Join(demo, "demo_grid", ".zmetadata"))
	assert.NoError(t, err)
	logs := stderr.String()
	assert.Contains(t, logs, "route=session_acquire")
	assert.NotContains(t, logs, token)
}

func TestServeEnvTokenAndAnyToken(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "tiny_store"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tiny_store", ".zgroup"), []byte(`{"zarr_format":2}`), 0o644))

	t.Setenv("DATAMESH_TOKEN", "env-token")
	addr, _, stderr, stop := startServe(t, dir)
	assert.Equal(t, 200, serveGet(t, "http://"+addr+"/datasource/tiny_store", "X-DATAMESH-TOKEN", "env-token"))
	assert.Equal(t, 401, serveGet(t, "http://"+addr+"/datasource/tiny_store", "X-DATAMESH-TOKEN", "other"))
	assert.Equal(t, exitOK, stop())
	assert.NotContains(t, stderr.String(), "env-token")

	t.Setenv("DATAMESH_TOKEN", "")
	addr, _, stderr, stop = startServe(t, "--log-level", "warn", dir)
	assert.Equal(t, 200, serveGet(t, "http://"+addr+"/datasource/tiny_store", "X-DATAMESH-TOKEN", "anything"))
	assert.Equal(t, 401, serveGet(t, "http://"+addr+"/datasource/tiny_store"))
	assert.Equal(t, exitOK, stop())
	assert.Contains(t, stderr.String(), "any non-empty token is accepted")
	assert.False(t, strings.Contains(stderr.String(), "route="), "info lines hidden at --log-level warn")
}

// parseServeConfig parses serve flags into the gateway's Config.
func parseServeConfig(t *testing.T, args ...string) gateway.Config {
	t.Helper()
	var opts serveOptions
	flags := pflag.NewFlagSet("test", pflag.ContinueOnError)
	opts.addFlags(flags)
	require.NoError(t, flags.Parse(args))
	return opts.config("/d", "tok", nil)
}

func TestServeFidelityFlags(t *testing.T) {
	parse := func(args ...string) gateway.Config { return parseServeConfig(t, args...) }
	def := parse()
	assert.Equal(t, []int{503}, def.FailCodes)
	assert.Equal(t, time.Second, def.RetryAfter)
	assert.Zero(t, def.SessionIdle)
	assert.False(t, def.HeadWithoutLength)

	cfg := parse("--fail-rate", "0.2", "--fail-codes", "502,503,504,429", "--fail-retry-after", "3s",
		"--session-idle", "45s", "--head-without-length")
	assert.Equal(t, 0.2, cfg.FailRate)
	assert.Equal(t, []int{502, 503, 504, 429}, cfg.FailCodes)
	assert.Equal(t, 3*time.Second, cfg.RetryAfter)
	assert.Equal(t, 45*time.Second, cfg.SessionIdle)
	assert.True(t, cfg.HeadWithoutLength)
	assert.Negative(t, parse("--fail-retry-after", "0s").RetryAfter, "0s means Retry-After: 0, not the default")

	// Through a running gateway: every chunk request fails with 429 and
	// says when to come back.
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "tiny.store"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tiny.store", ".zgroup"), []byte(`{"zarr_format":2}`), 0o644))
	t.Setenv("DATAMESH_TOKEN", "tok")
	addr, _, _, stop := startServe(t, "--fail-rate", "1", "--fail-codes", "429", "--fail-retry-after", "2s", dir)
	base := "http://" + addr
	get := func(path string, hdr ...string) (*http.Response, []byte) {
		req, err := http.NewRequest(http.MethodGet, base+path, nil)
		require.NoError(t, err)
		req.Header.Set("X-DATAMESH-TOKEN", "tok")
		req.Header.Set("Authorization", "Token proxy") // X-DATAMESH-TOKEN wins
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, b
	}
	resp, b := get("/session/")
	require.Equal(t, 200, resp.StatusCode)
	var sess struct{ ID string }
	require.NoError(t, json.Unmarshal(b, &sess))
	resp, _ = get("/datasource/tiny.store")
	assert.Equal(t, 200, resp.StatusCode, "a dotted id is served")
	chunk, _ := get("/zarr/tiny.store/.zgroup", "X-DATAMESH-SESSIONID", sess.ID)
	assert.Equal(t, 429, chunk.StatusCode)
	assert.Equal(t, "2", chunk.Header.Get("Retry-After"))
	assert.Equal(t, exitOK, stop())
}

func TestServeWriteFlags(t *testing.T) {
	parse := func(args ...string) gateway.Config { return parseServeConfig(t, args...) }
	def := parse()
	assert.Zero(t, def.WriteFailRate)
	assert.Empty(t, def.WriteFailKeys)
	assert.Empty(t, def.StagingDir)
	cfg := parse("--write-fail-rate", "0.1", "--write-fail-keys", "u10/*", "--write-fail-keys", "a,b", "--staging-dir", "/s")
	assert.Equal(t, 0.1, cfg.WriteFailRate)
	assert.Equal(t, []string{"u10/*", "a,b"}, cfg.WriteFailKeys, "repeatable, never split on commas")
	assert.Equal(t, "/s", cfg.StagingDir)

	// Through a running gateway: a write staged, bounded, finalised, read
	// back by a fresh session, and the staging folder gone at exit.
	dir, staging := t.TempDir(), t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "base"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "base", ".zgroup"), []byte(`{"zarr_format":2}`), 0o644))
	t.Setenv("DATAMESH_TOKEN", "tok")
	addr, _, _, stop := startServe(t, "--staging-dir", staging, "--max-write-size", "4", dir)
	do := func(method, path, body string, hdr ...string) (int, []byte) {
		req, err := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("X-DATAMESH-TOKEN", "tok")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, b
	}
	session := func() string {
		code, b := do(http.MethodGet, "/session/", "")
		require.Equal(t, 200, code)
		var sess struct{ ID string }
		require.NoError(t, json.Unmarshal(b, &sess))
		return sess.ID
	}
	a := session()
	code, _ := do(http.MethodPost, "/zarr/new_run/.zgroup", "{}", "X-DATAMESH-SESSIONID", a)
	assert.Equal(t, 200, code)
	code, _ = do(http.MethodPost, "/zarr/new_run/big", "12345", "X-DATAMESH-SESSIONID", a)
	assert.Equal(t, 413, code)
	code, _ = do(http.MethodDelete, "/session/"+a+"?finalise_write=true", "", "X-DATAMESH-SESSIONID", a)
	assert.Equal(t, 204, code)
	code, b := do(http.MethodGet, "/zarr/new_run/.zgroup", "", "X-DATAMESH-SESSIONID", session())
	assert.Equal(t, 200, code)
	assert.Equal(t, "{}", string(b))
	assert.Equal(t, exitOK, stop())
	left, err := os.ReadDir(staging)
	require.NoError(t, err)
	assert.Empty(t, left, "the server's staging folder is removed at exit")
}

func TestServeQueryDir(t *testing.T) {
	assert.Empty(t, parseServeConfig(t).QueryDir)
	assert.Equal(t, "/q", parseServeConfig(t, "--query-dir", "/q").QueryDir)

	// A tiny dataset: 3 hourly steps of one variable, uncompressed.
	dir := t.TempDir()
	files := map[string]string{
		".zgroup":      `{"zarr_format":2}`,
		"time/.zarray": `{"zarr_format":2,"shape":[3],"chunks":[3],"dtype":"<i8","compressor":null,"fill_value":null,"order":"C","filters":null}`,
		"time/.zattrs": `{"_ARRAY_DIMENSIONS":["time"],"units":"hours since 2020-01-01 00:00:00"}`,
		"x/.zarray":    `{"zarr_format":2,"shape":[3],"chunks":[2],"dtype":"|u1","compressor":null,"fill_value":0,"order":"C","filters":null}`,
		"x/.zattrs":    `{"_ARRAY_DIMENSIONS":["time"]}`,
		"time/0":       string([]byte{0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0}),
		"x/0":          "\x0a\x0b",
		"x/1":          "\x0c\x00",
	}
	for name, content := range files {
		p := filepath.Join(dir, "series", filepath.FromSlash(name))
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	}
	t.Setenv("DATAMESH_TOKEN", "tok")
	t.Setenv("TMPDIR", t.TempDir())
	do := func(addr, method, path, body, session string) (int, []byte) {
		req, err := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("X-DATAMESH-TOKEN", "tok")
		if session != "" {
			req.Header.Set("X-DATAMESH-SESSIONID", session)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, b
	}
	session := func(addr string) string {
		code, b := do(addr, http.MethodGet, "/session/", "", "")
		require.Equal(t, 200, code)
		var sess struct{ ID string }
		require.NoError(t, json.Unmarshal(b, &sess))
		return sess.ID
	}
	stageSeries := func(addr string) string {
		code, b := do(addr, http.MethodPost, "/oceanql/stage/",
			`{"datasource":"series","timefilter":{"type":"range","times":["2020-01-01T01:00:00",null]}}`, session(addr))
		require.Equal(t, 200, code, string(b))
		var st struct{ QHash, Container string }
		require.NoError(t, json.Unmarshal(b, &st))
		assert.Equal(t, "dataset", st.Container)
		return st.QHash
	}

	// With --query-dir: the result is there, and served after a restart.
	qdir := t.TempDir()
	addr, _, _, stop := startServe(t, "--query-dir", qdir, dir)
	qhash := stageSeries(addr)
	assert.FileExists(t, filepath.Join(qdir, qhash, ".zmetadata"))
	assert.Equal(t, exitOK, stop())
	addr, _, _, stop = startServe(t, "--query-dir", qdir, dir)
	code, b := do(addr, http.MethodGet, "/zarr/query/"+qhash+"/x/0", "", session(addr))
	assert.Equal(t, 200, code)
	assert.Equal(t, []byte{0x0b, 0x0c}, b, "times 1 and 2 of x, one chunk of 2")
	assert.Equal(t, exitOK, stop())

	// Without: a temporary folder, removed at exit.
	addr, _, _, stop = startServe(t, dir)
	stageSeries(addr)
	tmp, err := os.ReadDir(os.Getenv("TMPDIR"))
	require.NoError(t, err)
	var found bool
	for _, e := range tmp {
		found = found || strings.HasPrefix(e.Name(), "dmfs-queries-")
	}
	assert.True(t, found)
	assert.Equal(t, exitOK, stop())
	tmp, err = os.ReadDir(os.Getenv("TMPDIR"))
	require.NoError(t, err)
	for _, e := range tmp {
		assert.False(t, strings.HasPrefix(e.Name(), "dmfs-queries-"), "removed at exit: %s", e.Name())
	}
}
