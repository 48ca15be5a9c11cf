package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The write benchmarks (DESIGN.md §6): a local copy of the datasource is
// written into a new datasource on the same gateway by the fastest direct
// client, by `cp -r` into a --write mount, and with xarray's to_zarr both
// through a --write mount and the way the Datamesh Python client writes.
// Every writer's time runs until its writes are final: the direct client
// and the Python client close their session with finalise_write=true, and
// dmfs's time includes `dmfs unmount`, which waits for every upload and
// finalises. Each written datasource is deleted again, untimed.

// writeClients is the number of parallel clients of the direct-POST limit:
// DESIGN.md §6 measures against 64.
const writeClients = 64

// hwmEvery is how often the daemon's VmHWM is read during a write.
const hwmEvery = 25 * time.Millisecond

// localCopy makes the local copy of the datasource (once; untimed) that
// the writers write and the faults row's copy is checked against, and
// learns the dataset from it when the read benchmarks did not.
func (b *bench) localCopy(ctx context.Context) error {
	if b.srcDir != "" {
		return nil
	}
	sess, err := b.session(ctx)
	if err != nil {
		return err
	}
	if len(b.keys) == 0 {
		if b.keys, err = b.client.listKeys(ctx, datasource, sess); err != nil {
			return err
		}
	}
	dir := filepath.Join(b.shm, "source-"+datasource)
	res, err := b.client.download(ctx, datasource, sess, b.keys, b.o.limitClients(), dir)
	if err != nil {
		return fmt.Errorf("local copy of %s: %w", datasource, err)
	}
	if b.varChunks == 0 {
		b.learnDataset(res.Sizes)
	}
	b.srcDir, b.srcBytes = dir, res.Bytes
	b.logf("local copy of %s: %s, %d keys, %.1f MB", datasource, dir, len(b.keys), float64(res.Bytes)/1e6)
	return nil
}

// newWriteID names a new datasource for one write operation.
func (b *bench) newWriteID(what string) string {
	b.writeSeq++
	id := fmt.Sprintf("bench_%s_%s_%03d", b.runTag, what, b.writeSeq)
	b.written = append(b.written, id)
	return id
}

// oneWriteRun measures every write once, interleaved like the reads.
func (b *bench) oneWriteRun(ctx context.Context, res *latencyResult) error {
	if err := b.localCopy(ctx); err != nil {
		return err
	}
	// The limit: every key POSTed directly by 64 clients, then finalised.
	id := b.newWriteID("direct")
	sess, err := b.session(ctx)
	if err != nil {
		return err
	}
	direct, _, err := b.measureWrite(ctx, mWDirect, id, b.keys, func() (sample, error) {
		r, err := b.wclient.postAll(ctx, id, sess, b.srcDir, b.keys, writeClients)
		return sample{Seconds: r.Seconds}, err
	})
	if err != nil {
		return err
	}
	b.forgetSession(sess)
	res.add(mWDirect, direct)
	if err := b.dropWritten(ctx, id); err != nil {
		return err
	}

	// cp -r into a --write mount: the default write-back, none, and a
	// spool and cache of a tenth of the data (the memory bound).
	cp := func(target string) (timed, error) {
		return runTimed(ctx, b.o.limit, "cp", "-r", b.srcDir, target)
	}
	spool := fmt.Sprintf("%dMiB", b.cacheSmall>>20)
	for _, c := range []struct {
		name, ratio string
		cache       int64
		flags       []string
	}{
		{mWCp, ratioWCp, b.cacheLarge, nil},
		{mWCp0, ratioWCp0, b.cacheLarge, []string{"--write-back", "0"}},
		{mWCpSmall, ratioWCpSmall, b.cacheSmall, []string{"--write-spool-size", spool}},
	} {
		id := b.newWriteID("cp")
		s, _, err := b.dmfsWrite(ctx, c.name, id, c.cache, c.flags, b.keys, cp)
		if err != nil {
			return err
		}
		res.add(c.name, s)
		res.addRatio(c.ratio, throughput(s), throughput(direct))
		if err := b.dropWritten(ctx, id); err != nil {
			return err
		}
	}

	// to_zarr: the Python client's way (a slow peer: only at
	// --peers-latency), then through a --write mount.
	peers := b.o.peersAt(res.Latency)
	var client sample
	var clientKeys []string
	if peers {
		id = b.newWriteID("client")
		if sess, err = b.session(ctx); err != nil {
			return err
		}
		client, clientKeys, err = b.measureWrite(ctx, mWXrClient, id, nil, func() (sample, error) {
			t, err := b.toZarr(ctx, "client", "http://"+b.gw.addr+"/zarr/"+id, sess)
			return sample{Seconds: t.Seconds, Capped: t.Capped}, err
		})
		if err != nil {
			return err
		}
		if !client.Capped {
			b.forgetSession(sess)
		}
		if err := b.dropWritten(ctx, id); err != nil {
			return err
		}
	}
	id = b.newWriteID("xarray")
	xr, xrKeys, err := b.dmfsWrite(ctx, mWXrDMFS, id, b.cacheLarge, nil, nil, func(target string) (timed, error) {
		return b.toZarr(ctx, "path", target, "")
	})
	if err != nil {
		return err
	}
	if peers && client.Check == "" && xr.Check == "" && !client.Capped && !xr.Capped {
		// The same to_zarr call writes the same keys whichever way.
		if d := diffKeys(xrKeys, clientKeys); d != "" {
			xr.Check = "keys differ from the Python client's: " + d
			b.checkFailures++
			b.logf("  CHECK FAILED %s: %s", mWXrDMFS, xr.Check)
		}
	}
	res.add(mWXrDMFS, xr)
	if peers {
		res.add(mWXrClient, client)
		if !client.Capped && !xr.Capped {
			res.addRatio(ratioWXr, client.Seconds, xr.Seconds)
		}
	}
	return b.dropWritten(ctx, id)
}

// forgetSession drops a session closed by its user from the ones closed at
// the end.
func (b *bench) forgetSession(id string) {
	b.sessions = slices.DeleteFunc(b.sessions, func(s string) bool { return s == id })
}

// dropWritten deletes a written datasource again (untimed), so that the
// gateway's disk holds one copy at most.
func (b *bench) dropWritten(ctx context.Context, id string) error {
	sess, err := b.client.acquireSession(ctx)
	if err != nil {
		return err
	}
	if err := b.client.clearDatasource(ctx, id, sess); err != nil {
		_ = b.client.closeSession(ctx, sess)
		return err
	}
	return b.client.finaliseSession(ctx, sess)
}

// dmfsWrite runs op into a fresh --write mount (op gets the new
// datasource's path there), then `dmfs unmount`, and times both; the peak
// RSS is the daemon's VmHWM read throughout, until it exits.
func (b *bench) dmfsWrite(ctx context.Context, name, id string, cache int64, flags, want []string,
	op func(target string) (timed, error)) (sample, []string, error) {
	m, err := b.mountDMFS(ctx, cache, append([]string{"--write"}, flags...)...)
	if err != nil {
		return sample{}, nil, err
	}
	pid, err := m.pid()
	if err != nil {
		return sample{}, nil, err
	}
	hwm := watchHWM(fmt.Sprintf("/proc/%d/status", pid), hwmEvery)
	s, keys, err := b.measureWrite(ctx, name, id, want, func() (sample, error) {
		t, err := op(filepath.Join(m.dir(), id))
		if err != nil || t.Capped {
			return sample{Seconds: t.Seconds, Capped: t.Capped}, err
		}
		u, err := m.unmount(ctx, b.o.limit)
		if err != nil {
			return sample{}, err
		}
		if !u.Capped {
			b.mounts = slices.DeleteFunc(b.mounts, func(x mount) bool { return x == m })
		}
		return sample{Seconds: t.Seconds + u.Seconds, Unmount: u.Seconds, Capped: u.Capped}, nil
	})
	rss := hwm.Stop()
	if slices.Contains(b.mounts, mount(m)) {
		if cerr := b.closeMount(m); cerr != nil && err == nil {
			err = cerr
		}
	}
	s.RSS = rss
	return s, keys, err
}

// measureWrite resets the gateway counters, runs op, which writes into
// datasource id until its writes are final, and checks the counters: one
// POST per key written (exactly want, when not nil), no `.partial` key,
// everything committed. A failed check is kept in the sample, logged and
// counted (the command then exits non-zero), and the run goes on.
func (b *bench) measureWrite(ctx context.Context, name, id string, want []string, op func() (sample, error)) (sample, []string, error) {
	if err := b.client.resetCounters(ctx); err != nil {
		return sample{}, nil, err
	}
	s, err := op()
	if err != nil {
		return sample{}, nil, fmt.Errorf("%s: %w", name, err)
	}
	c, err := b.client.counters(ctx)
	if err != nil {
		return sample{}, nil, err
	}
	s.Requests = c.Requests
	s.InFlight = c.ZarrInFlight
	chk, cerr := checkWrites(c, id, want)
	s.Keys, s.Posts, s.Bytes = int64(len(chk.Keys)), chk.Posts, chk.Bytes
	switch {
	case s.Capped:
		s.Check = "not checked: stopped at the time cap"
	case cerr != nil:
		s.Check = cerr.Error()
		b.checkFailures++
	}
	capped := ""
	if s.Capped {
		capped = " (capped)"
	}
	b.logf("  %-58s %7.2f s%s (unmount %.2f s), %.1f MB/s, %d keys, %d POSTs, %d requests",
		name, s.Seconds, capped, s.Unmount, throughput(s)/1e6, s.Keys, s.Posts, s.Requests)
	if s.Check != "" {
		b.logf("  CHECK FAILED %s: %s", name, s.Check)
	}
	return s, chk.Keys, nil
}

// toZarr runs the Python writer and returns its own timing: to_zarr (and,
// for the client way, the finalise), without the interpreter's start-up
// and the reading of the source into memory.
func (b *bench) toZarr(ctx context.Context, way, target, session string) (timed, error) {
	cctx, cancel := context.WithTimeout(ctx, b.o.limit)
	defer cancel()
	cmd := exec.CommandContext(cctx, b.o.python, b.wscript, b.srcDir, way, target)
	cmd.Env = append(os.Environ(), "BENCH_TOKEN="+b.token, "BENCH_SESSION="+session)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	if cctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
		return timed{Seconds: time.Since(start).Seconds(), Capped: true}, nil
	}
	if err != nil {
		return timed{}, fmt.Errorf("to_zarr %s %s: %w: %s", way, target, err, firstLines(stderr.String(), 5))
	}
	var out struct {
		Seconds float64 `json:"seconds"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		return timed{}, fmt.Errorf("to_zarr %s: output %q: %w", way, firstLines(stdout.String(), 2), err)
	}
	return timed{Seconds: out.Seconds}, nil
}

// writeCheck is what the gateway's counters say of one write operation.
type writeCheck struct {
	Keys  []string // keys of the datasource POSTed, sorted
	Posts int64    // POSTs of those keys
	Bytes int64    // bytes committed
}

// checkWrites reads the gateway's counters after one write operation into
// datasource id: every key written was POSTed exactly once, no key
// anywhere holds ".partial", every key written was committed by one
// finalised session and none discarded, and when want is not nil the keys
// written are exactly want. The problems found make the error.
func checkWrites(c counters, id string, want []string) (writeCheck, error) {
	var chk writeCheck
	var problems []string
	if c.ZarrKeysOther > 0 {
		problems = append(problems, fmt.Sprintf("%d key requests were not counted per key: cannot check", c.ZarrKeysOther))
	}
	var partial, twice []string
	for k, n := range c.ZarrKeys {
		key, method := k, "" // "DSID/KEY METHOD"
		if i := strings.LastIndexByte(k, ' '); i >= 0 {
			key, method = k[:i], k[i+1:]
		}
		if strings.Contains(key, ".partial") {
			partial = append(partial, fmt.Sprintf("%s (%s)", key, method))
		}
		rest, ok := strings.CutPrefix(key, id+"/")
		if !ok || (method != "POST" && method != "PUT") {
			continue
		}
		if method == "PUT" {
			problems = append(problems, fmt.Sprintf("%s was written with PUT", key))
		}
		chk.Keys = append(chk.Keys, rest)
		chk.Posts += n
		if n != 1 {
			twice = append(twice, fmt.Sprintf("%s ×%d", rest, n))
		}
	}
	slices.Sort(chk.Keys)
	chk.Keys = slices.Compact(chk.Keys)
	if len(partial) > 0 {
		slices.Sort(partial)
		problems = append(problems, fmt.Sprintf("%d `.partial` key(s) reached the gateway: %s", len(partial), firstN(partial, 3)))
	}
	if len(twice) > 0 {
		slices.Sort(twice)
		problems = append(problems, fmt.Sprintf("%d key(s) not POSTed exactly once: %s", len(twice), firstN(twice, 3)))
	}
	if want != nil {
		if d := diffKeys(chk.Keys, want); d != "" {
			problems = append(problems, "keys written differ from the source: "+d)
		}
	}
	w := c.Writes
	chk.Bytes = w.CommittedBytes
	if w.CommittedKeys != int64(len(chk.Keys)) || w.StagedKeys != int64(len(chk.Keys)) {
		problems = append(problems, fmt.Sprintf("%d keys written, %d staged, %d committed", len(chk.Keys), w.StagedKeys, w.CommittedKeys))
	}
	if w.DiscardedKeys != 0 || w.SessionsDiscarded != 0 {
		problems = append(problems, fmt.Sprintf("%d keys discarded, %d sessions discarded", w.DiscardedKeys, w.SessionsDiscarded))
	}
	if w.SessionsFinalised != 1 {
		problems = append(problems, fmt.Sprintf("%d sessions finalised, want 1", w.SessionsFinalised))
	}
	if len(problems) > 0 {
		return chk, fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	return chk, nil
}

// diffKeys says how two sorted key lists differ ("" when equal).
func diffKeys(got, want []string) string {
	var extra, missing []string
	i, j := 0, 0
	for i < len(got) || j < len(want) {
		switch {
		case j == len(want) || (i < len(got) && got[i] < want[j]):
			extra = append(extra, got[i])
			i++
		case i == len(got) || want[j] < got[i]:
			missing = append(missing, want[j])
			j++
		default:
			i++
			j++
		}
	}
	var parts []string
	if len(missing) > 0 {
		parts = append(parts, fmt.Sprintf("%d missing: %s", len(missing), firstN(missing, 3)))
	}
	if len(extra) > 0 {
		parts = append(parts, fmt.Sprintf("%d extra: %s", len(extra), firstN(extra, 3)))
	}
	return strings.Join(parts, ", ")
}

// firstN joins the first n strings, then says how many more there are.
func firstN(xs []string, n int) string {
	if len(xs) <= n {
		return strings.Join(xs, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(xs[:n], ", "), len(xs)-n)
}
