package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
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
		{"bad only", []string{"--dmfs", "x", "--only", "writes"}, "--only"},
		{"bad clients", []string{"--dmfs", "x", "--clients", "16,0"}, "--clients"},
		{"bad peers", []string{"--dmfs", "x", "--peers-latency", "slow"}, "--peers-latency"},
		{"bad faults", []string{"--dmfs", "x", "--faults-latency", "on"}, "--faults-latency"},
		{"not a flag", []string{"--dmfs", "x", "--dmfs-flag", "max-connections=4"}, "--dmfs-flag"},
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
			assert.Equal(t, []int{16, 64}, o.clients)
			assert.Equal(t, 64, o.limitClients())
			assert.Equal(t, []time.Duration{5 * time.Millisecond}, o.latencies)
			assert.True(t, o.hasFaults)
			assert.Equal(t, 20*time.Millisecond, o.faults)
			assert.Empty(t, o.dmfsFlags)
			assert.Equal(t, "go run ./integration/bench --dmfs x --runs 2 --latency 5ms", o.command)
		})
	}
}

func TestParseOptionsDefaultsAndLists(t *testing.T) {
	o, err := parseOptions([]string{"--dmfs", "x"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, []time.Duration{20 * time.Millisecond, 100 * time.Millisecond, 0}, o.latencies)
	assert.True(t, o.peersAt(20*time.Millisecond))
	assert.True(t, o.peersAt(0))
	assert.False(t, o.peersAt(100*time.Millisecond), "the slow peers skip 100ms by default")

	o, err = parseOptions([]string{"--dmfs", "x", "--clients", "64, 8,64", "--peers-latency", "all",
		"--faults-latency", "off", "--dmfs-flag=--max-connections=128", "--dmfs-flag", "--readahead=8"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, []int{8, 64}, o.clients, "sorted, without repeats")
	assert.True(t, o.peersAt(100*time.Millisecond))
	assert.False(t, o.hasFaults)
	assert.Equal(t, []string{"--max-connections=128", "--readahead=8"}, o.dmfsFlags)
}

func TestParseClients(t *testing.T) {
	got, err := parseClients("64,16")
	require.NoError(t, err)
	assert.Equal(t, []int{16, 64}, got)
	for _, bad := range []string{"", "0", "-4", "16,", "many", "2000"} {
		_, err := parseClients(bad)
		assert.Error(t, err, bad)
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
	mu        sync.Mutex
	files     map[string]string
	zarr      []string // "METHOD KEY" per zarr request
	closed    []string // sessions closed without finalising
	finalised []string // sessions closed with finalise_write=true
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
		id := strings.TrimPrefix(r.URL.Path, "/session/")
		if r.URL.Query().Get("finalise_write") == "true" {
			g.finalised = append(g.finalised, id)
		} else {
			g.closed = append(g.closed, id)
		}
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
	switch {
	case r.Method == http.MethodPost:
		body, _ := io.ReadAll(r.Body)
		g.mu.Lock()
		g.files[key] = string(body)
		g.mu.Unlock()
		w.WriteHeader(http.StatusCreated)
		return
	case r.Method == http.MethodDelete && key == "":
		g.mu.Lock()
		clear(g.files)
		g.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
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
		r.add(mCpCold, sample{Seconds: 10, Bytes: 100e6, Requests: 1000, Gets: 1000, Chunks: 1000,
			InFlight: inFlight{Mean: 15.46, Max: int64(16 + i)}})
		r.add(mCpWarm, sample{Seconds: 1, Bytes: 100e6, Requests: int64(i)}) // one run made requests
		r.add(mCpColdSmall, sample{Seconds: 10, Bytes: 100e6, Chunks: 1000, RSS: 10*mib + 50*mib})
		r.add(mLsR, sample{Seconds: 0.1, Requests: 2, Gets: 1, Chunks: 1000})
		r.add(mLslR, sample{Seconds: 300, Capped: i == 0, Requests: 1001, Gets: 1, Heads: 1000, Chunks: 1000})
		r.addRatio(ratioCpDirect, 0.9, 1)
		r.addRatio(ratioCpRclone, float64(9+i), 1)
		r.addRatio(ratioMean, 2.5, 1)
		r.Ratios[ratioLoadFetch] = append(r.Ratios[ratioLoadFetch], []float64{-0.1, 1.2, 1.25}[i])
		r.Ratios[ratioMeanFetch] = append(r.Ratios[ratioMeanFetch], []float64{1, 1.3, 1}[i])
		check := ""
		if i == 2 {
			check = "copy differs from the direct fetch: 1 of 1000 files differ: u/0.0"
		}
		r.add(mCpFaults, sample{Seconds: 12, Bytes: 100e6, Requests: 1100, Gets: 1100, Chunks: 1000, Checked: true, Check: check,
			InFlight: inFlight{Mean: 7.25, Max: 40}})
	}
	r.addRatio(ratioLoad, 1, 0) // an unknown figure is not a ratio
	met := map[string]bool{}
	for _, tg := range r.targets(10 * mib) {
		met[tg.What] = tg.Met
	}
	assert.Equal(t, map[string]bool{
		ratioCpDirect:                      true,
		ratioCpRclone:                      false, // 9x in one run
		ratioMean:                          true,
		ratioLoadFetch:                     true,  // cold as fast as warm counts
		ratioMeanFetch:                     false, // 1.3x in one run
		targetFaultsOK:                     false,
		mCpWarm + ": gateway requests":     false,
		mCpCold + ": requests per chunk":   true,
		mLsR + ": zarr requests":           true,
		mLslR + ": GETs / HEADs per chunk": true,
		"peak memory − cache size (cache 1/10, reading all data)": true,
	}, met)

	var buf bytes.Buffer
	r.writeTable(&buf, readOrder([]int{16, 64}, "t2m"))
	out := buf.String()
	assert.Contains(t, out, "| Operation | Time, s: median (min–max) | MB/s | Gateway requests | Requests per chunk | Fetches in flight per run: mean / max | Peak memory, MiB | Checks |\n")
	assert.Contains(t, out, "| "+mCpCold+" | 10.00 | 10.0 | 1000 (GET 1000, HEAD 0) | 1.000 | 15.5 / 16, 15.5 / 17, 15.5 / 18 | — | — |")
	assert.Contains(t, out, "| "+mLslR+" | > 300.00 (capped in 1 of 3 runs) |")
	assert.Contains(t, out, "| "+mCpFaults+" | 12.00 | 8.3 | 1100 (GET 1100, HEAD 0) | 1.100 | 7.2 / 40, 7.2 / 40, 7.2 / 40 | — | **failed in 1 of 3 runs**: copy differs")
	assert.Contains(t, out, "| "+ratioCpRclone+" | 10.00x (9.00–11.00) |")
	assert.Contains(t, out, "| "+ratioLoadFetch+" | 1.20x (-0.10–1.25) |")
	assert.NotContains(t, out, ratioLoad+" |")
	assert.NotContains(t, out, directName(16, false), "no sample, no row")
	// Rows keep the given order.
	assert.Less(t, strings.Index(out, mCpCold+" |"), strings.Index(out, mLsR+" |"))
	assert.Less(t, strings.Index(out, mLslR+" |"), strings.Index(out, mCpFaults+" |"))
}

func TestReadOrderNamesTheLimit(t *testing.T) {
	assert.Equal(t, []string{"direct HTTP, 16 clients", "direct HTTP, 64 clients (the limit)", "direct HTTP, 64 clients, `t2m` chunks only"},
		readOrder([]int{16, 64}, "t2m")[:3])
	assert.Equal(t, "direct HTTP, 4 clients (the limit)", readOrder([]int{4}, "v")[0])
}

func TestWriteTrace(t *testing.T) {
	// 1.2 s of 100 ms intervals: steps of 0.5 s, the last one short.
	var tr trace
	tr.IntervalSeconds = 0.1
	for i := range 12 {
		s := traceSample{T: float64(i+1) / 10, Mean: float64(2 * i), Max: int64(2*i + 1), Answers: map[string]int64{"200": 3}}
		if i == 6 {
			s.Answers["503"] = 2
			s.Answers["429"] = 1
		}
		tr.Samples = append(tr.Samples, s)
	}
	var buf bytes.Buffer
	writeTrace(&buf, tr)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	require.Len(t, lines, 5, buf.String())
	assert.Equal(t, "| until t, s | in flight: mean | max | mean, as a bar | 200 | 429 | 503 |", lines[0])
	// Means 0..8 → 4, 10..18 → 14, 20..22 → 21 (the bar's full width).
	assert.Equal(t, "| 0.5 | 4.0 | 9 | "+strings.Repeat("█", 6)+" | 15 | 0 | 0 |", lines[2])
	assert.Equal(t, "| 1.0 | 14.0 | 19 | "+strings.Repeat("█", 20)+" | 15 | 1 | 2 |", lines[3])
	assert.Equal(t, "| 1.2 | 21.0 | 23 | "+strings.Repeat("█", 30)+" | 6 | 0 | 0 |", lines[4])

	// A long trace is summed into wider steps, at most traceLines.
	long := trace{IntervalSeconds: 0.1, Dropped: 5}
	for i := range 1000 {
		long.Samples = append(long.Samples, traceSample{T: float64(i+1) / 10, Mean: 1, Max: 1})
	}
	buf.Reset()
	writeTrace(&buf, long)
	out := buf.String()
	rows := strings.Count(out, "\n| ") // table rows after the header
	assert.LessOrEqual(t, rows, traceLines+1)
	assert.Contains(t, out, "| 100.0 | 1.0 | 1 |")
	assert.Contains(t, out, "5 earlier ones are missing")

	buf.Reset()
	writeTrace(&buf, trace{IntervalSeconds: 0.1})
	assert.Equal(t, "(no samples)\n", buf.String())
}

func TestCompareTree(t *testing.T) {
	write := func(dir string, files map[string]string) {
		for k, v := range files {
			p := filepath.Join(dir, filepath.FromSlash(k))
			require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
			require.NoError(t, os.WriteFile(p, []byte(v), 0o644))
		}
	}
	want := t.TempDir()
	src := map[string]string{".zmetadata": `{"a": 1, "b": [1, 2]}`, "u/.zarray": `{"x":"y"}`, "u/0.0": "abc", "u/0.1": "de"}
	write(want, src)
	keys := slices.Sorted(maps.Keys(src))
	tests := []struct {
		name    string
		change  func(dir string)
		wantErr string
	}{
		{"same", func(string) {}, ""},
		{"dmfs's catalog entry", func(d string) { write(d, map[string]string{".datasource.json": "{}"}) }, ""},
		{"a key named like it, deeper", func(d string) { write(d, map[string]string{"u/.datasource.json": "{}"}) }, "1 extra: u/.datasource.json"},
		{"metadata re-encoded", func(d string) { write(d, map[string]string{".zmetadata": "{\"b\":[1,2],\"a\":1}\n"}) }, ""},
		{"metadata changed", func(d string) { write(d, map[string]string{"u/.zarray": `{"x":"z"}`}) }, "1 of 4 files differ: u/.zarray"},
		{"a chunk byte", func(d string) { write(d, map[string]string{"u/0.1": "dE"}) }, "1 of 4 files differ: u/0.1"},
		{"a chunk not json-compared", func(d string) { write(d, map[string]string{"u/0.0": ` "abc"`}) }, "u/0.0"},
		{"missing", func(d string) { require.NoError(t, os.Remove(filepath.Join(d, "u", "0.0"))) }, "1 missing: u/0.0"},
		{"extra", func(d string) { write(d, map[string]string{"u/0.2": "x"}) }, "1 extra: u/0.2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := t.TempDir()
			write(got, src)
			tt.change(got)
			err := compareTree(got, want, keys)
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func TestGatewayClientDownloadsPostsAndFinalises(t *testing.T) {
	src := map[string]string{".zmetadata": "{}", "u/.zarray": "{}", "u/0.0": "aaaa", "v/c/0/0": "cccccc"}
	g := &fakeGateway{files: maps.Clone(src)}
	ts := httptest.NewServer(g)
	defer ts.Close()
	c := newGatewayClient(strings.TrimPrefix(ts.URL, "http://"), testToken, 3)
	ctx := context.Background()
	keys := slices.Sorted(maps.Keys(src))

	dir := t.TempDir()
	res, err := c.download(ctx, "ds", "s-1", keys, 2, dir)
	require.NoError(t, err)
	assert.Equal(t, int64(2+2+4+6), res.Bytes)
	for k, v := range src {
		got, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(k)))
		require.NoError(t, err, k)
		assert.Equal(t, v, string(got), k)
	}

	// Every key POSTed once, then the session finalised.
	require.NoError(t, c.clearDatasource(ctx, "ds", "s-1"))
	assert.Empty(t, g.files)
	g.zarr = nil
	res, err = c.postAll(ctx, "ds", "s-1", dir, keys, 3)
	require.NoError(t, err)
	assert.Equal(t, int64(2+2+4+6), res.Bytes)
	assert.Equal(t, src, g.files)
	got := slices.Sorted(slices.Values(g.zarr))
	assert.Equal(t, []string{"POST .zmetadata", "POST u/.zarray", "POST u/0.0", "POST v/c/0/0"}, got)
	assert.Equal(t, []string{"s-1"}, g.finalised)
	assert.Empty(t, g.closed)

	// A key missing locally fails the whole write, and nothing is finalised.
	g.finalised = nil
	_, err = c.postAll(ctx, "ds", "s-1", dir, []string{"u/0.0", "u/missing"}, 2)
	require.ErrorContains(t, err, "missing")
	assert.Empty(t, g.finalised)
	_, err = c.postAll(ctx, "ds", "s-1", dir, keys, 0)
	require.Error(t, err)
}

func TestCheckWrites(t *testing.T) {
	okWrites := writeCounters{StagedKeys: 3, CommittedKeys: 3, CommittedBytes: 30, SessionsFinalised: 1}
	ok := counters{Requests: 5, ZarrKeys: map[string]int64{
		"new/.zgroup POST": 1, "new/u/0.0 POST": 1, "new/u/0.1 POST": 1,
		"new/u/.zarray GET": 2, "demo_grid/u/0.0 GET": 1, "other/a POST": 1,
	}, Writes: okWrites}
	with := func(f func(c *counters)) counters {
		c := ok
		c.ZarrKeys = maps.Clone(ok.ZarrKeys)
		f(&c)
		return c
	}
	want := []string{".zgroup", "u/0.0", "u/0.1"}
	tests := []struct {
		name    string
		c       counters
		want    []string
		wantErr []string
	}{
		{"ok", ok, want, nil},
		{"ok, any keys", ok, nil, nil},
		{"posted twice", with(func(c *counters) { c.ZarrKeys["new/u/0.1 POST"] = 2 }), want,
			[]string{"1 key(s) not POSTed exactly once: u/0.1 ×2"}},
		{"partial key, even not posted", with(func(c *counters) { c.ZarrKeys["new/u/0.0.a1b2.partial GET"] = 1 }), want,
			[]string{"1 `.partial` key(s) reached the gateway: new/u/0.0.a1b2.partial (GET)"}},
		{"partial key posted", with(func(c *counters) { c.ZarrKeys["new/u/0.2.ff.partial POST"] = 1 }), want,
			[]string{"`.partial` key(s) reached", "1 extra: u/0.2.ff.partial", "4 keys written, 3 staged, 3 committed"}},
		{"missing key", with(func(c *counters) { delete(c.ZarrKeys, "new/u/0.1 POST") }), want,
			[]string{"1 missing: u/0.1", "2 keys written, 3 staged, 3 committed"}},
		{"put", with(func(c *counters) { delete(c.ZarrKeys, "new/u/0.1 POST"); c.ZarrKeys["new/u/0.1 PUT"] = 1 }), want,
			[]string{"new/u/0.1 was written with PUT"}},
		{"uncounted keys", with(func(c *counters) { c.ZarrKeysOther = 7 }), want, []string{"7 key requests were not counted"}},
		{"not finalised", with(func(c *counters) {
			c.Writes = writeCounters{StagedKeys: 3, DiscardedKeys: 3, SessionsDiscarded: 1}
		}), want, []string{"3 keys written, 3 staged, 0 committed", "3 keys discarded, 1 sessions discarded", "0 sessions finalised, want 1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chk, err := checkWrites(tt.c, "new", tt.want)
			if tt.wantErr == nil {
				require.NoError(t, err)
				assert.Equal(t, want, chk.Keys)
				assert.Equal(t, int64(3), chk.Posts)
				assert.Equal(t, int64(30), chk.Bytes)
				return
			}
			require.Error(t, err)
			for _, w := range tt.wantErr {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestDiffKeys(t *testing.T) {
	assert.Equal(t, "", diffKeys([]string{"a", "b"}, []string{"a", "b"}))
	assert.Equal(t, "", diffKeys(nil, nil))
	assert.Equal(t, "1 missing: b, 1 extra: c", diffKeys([]string{"a", "c"}, []string{"a", "b"}))
	assert.Equal(t, "2 missing: a, b", diffKeys(nil, []string{"a", "b"}))
	assert.Equal(t, "5 extra: a, b, c and 2 more", diffKeys([]string{"a", "b", "c", "d", "e"}, nil))
}

func TestWatchHWM(t *testing.T) {
	p := filepath.Join(t.TempDir(), "status")
	set := func(kb int) {
		require.NoError(t, os.WriteFile(p, fmt.Appendf(nil, "Name:\tdmfs\nVmHWM:\t%d kB\n", kb), 0o644))
	}
	set(100)
	w := watchHWM(p, time.Millisecond)
	time.Sleep(20 * time.Millisecond)
	set(300)
	time.Sleep(20 * time.Millisecond)
	set(200) // a value read earlier stays the peak
	time.Sleep(20 * time.Millisecond)
	require.NoError(t, os.Remove(p)) // the process exited
	time.Sleep(20 * time.Millisecond)
	assert.Equal(t, int64(300<<10), w.Stop())

	gone := watchHWM(filepath.Join(t.TempDir(), "missing"), time.Millisecond)
	assert.Equal(t, int64(0), gone.Stop())
}

func TestRunTimedEnvKeepsStdoutForTheError(t *testing.T) {
	_, err := runTimedEnv(context.Background(), time.Minute, []string{"X=seen"}, true, "sh", "-c", "echo out $X; exit 8")
	require.ErrorContains(t, err, "out seen")
	require.ErrorContains(t, err, "exit status 8")
}

func TestWriteTargetsAndTable(t *testing.T) {
	const mib = 1 << 20
	r := newLatencyResult(20 * time.Millisecond)
	for i := range 3 {
		r.add(mWDirect, sample{Seconds: 1, Bytes: 100e6, Requests: 101, Keys: 100, Posts: 100, InFlight: inFlight{Mean: 63.9, Max: 64}})
		r.add(mWCp, sample{Seconds: 1.2, Unmount: 0.2, Bytes: 100e6, Requests: 102, Keys: 100, Posts: 100, RSS: 80 * mib})
		check := ""
		if i == 1 {
			check = "1 key(s) not POSTed exactly once: a|b ×2"
		}
		r.add(mWCpSmall, sample{Seconds: 2, Unmount: 0.1, Bytes: 100e6, Requests: 102, Keys: 100, Posts: 101, RSS: 10*mib + int64(60+3*i)*mib, Check: check})
		r.add(mWXrClient, sample{Seconds: 10, Bytes: 90e6, Requests: 180, Keys: 100, Posts: 100})
		r.add(mWXrDMFS, sample{Seconds: 4, Unmount: 0.1, Bytes: 90e6, Requests: 102, Keys: 100, Posts: 100, RSS: 90 * mib})
		r.addRatio(ratioWCp, 0.85, 1)
		r.addRatio(ratioWXr, float64(2+i)*0.99, 1) // 1.98x in one run
	}
	met := map[string]bool{}
	for _, tg := range r.writeTargets(10 * mib) {
		met[tg.What] = tg.Met
	}
	assert.Equal(t, map[string]bool{
		ratioWCp:                            true,
		ratioWXr:                            false,
		targetWRSS:                          false, // 66 MiB over the cache in one run
		mWDirect + ": " + targetWChecksOK:   true,
		mWCp + ": " + targetWChecksOK:       true,
		mWCpSmall + ": " + targetWChecksOK:  false,
		mWXrClient + ": " + targetWChecksOK: true,
		mWXrDMFS + ": " + targetWChecksOK:   true,
	}, met)

	var buf bytes.Buffer
	r.writeWriteTable(&buf)
	out := buf.String()
	assert.Contains(t, out, "| "+mWDirect+" | 1.00 | — | 100.0 | 100 | 1.000 | 1 | 63.9 / 64, 63.9 / 64, 63.9 / 64 | — | ok |")
	assert.Contains(t, out, "| "+mWCp+" | 1.20 | 0.20 | 83.3 | 100 | 1.000 | 2 | — | 80 | ok |")
	assert.Contains(t, out, "| "+mWCpSmall+" | 2.00 | 0.10 | 50.0 | 100 | 1.010 | 1 | — | 73 (70–76) | **failed in 1 of 3 runs**: 1 key(s) not POSTed exactly once: a\\|b ×2 |")
	assert.Contains(t, out, "| "+ratioWXr+" | 2.97x (1.98–3.96) |")
	assert.NotContains(t, out, mWCp0)
	assert.NotContains(t, out, ratioWCp0)
}
