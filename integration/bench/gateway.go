package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
)

// gatewayProc is a running `dmfs serve` child process.
type gatewayProc struct {
	cmd  *exec.Cmd
	addr string // host:port
	done chan struct{}
}

// startGateway runs `dmfs serve --demo` on a free loopback port and waits
// until it has written its address (after the demo data is generated);
// extra flags follow (the faults row's --fail-rate ...).
func startGateway(ctx context.Context, dmfs, dataDir, tokenFile, size string, latency time.Duration, logPath string, extra ...string) (*gatewayProc, error) {
	addrFile := filepath.Join(filepath.Dir(logPath), fmt.Sprintf("gateway-%d.addr", time.Now().UnixNano()))
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := append([]string{"serve", "--demo", "--demo-size", size, "--addr", "127.0.0.1:0",
		"--addr-file", addrFile, "--token-file", tokenFile, "--latency", latency.String()}, extra...)
	cmd := exec.Command(dmfs, append(args, dataDir)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start dmfs serve: %w", err)
	}
	g := &gatewayProc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(g.done) }()
	// Generating 1 GiB of demo data takes a while on two cores.
	deadline := time.Now().Add(10 * time.Minute)
	for {
		if b, err := os.ReadFile(addrFile); err == nil && strings.TrimSpace(string(b)) != "" {
			g.addr = strings.TrimSpace(string(b))
			// Flush the freshly written data now, so that its writeback
			// does not compete with the first run's measurements.
			syscall.Sync()
			return g, nil
		}
		select {
		case <-g.done:
			return nil, fmt.Errorf("dmfs serve exited before it was ready; see %s", logPath)
		case <-ctx.Done():
			g.stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			g.stop()
			return nil, fmt.Errorf("dmfs serve not ready after 10 minutes; see %s", logPath)
		}
	}
}

// stop ends the gateway: SIGTERM, then SIGKILL after 5 s.
func (g *gatewayProc) stop() {
	if g == nil {
		return
	}
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.done:
	case <-time.After(5 * time.Second):
		_ = g.cmd.Process.Kill()
		<-g.done
	}
}

// gatewayClient speaks the Datamesh protocol to the local gateway. The
// token stays unexported and out of every error message.
type gatewayClient struct {
	base  string // http://host:port
	token string
	http  *http.Client
}

func newGatewayClient(addr, token string, conns int) *gatewayClient {
	tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, DisableCompression: true}
	return &gatewayClient{base: "http://" + addr, token: token, http: &http.Client{Transport: tr, Timeout: 2 * time.Minute}}
}

func (c *gatewayClient) authHeaders(h http.Header, session string) {
	h.Set("X-DATAMESH-TOKEN", c.token)
	h.Set("Authorization", "Token "+c.token)
	if session != "" {
		h.Set("X-DATAMESH-SESSIONID", session)
	}
}

func (c *gatewayClient) do(ctx context.Context, method, path, session string, want int) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	c.authHeaders(req.Header, session)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: read body: %w", method, path, err)
	}
	if resp.StatusCode != want {
		return nil, fmt.Errorf("%s %s: status %d, want %d", method, path, resp.StatusCode, want)
	}
	return body, nil
}

// acquireSession opens a Datamesh session and returns its id.
func (c *gatewayClient) acquireSession(ctx context.Context) (string, error) {
	body, err := c.do(ctx, http.MethodGet, "/session/?duration=3600", "", http.StatusOK)
	if err != nil {
		return "", err
	}
	var s struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(body, &s); err != nil || s.ID == "" {
		return "", fmt.Errorf("session answer has no id (%d bytes)", len(body))
	}
	return s.ID, nil
}

func (c *gatewayClient) closeSession(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodDelete, "/session/"+url.PathEscape(id)+"?finalise_write=false", id, http.StatusNoContent)
	return err
}

// finaliseSession closes a session with finalise_write=true, which makes
// its writes final.
func (c *gatewayClient) finaliseSession(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodDelete, "/session/"+url.PathEscape(id)+"?finalise_write=true", id, http.StatusNoContent)
	return err
}

// clearDatasource deletes every key of a datasource (DELETE /zarr/{id}/)
// in the session; final once the session is finalised.
func (c *gatewayClient) clearDatasource(ctx context.Context, ds, session string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, c.base+"/zarr/"+ds+"/", nil)
	if err != nil {
		return err
	}
	c.authHeaders(req.Header, session)
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("DELETE /zarr/%s/: %w", ds, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("DELETE /zarr/%s/: status %d", ds, resp.StatusCode)
	}
	return nil
}

// counters is the part of GET /_dmfs/counters the benchmark reads.
type counters struct {
	Requests int64            `json:"requests"`
	ByRoute  map[string]int64 `json:"by_route"`
	ByStatus map[string]int64 `json:"by_status"`
	// ByRouteStatus counts by "ROUTE STATUS": "zarr_get 206" are the GETs
	// answered with a byte range.
	ByRouteStatus map[string]int64 `json:"by_route_status"`
	BytesSent     int64            `json:"bytes_sent"`
	// ZarrKeys counts requests per key: "DSID/KEY GET".
	ZarrKeys map[string]int64 `json:"zarr_keys"`
	// ZarrKeysOther counts key requests left out of ZarrKeys (full, or a
	// key too long): a write check cannot trust ZarrKeys then.
	ZarrKeysOther int64         `json:"zarr_keys_other"`
	Writes        writeCounters `json:"writes"`
	// ZarrInFlight: the /zarr/ requests the gateway answered at once.
	ZarrInFlight inFlight `json:"zarr_in_flight"`
}

// inFlight is the gateway's zarr_in_flight counter: Mean is time-weighted
// over the time at least one request was in flight.
type inFlight struct {
	Max         int64   `json:"max"`
	Mean        float64 `json:"mean"`
	BusySeconds float64 `json:"busy_seconds"`
}

// trace is GET /_dmfs/trace: the in-flight count over time since the
// counters were reset.
type trace struct {
	IntervalSeconds float64       `json:"interval_seconds"`
	Dropped         int64         `json:"dropped"`
	Samples         []traceSample `json:"samples"`
}

type traceSample struct {
	T        float64          `json:"t"` // end of the interval, seconds since the reset
	InFlight int64            `json:"in_flight"`
	Max      int64            `json:"max"`
	Mean     float64          `json:"mean"`
	Answers  map[string]int64 `json:"answers"`
}

// writeCounters is the part of the gateway's write counters the write
// checks read.
type writeCounters struct {
	StagedKeys        int64 `json:"staged_keys"`
	CommittedKeys     int64 `json:"committed_keys"`
	CommittedBytes    int64 `json:"committed_bytes"`
	DiscardedKeys     int64 `json:"discarded_keys"`
	SessionsFinalised int64 `json:"sessions_finalised"`
	SessionsDiscarded int64 `json:"sessions_discarded"`
}

// keyRequests counts the GET and HEAD requests on keys under prefix
// ("DSID/ARRAY/").
func (c counters) keyRequests(prefix string) (gets, heads int64) {
	for k, v := range c.ZarrKeys {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		switch {
		case strings.HasSuffix(k, " GET"):
			gets += v
		case strings.HasSuffix(k, " HEAD"):
			heads += v
		}
	}
	return gets, heads
}

func (c counters) gets() int64  { return c.ByRoute["zarr_get"] }
func (c counters) heads() int64 { return c.ByRoute["zarr_head"] }

// partialGets counts the GETs answered 206 Partial Content: those that
// asked for a byte range the gateway honoured.
func (c counters) partialGets() int64 { return c.ByRouteStatus["zarr_get 206"] }

func (c *gatewayClient) resetCounters(ctx context.Context) error {
	_, err := c.do(ctx, http.MethodPost, "/_dmfs/counters/reset", "", http.StatusOK)
	if err != nil {
		// Some builds answer 204 to a reset.
		if _, err2 := c.do(ctx, http.MethodPost, "/_dmfs/counters/reset", "", http.StatusNoContent); err2 == nil {
			return nil
		}
	}
	return err
}

func (c *gatewayClient) counters(ctx context.Context) (counters, error) {
	body, err := c.do(ctx, http.MethodGet, "/_dmfs/counters", "", http.StatusOK)
	if err != nil {
		return counters{}, err
	}
	var out counters
	if err := json.Unmarshal(body, &out); err != nil {
		return counters{}, fmt.Errorf("counters: %w", err)
	}
	return out, nil
}

func (c *gatewayClient) trace(ctx context.Context) (trace, error) {
	body, err := c.do(ctx, http.MethodGet, "/_dmfs/trace", "", http.StatusOK)
	if err != nil {
		return trace{}, err
	}
	var out trace
	if err := json.Unmarshal(body, &out); err != nil {
		return trace{}, fmt.Errorf("trace: %w", err)
	}
	if out.IntervalSeconds <= 0 {
		return trace{}, fmt.Errorf("trace: interval %g s", out.IntervalSeconds)
	}
	return out, nil
}

var hrefRE = regexp.MustCompile(`<a href="([^"]*)"`)

// parseListing returns the entry names of a gateway HTML listing; folder
// names keep their trailing "/".
func parseListing(body []byte) ([]string, error) {
	var names []string
	for _, m := range hrefRE.FindAllSubmatch(body, -1) {
		href := strings.TrimPrefix(html.UnescapeString(string(m[1])), "./")
		name, err := url.PathUnescape(href)
		if err != nil {
			return nil, fmt.Errorf("listing entry %q: %w", href, err)
		}
		if name == "" || name == "../" || strings.HasPrefix(name, "/") || strings.Contains(strings.TrimSuffix(name, "/"), "/") {
			return nil, fmt.Errorf("listing entry %q is not a plain name", href)
		}
		names = append(names, name)
	}
	return names, nil
}

// listKeys walks the HTML listings of a datasource and returns every key.
func (c *gatewayClient) listKeys(ctx context.Context, ds, session string) ([]string, error) {
	var keys []string
	var walk func(prefix string) error
	walk = func(prefix string) error {
		body, err := c.do(ctx, http.MethodGet, "/zarr/"+ds+"/"+escapeKey(prefix), session, http.StatusOK)
		if err != nil {
			return err
		}
		names, err := parseListing(body)
		if err != nil {
			return fmt.Errorf("listing of %s/%s: %w", ds, prefix, err)
		}
		for _, n := range names {
			if strings.HasSuffix(n, "/") {
				if err := walk(prefix + n); err != nil {
					return err
				}
				continue
			}
			keys = append(keys, prefix+n)
		}
		return nil
	}
	if err := walk(""); err != nil {
		return nil, err
	}
	slices.Sort(keys)
	return keys, nil
}

func escapeKey(key string) string {
	parts := strings.Split(key, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return strings.Join(parts, "/")
}

// isMetadataKey tells Zarr metadata keys from chunk keys.
func isMetadataKey(key string) bool {
	base := key[strings.LastIndex(key, "/")+1:]
	return strings.HasPrefix(base, ".") || base == "zarr.json"
}

// fetchResult is what fetching every key directly found.
type fetchResult struct {
	Seconds float64
	CPU     float64 // the machine's busy CPU-seconds meanwhile (-1: unknown)
	Bytes   int64
	Sizes   map[string]int64
}

// fetchAll GETs every key with `clients` parallel workers, each reading the
// whole body, as the fastest possible client of the gateway would.
func (c *gatewayClient) fetchAll(ctx context.Context, ds, session string, keys []string, clients int) (fetchResult, error) {
	return c.fetchEach(ctx, ds, session, keys, clients, nil)
}

// download fetches every key into dir, as a local copy of the datasource
// (the gateway's bytes, metadata included).
func (c *gatewayClient) download(ctx context.Context, ds, session string, keys []string, clients int, dir string) (fetchResult, error) {
	return c.fetchEach(ctx, ds, session, keys, clients, func(key string, body []byte) error {
		p := filepath.Join(dir, filepath.FromSlash(key))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		return os.WriteFile(p, body, 0o644)
	})
}

// fetchEach GETs every key with parallel workers and hands each body to
// save, when not nil. Without save, each worker takes the bodies off the
// wire through one reused buffer and drops them, as `curl -o /dev/null`
// would: the limit is the gateway's, not that of a client filling fresh
// memory (whose page faults cost this machine more than the transfer).
func (c *gatewayClient) fetchEach(ctx context.Context, ds, session string, keys []string, clients int, save func(key string, body []byte) error) (fetchResult, error) {
	if clients < 1 {
		return fetchResult{}, errors.New("fetchAll: need at least one client")
	}
	var next atomic.Int64
	var total atomic.Int64
	var mu sync.Mutex
	sizes := make(map[string]int64, len(keys))
	busy, start := machineBusy(), time.Now()
	eg, ctx := errgroup.WithContext(ctx)
	for range clients {
		eg.Go(func() error {
			// buf keeps a body for save; copyBuf carries one to dropWriter
			// (bytes.Buffer reads for itself and needs none).
			var buf bytes.Buffer
			var w io.Writer = &buf
			var copyBuf []byte
			if save == nil {
				w, copyBuf = dropWriter{}, make([]byte, 256<<10)
			}
			for {
				i := int(next.Add(1)) - 1
				if i >= len(keys) {
					return nil
				}
				buf.Reset()
				n, err := c.getInto(ctx, w, copyBuf, "/zarr/"+ds+"/"+escapeKey(keys[i]), session)
				if err != nil {
					return err
				}
				if save != nil {
					if err := save(keys[i], buf.Bytes()); err != nil {
						return err
					}
				}
				total.Add(n)
				mu.Lock()
				sizes[keys[i]] = n
				mu.Unlock()
			}
		})
	}
	if err := eg.Wait(); err != nil {
		return fetchResult{}, err
	}
	return fetchResult{Seconds: time.Since(start).Seconds(), CPU: busySince(busy), Bytes: total.Load(), Sizes: sizes}, nil
}

// dropWriter takes bytes and keeps none. Unlike io.Discard it has no
// ReadFrom, so io.CopyBuffer reads through the caller's buffer.
type dropWriter struct{}

func (dropWriter) Write(p []byte) (int, error) { return len(p), nil }

// getInto GETs path and copies the body to w (through buf, unless w reads
// for itself).
func (c *gatewayClient) getInto(ctx context.Context, w io.Writer, buf []byte, path, session string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return 0, err
	}
	c.authHeaders(req.Header, session)
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: status %d", path, resp.StatusCode)
	}
	n, err := io.CopyBuffer(w, resp.Body, buf)
	if err != nil {
		return n, fmt.Errorf("GET %s: %w", path, err)
	}
	return n, nil
}

// postAll POSTs the file dir/KEY of every key to datasource ds with
// `clients` parallel workers over keep-alive connections, then closes the
// session with finalise_write=true: the fastest possible writer of the
// gateway, timed to the point where its writes are final. Each file is
// read when it is sent, as a copy would.
func (c *gatewayClient) postAll(ctx context.Context, ds, session, dir string, keys []string, clients int) (fetchResult, error) {
	if clients < 1 {
		return fetchResult{}, errors.New("postAll: need at least one client")
	}
	var next atomic.Int64
	var total atomic.Int64
	start := time.Now()
	eg, ectx := errgroup.WithContext(ctx)
	for range clients {
		eg.Go(func() error {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(keys) {
					return nil
				}
				body, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(keys[i])))
				if err != nil {
					return err
				}
				if err := c.post(ectx, "/zarr/"+ds+"/"+escapeKey(keys[i]), session, body); err != nil {
					return err
				}
				total.Add(int64(len(body)))
			}
		})
	}
	if err := eg.Wait(); err != nil {
		return fetchResult{}, err
	}
	if err := c.finaliseSession(ctx, session); err != nil {
		return fetchResult{}, err
	}
	return fetchResult{Seconds: time.Since(start).Seconds(), Bytes: total.Load()}, nil
}

func (c *gatewayClient) post(ctx context.Context, path, session string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	c.authHeaders(req.Header, session)
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", path, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST %s: status %d", path, resp.StatusCode)
	}
	return nil
}
