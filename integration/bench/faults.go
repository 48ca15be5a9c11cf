package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"time"
)

// faultsRun is the faults row (DESIGN.md §6): a cold `cp -r` through a
// fresh mount of a second gateway on the same data, which answers
// faultRate of its /zarr/ requests with 503 or 429 (Retry-After
// faultRetryAfter). The copy is checked against the local copy made by
// the direct client, and the gateway's in-flight trace is kept, so that
// the report shows how the mount's fetching backs off. A failed copy or
// check fails the row (and the command's exit status), not the run.
func (b *bench) faultsRun(ctx context.Context, res *latencyResult) (sample, error) {
	if err := b.localCopy(ctx); err != nil {
		return sample{}, err
	}
	gw, err := startGateway(ctx, b.o.dmfs, b.dataDir, b.tokenFile, b.o.size, res.Latency, b.path("gateway-faults.log"),
		"--fail-rate", strconv.FormatFloat(faultRate, 'g', -1, 64), "--fail-codes", faultCodes,
		"--fail-retry-after", faultRetryAfter.String())
	if err != nil {
		return sample{}, fmt.Errorf("faults gateway: %w", err)
	}
	b.fgw = gw
	defer func() {
		b.fgw.stop()
		b.fgw = nil
	}()
	client := newGatewayClient(gw.addr, b.token, 2)
	m, err := b.mountDMFSAt(ctx, gw.addr, b.cacheLarge)
	if err != nil {
		return sample{}, err
	}
	defer func() { _ = b.closeMount(m) }()
	if err := client.resetCounters(ctx); err != nil {
		return sample{}, err
	}
	dest := filepath.Join(b.shm, fmt.Sprintf("faults-%d", time.Now().UnixNano()))
	defer os.RemoveAll(dest)
	t, cpErr := runTimed(ctx, b.o.limit, "cp", "-r", filepath.Join(m.dir(), datasource), dest)
	if ctx.Err() != nil {
		return sample{}, ctx.Err()
	}
	c, err := client.counters(ctx)
	if err != nil {
		return sample{}, err
	}
	tr, err := client.trace(ctx)
	if err != nil {
		return sample{}, err
	}
	s := sample{Seconds: t.Seconds, Capped: t.Capped, Chunks: b.chunks, Checked: true,
		Requests: c.Requests, Gets: c.gets(), Heads: c.heads(), InFlight: c.ZarrInFlight}
	s.Bytes, _, _ = treeBytes(dest)
	switch {
	case cpErr != nil:
		s.Check = "cp -r failed: " + cpErr.Error()
	case t.Capped:
		s.Check = "not checked: stopped at the time cap"
	default:
		if err := compareTree(dest, b.srcDir, b.keys); err != nil {
			s.Check = "copy differs from the direct fetch: " + err.Error()
		}
	}
	if s.RSS, err = m.peakMemory(); err != nil {
		return sample{}, err
	}
	res.Traces = append(res.Traces, tr)
	b.logf("  %-58s %7.2f s, %d requests (%d answered 503, %d 429), in flight %.1f mean, %d max", mCpFaults, s.Seconds,
		s.Requests, c.ByStatus["503"], c.ByStatus["429"], s.InFlight.Mean, s.InFlight.Max)
	if s.Check != "" {
		b.checkFailures++
		b.logf("  CHECK FAILED %s: %s", mCpFaults, s.Check)
	}
	return s, nil
}

// infoFile is the catalog entry dmfs shows at the top of a datasource: not
// a key of the store.
const infoFile = ".datasource.json"

// compareTree checks that the files under got (but infoFile at its top)
// are exactly keys, each equal to its copy under want: chunks byte for
// byte, metadata as JSON (dmfs serves metadata files re-encoded from
// .zmetadata).
func compareTree(got, want string, keys []string) error {
	var files []string
	err := filepath.WalkDir(got, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, err := filepath.Rel(got, p)
			if err != nil {
				return err
			}
			if rel != infoFile {
				files = append(files, filepath.ToSlash(rel))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	slices.Sort(files)
	if d := diffKeys(files, keys); d != "" {
		return fmt.Errorf("files differ from the keys: %s", d)
	}
	var differ []string
	for _, k := range keys {
		a, err := os.ReadFile(filepath.Join(got, filepath.FromSlash(k)))
		if err != nil {
			return err
		}
		w, err := os.ReadFile(filepath.Join(want, filepath.FromSlash(k)))
		if err != nil {
			return err
		}
		same := bytes.Equal(a, w)
		if !same && isMetadataKey(k) {
			same = jsonEqual(a, w)
		}
		if !same {
			differ = append(differ, k)
		}
	}
	if len(differ) > 0 {
		return fmt.Errorf("%d of %d files differ: %s", len(differ), len(keys), firstN(differ, 3))
	}
	return nil
}

// jsonEqual tells whether a and b are the same JSON value.
func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}
