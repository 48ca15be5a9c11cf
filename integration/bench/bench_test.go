package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"1GiB", 1 << 30, false},
		{"64MiB", 64 << 20, false},
		{"1.5KiB", 1536, false},
		{"512M", 512 << 20, false}, // as --cache-size reads it
		{"4096", 4096, false},
		{"0", 0, true},
		{"-1MiB", 0, true},
		{"lots", 0, true},
		{"", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseSize(tt.in)
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestParseLatencies(t *testing.T) {
	got, err := parseLatencies("20ms, 0ms,1s")
	require.NoError(t, err)
	assert.Equal(t, []time.Duration{20 * time.Millisecond, 0, time.Second}, got)
	for _, bad := range []string{"", "20", "-5ms", "20ms,,0ms"} {
		_, err := parseLatencies(bad)
		assert.Error(t, err, bad)
	}
}

func TestParseOptions(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"needs dmfs", []string{"--size", "64MiB"}, "--dmfs is required"},
		{"bad size", []string{"--dmfs", "x", "--size", "big"}, "--size"},
		{"bad latency", []string{"--dmfs", "x", "--latency", "fast"}, "--latency"},
		{"zero runs", []string{"--dmfs", "x", "--runs", "0"}, "at least 1"},
		{"stray argument", []string{"--dmfs", "x", "extra"}, "unexpected arguments"},
		{"ok", []string{"--dmfs", "x", "--runs", "2", "--latency", "5ms"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseOptions(tt.args, io.Discard)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, 2, o.runs)
			assert.Equal(t, 16, o.clients)
			assert.Equal(t, []time.Duration{5 * time.Millisecond}, o.latencies)
			assert.Equal(t, "go run ./integration/bench --dmfs x --runs 2 --latency 5ms", o.command)
		})
	}
}

func TestSummarize(t *testing.T) {
	tests := []struct {
		name string
		in   []float64
		want summary
		ok   bool
	}{
		{"empty", nil, summary{}, false},
		{"one", []float64{2}, summary{2, 2, 2}, true},
		{"odd", []float64{5, 1, 3}, summary{3, 1, 5}, true},
		{"even", []float64{4, 1, 2, 10}, summary{3, 1, 10}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := summarize(tt.in)
			assert.Equal(t, tt.ok, ok)
			assert.Equal(t, tt.want, got)
		})
	}
	in := []float64{3, 1, 2}
	summarize(in)
	assert.Equal(t, []float64{3, 1, 2}, in, "the input is not reordered")
	assert.Equal(t, "2.00x (1.00–3.00)", summary{2, 1, 3}.format("x", 2))
	assert.Equal(t, "7 s", summary{7, 7, 7}.format(" s", 0))
}

func TestParseListing(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    []string
		wantErr bool
	}{
		{"files and folders", `<li><a href=".zarray">.zarray</a></li><li><a href="0.0">0.0</a></li><li><a href="c/">c/</a></li>`,
			[]string{".zarray", "0.0", "c/"}, false},
		{"escaped", `<a href="./a:b">a:b</a><a href="sp%20ace">x</a><a href="q&amp;a">q</a>`, []string{"a:b", "sp ace", "q&a"}, false},
		{"empty", `<ul></ul>`, nil, false},
		{"parent", `<a href="../">..</a>`, nil, true},
		{"nested path", `<a href="a/b">x</a>`, nil, true},
		{"bad escape", `<a href="%zz">x</a>`, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseListing([]byte(tt.body))
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestIsMetadataKey(t *testing.T) {
	for key, want := range map[string]bool{
		".zmetadata": true, "u10/.zarray": true, "g/a/zarr.json": true,
		"u10/0.0.0": false, "c/0/1": false, "zarr.jsonx": false,
	} {
		assert.Equal(t, want, isMetadataKey(key), key)
	}
}

// fakeGateway serves a tiny datasource over the Datamesh protocol and
// records every zarr request.
type fakeGateway struct {
	mu     sync.Mutex
	files  map[string]string
	zarr   []string // "METHOD KEY" per zarr request
	closed []string
}

const testToken = "tok-123"

func (g *fakeGateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-DATAMESH-TOKEN") != testToken || r.Header.Get("Authorization") != "Token "+testToken {
		http.Error(w, `{"detail":"bad token"}`, http.StatusUnauthorized)
		return
	}
	switch {
	case r.URL.Path == "/session/":
		fmt.Fprint(w, `{"id":"s-1"}`)
		return
	case strings.HasPrefix(r.URL.Path, "/session/") && r.Method == http.MethodDelete:
		g.mu.Lock()
		g.closed = append(g.closed, strings.TrimPrefix(r.URL.Path, "/session/"))
		g.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	key, ok := strings.CutPrefix(r.URL.Path, "/zarr/ds/")
	if !ok || r.Header.Get("X-DATAMESH-SESSIONID") != "s-1" {
		http.Error(w, "no", http.StatusUnauthorized)
		return
	}
	g.mu.Lock()
	g.zarr = append(g.zarr, r.Method+" "+key)
	g.mu.Unlock()
	if key == "" || strings.HasSuffix(key, "/") {
		seen := map[string]bool{}
		var b strings.Builder
		for k := range g.files {
			rest, ok := strings.CutPrefix(k, key)
			if !ok {
				continue
			}
			name, _, nested := strings.Cut(rest, "/")
			if nested {
				name += "/"
			}
			if !seen[name] {
				seen[name] = true
				fmt.Fprintf(&b, `<li><a href="%s">%s</a></li>`, name, name)
			}
		}
		fmt.Fprint(w, b.String())
		return
	}
	body, ok := g.files[key]
	if !ok {
		http.NotFound(w, r)
		return
	}
	fmt.Fprint(w, body)
}

func TestGatewayClientListsAndFetchesEveryKeyOnce(t *testing.T) {
	g := &fakeGateway{files: map[string]string{
		".zmetadata": "{}", "u/.zarray": "{}", "u/0.0": "aaaa", "u/0.1": "bb", "v/c/0/0": "cccccc",
	}}
	ts := httptest.NewServer(g)
	defer ts.Close()
	c := newGatewayClient(strings.TrimPrefix(ts.URL, "http://"), testToken, 4)
	ctx := context.Background()

	sess, err := c.acquireSession(ctx)
	require.NoError(t, err)
	require.Equal(t, "s-1", sess)
	keys, err := c.listKeys(ctx, "ds", sess)
	require.NoError(t, err)
	assert.Equal(t, []string{".zmetadata", "u/.zarray", "u/0.0", "u/0.1", "v/c/0/0"}, keys)

	g.mu.Lock()
	g.zarr = nil
	g.mu.Unlock()
	res, err := c.fetchAll(ctx, "ds", sess, keys, 3)
	require.NoError(t, err)
	assert.Equal(t, int64(4+2+2+2+6), res.Bytes)
	assert.Equal(t, map[string]int64{".zmetadata": 2, "u/.zarray": 2, "u/0.0": 4, "u/0.1": 2, "v/c/0/0": 6}, res.Sizes)
	got := slices.Clone(g.zarr)
	slices.Sort(got)
	assert.Equal(t, []string{"GET .zmetadata", "GET u/.zarray", "GET u/0.0", "GET u/0.1", "GET v/c/0/0"}, got)

	require.NoError(t, c.closeSession(ctx, sess))
	assert.Equal(t, []string{"s-1"}, g.closed)
}

func TestGatewayClientErrorsNameTheKeyNotTheToken(t *testing.T) {
	g := &fakeGateway{files: map[string]string{"a/0": "x"}}
	ts := httptest.NewServer(g)
	defer ts.Close()
	c := newGatewayClient(strings.TrimPrefix(ts.URL, "http://"), testToken, 2)
	_, err := c.fetchAll(context.Background(), "ds", "s-1", []string{"a/0", "a/missing"}, 2)
	require.ErrorContains(t, err, "a/missing")
	assert.NotContains(t, err.Error(), testToken)

	bad := newGatewayClient(strings.TrimPrefix(ts.URL, "http://"), "wrong-token", 2)
	_, err = bad.acquireSession(context.Background())
	require.ErrorContains(t, err, "status 401")
	assert.NotContains(t, err.Error(), "wrong-token")

	_, err = c.fetchAll(context.Background(), "ds", "s-1", []string{"a/0"}, 0)
	require.Error(t, err)
}

func TestCountersKeyRequests(t *testing.T) {
	c := counters{ZarrKeys: map[string]int64{
		"ds/t2m/0.0 GET": 2, "ds/t2m/0.1 HEAD": 1, "ds/t2m0/0 GET": 5, "ds/.zmetadata GET": 1,
	}}
	gets, heads := c.keyRequests("ds/t2m/")
	assert.Equal(t, int64(2), gets)
	assert.Equal(t, int64(1), heads)
}

func TestVmHWM(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
		return p
	}
	got, err := vmHWM(write("ok", "Name:\tdmfs\nVmPeak:\t  9 kB\nVmHWM:\t   82528 kB\nVmRSS:\t 1 kB\n"))
	require.NoError(t, err)
	assert.Equal(t, int64(82528*1024), got)
	_, err = vmHWM(write("none", "Name:\tdmfs\n"))
	require.ErrorContains(t, err, "no VmHWM")
	_, err = vmHWM(write("odd", "VmHWM:\t12 MB\n"))
	require.ErrorContains(t, err, "unexpected VmHWM")
	_, err = vmHWM(filepath.Join(dir, "missing"))
	require.Error(t, err)
}

func TestRcloneHeaders(t *testing.T) {
	assert.Equal(t, "X-DATAMESH-TOKEN,t,Authorization,Token t,X-DATAMESH-SESSIONID,s",
		rcloneHeaders("t", "s"))
	assert.Equal(t, `X-DATAMESH-TOKEN,"a,""b",Authorization,"Token a,""b",X-DATAMESH-SESSIONID,s`,
		rcloneHeaders(`a,"b`, "s"))
}

func TestTreeBytesSeparatesChunksFromMetadata(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "u"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, ".zmetadata"), make([]byte, 10), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "u", ".zarray"), make([]byte, 3), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "u", "0.0"), make([]byte, 7), 0o644))
	total, chunks, err := treeBytes(dir)
	require.NoError(t, err)
	assert.Equal(t, int64(20), total)
	assert.Equal(t, int64(7), chunks)
}

func TestRunTimed(t *testing.T) {
	ctx := context.Background()
	got, err := runTimed(ctx, time.Minute, "true")
	require.NoError(t, err)
	assert.False(t, got.Capped)
	got, err = runTimed(ctx, 50*time.Millisecond, "sleep", "5")
	require.NoError(t, err)
	assert.True(t, got.Capped)
	assert.Less(t, got.Seconds, 4.0)
	_, err = runTimed(ctx, time.Minute, "ls", "/no/such/dir")
	require.ErrorContains(t, err, "ls /no/such/dir")
}

func TestTargetsAndTable(t *testing.T) {
	const mib = 1 << 20
	r := newLatencyResult(20 * time.Millisecond)
	for i := range 3 {
		r.add(mCpCold, sample{Seconds: 10, Bytes: 100e6, Requests: 1000, Gets: 1000, Chunks: 1000})
		r.add(mCpWarm, sample{Seconds: 1, Bytes: 100e6, Requests: int64(i)}) // one run made requests
		r.add(mCpColdSmall, sample{Seconds: 10, Bytes: 100e6, Chunks: 1000, RSS: 10*mib + 50*mib})
		r.add(mLsR, sample{Seconds: 0.1, Requests: 2, Gets: 1, Chunks: 1000})
		r.add(mLslR, sample{Seconds: 300, Capped: i == 0, Requests: 1001, Gets: 1, Heads: 1000, Chunks: 1000})
		r.addRatio(ratioCpDirect, 0.9, 1)
		r.addRatio(ratioCpRclone, float64(2+i), 1)
	}
	r.addRatio(ratioLoad, 1, 0) // an unknown figure is not a ratio
	met := map[string]bool{}
	for _, tg := range r.targets(10 * mib) {
		met[tg.What] = tg.Met
	}
	assert.Equal(t, map[string]bool{
		ratioCpDirect:                                          true,
		ratioCpRclone:                                          false, // 2x in one run
		mCpWarm + ": gateway requests":                         false,
		mCpCold + ": requests per chunk":                       true,
		mLsR + ": zarr requests":                               true,
		mLslR + ": GETs / HEADs per chunk":                     true,
		"peak RSS − cache size (cache 1/10, reading all data)": true,
	}, met)

	var buf bytes.Buffer
	r.writeTable(&buf)
	out := buf.String()
	assert.Contains(t, out, "| "+mCpCold+" | 10.00 | 10.0 | 1000 (GET 1000, HEAD 0) | 1.000 | — |")
	assert.Contains(t, out, "| "+mLslR+" | > 300.00 (capped in 1 of 3 runs) |")
	assert.Contains(t, out, "| "+ratioCpRclone+" | 3.00x (2.00–4.00) |")
	assert.NotContains(t, out, ratioLoad)
}
