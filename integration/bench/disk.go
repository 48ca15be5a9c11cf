package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/oceanum-dmfs/dmfs/mountstat"
)

// The disk cache rows (issue 15, DESIGN.md §6 "remount with a disk
// cache"): demo_grid copied by `cp -r` through a mount with --cache-dir,
// cold (the folder empty), warm from dmfs's memory (page cache dropped),
// then through a fresh mount of the same folder with the page cache
// dropped again, so that the chunks come from the folder's files on disk;
// each against the limit's fetch of the same keys, in the same run.

// Disk measure names, in table order; the limit's row is directName's.
// They live in latencyResult.Disk, apart from the reads.
const (
	mDCold    = "dmfs `cp -r` cold, `--cache-dir` empty"
	mDWarm    = "dmfs `cp -r` from dmfs's memory, page cache dropped"
	mDRemount = "dmfs `cp -r` after a remount, from `--cache-dir` (page cache dropped)"

	ratioDRemountWarm  = "cp -r throughput: remount from disk / from dmfs's memory"
	ratioDRemountCold  = "cp -r throughput: remount from disk / cold"
	ratioDRemountLimit = "cp -r throughput: remount from disk / the limit"
	ratioDColdLimit    = "cp -r throughput: cold with `--cache-dir` / the limit"

	targetDMountDropped = "page cache of the mount's chunk files dropped before the copy (resident bytes = 0)"
	targetDDirDropped   = "page cache of the cache folder's entries dropped before the copy (resident bytes = 0)"
	targetDExact        = "byte-exact"
	targetDMeta         = "metadata key requests (listings apart: one per folder listed, as on every mount)"
)

// diskOrder is the disk table's row order.
func diskOrder(limit int) []string {
	return []string{directName(limit, true), mDCold, mDWarm, mDRemount}
}

var diskRatioOrder = []string{ratioDRemountWarm, ratioDRemountCold, ratioDRemountLimit, ratioDColdLimit}

// diskState is what the disk rows learn once.
type diskState struct {
	ready   bool
	dropErr error // why the page cache cannot be dropped (nil: it can)
}

// requestSplit is a row's gateway requests by kind: the chunk GETs and
// HEADs and the metadata keys of one datasource, the listings and catalog
// lookups (of every datasource: the rows read one), and the rest
// (sessions, other datasources' keys).
type requestSplit struct {
	ChunkGets, ChunkHeads, MetaKeys, Listings, Catalog, Other int64
	// Unsplit counts key requests the gateway's per-key counters left
	// out (too many keys): the split is then incomplete.
	Unsplit int64
}

// metadata is what DESIGN.md §6 bounds at remount: requests for the
// datasource's metadata keys. Listings are not kept on disk (a folder
// listed is listed once per mount, with or without the folder).
func (s requestSplit) metadata() int64 { return s.MetaKeys }

// splitRequests splits the counted requests by kind for datasource ds. A
// key request is counted as "DS/KEY METHOD"; listings and catalog lookups
// by route only.
func splitRequests(c counters, ds string) requestSplit {
	var s requestSplit
	for k, n := range c.ZarrKeys {
		rest, ok := strings.CutPrefix(k, ds+"/")
		if !ok {
			continue
		}
		key, method, ok := strings.Cut(rest, " ")
		switch {
		case !ok:
		case isMetadataKey(key) && (method == "GET" || method == "HEAD"):
			s.MetaKeys += n
		case method == "GET":
			s.ChunkGets += n
		case method == "HEAD":
			s.ChunkHeads += n
		}
	}
	s.Listings = c.ByRoute["zarr_list"]
	s.Catalog = c.ByRoute["catalog"] + c.ByRoute["datasource"]
	s.Other = c.Requests - s.ChunkGets - s.ChunkHeads - s.MetaKeys - s.Listings - s.Catalog
	s.Unsplit = c.ZarrKeysOther
	return s
}

// diskFigures are the disk tier's counters of a mount (`dmfs status`).
type diskFigures struct {
	Hits, Writes, Dropped, Evictions, Corrupt int64
}

// sub is d − e, field by field: the figures of one operation.
func (d diskFigures) sub(e diskFigures) diskFigures {
	return diskFigures{d.Hits - e.Hits, d.Writes - e.Writes, d.Dropped - e.Dropped, d.Evictions - e.Evictions,
		d.Corrupt - e.Corrupt}
}

// diskStatus asks the mount for its disk tier's counters with `dmfs
// status --json MOUNTPOINT`.
func (m *dmfsMount) diskStatus(ctx context.Context) (diskFigures, error) {
	st, err := m.status(ctx)
	if err != nil {
		return diskFigures{}, err
	}
	return diskFiguresOf(st)
}

// diskFiguresOf is the disk tier's counters in a mount's status.
func diskFiguresOf(st mountstat.Mount) (diskFigures, error) {
	if st.Cache == nil || st.Cache.Disk == nil {
		return diskFigures{}, fmt.Errorf("dmfs status: %s reports no disk cache", st.Mountpoint)
	}
	d := st.Cache.Disk
	return diskFigures{Hits: d.Hits, Writes: d.Writes, Dropped: d.Dropped, Evictions: d.Evictions, Corrupt: d.Corrupt}, nil
}

// status is the mount's entry in `dmfs status --json MOUNTPOINT`.
func (m *dmfsMount) status(ctx context.Context) (mountstat.Mount, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, m.bin, "status", "--json", m.mnt)
	cmd.Env = m.env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return mountstat.Mount{}, fmt.Errorf("dmfs status %s: %w: %s", m.mnt, err, firstLines(stderr.String(), 3))
	}
	return parseStatus(out, m.mnt)
}

// parseStatus reads the entry of the running mount at mnt from a `dmfs
// status --json` document.
func parseStatus(doc []byte, mnt string) (mountstat.Mount, error) {
	var st mountstat.Status
	if err := json.Unmarshal(doc, &st); err != nil {
		return mountstat.Mount{}, fmt.Errorf("dmfs status: %w", err)
	}
	for _, m := range st.Mounts {
		if m.Mountpoint != mnt {
			continue
		}
		if m.State != mountstat.StateRunning {
			return mountstat.Mount{}, fmt.Errorf("dmfs status: %s is %s: %s", mnt, m.State, m.Problem)
		}
		return m, nil
	}
	return mountstat.Mount{}, fmt.Errorf("dmfs status: no mount at %s", mnt)
}

// settleDisk waits (at most a minute, untimed) until the mount's disk tier
// has written or dropped no value for half a second: the cold copy's
// writes are queued, and must not land in the next row.
func (b *bench) settleDisk(ctx context.Context, m *dmfsMount) (diskFigures, error) {
	last, err := m.diskStatus(ctx)
	if err != nil {
		return last, err
	}
	deadline := time.Now().Add(time.Minute)
	for still := 0; still < 5; {
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		cur, err := m.diskStatus(ctx)
		if err != nil {
			return cur, err
		}
		if cur.Writes == last.Writes && cur.Dropped == last.Dropped {
			still++
		} else {
			still = 0
		}
		last = cur
		if time.Now().After(deadline) {
			return last, errors.New("the disk cache's writes did not settle within a minute")
		}
	}
	return last, nil
}

// folderFiles lists the regular files under dir and sums their sizes.
func folderFiles(dir string) (files []string, total int64, err error) {
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		files = append(files, p)
		total += info.Size()
		return nil
	})
	return files, total, err
}

// copyDisk times `cp -r src` into a fresh folder on tmpfs, then checks the
// copy against the direct client's local copy (untimed).
func (b *bench) copyDisk(ctx context.Context, src string) (sample, error) {
	dest := filepath.Join(b.shm, fmt.Sprintf("disk-%d", time.Now().UnixNano()))
	defer os.RemoveAll(dest)
	t, err := runTimed(ctx, b.o.limit, "cp", "-r", src, dest)
	if err != nil {
		return sample{}, err
	}
	s := sample{Seconds: t.Seconds, Capped: t.Capped, Chunks: b.chunks, SplitDS: datasource, Checked: true}
	s.Bytes, _, _ = treeBytes(dest)
	if t.Capped {
		s.Check = "not checked: stopped at the time cap"
	} else if err := compareTree(dest, b.srcDir, b.keys); err != nil {
		s.Check = "copy differs from the direct fetch: " + err.Error()
	}
	return s, nil
}

// oneDiskRun measures every disk cache row once.
func (b *bench) oneDiskRun(ctx context.Context, parent *latencyResult) error {
	if parent.Disk == nil {
		parent.Disk = newLatencyResult(parent.Latency)
	}
	res := parent.Disk
	if err := b.localCopy(ctx); err != nil {
		return err
	}
	D := &b.disk
	if !D.ready {
		if D.dropErr = b.dropPageCache(); D.dropErr != nil {
			b.logf("cannot drop the page cache (%v): the disk rows that need it are left out", D.dropErr)
		}
		D.ready = true
	}
	sess, err := b.session(ctx)
	if err != nil {
		return err
	}
	limit := b.o.limitClients()
	add := func(name string, s sample) sample {
		if s.Check != "" {
			b.checkFailures++
			b.logf("  CHECK FAILED %s: %s", name, s.Check)
		}
		res.add(name, s)
		return s
	}

	// The limit: every key of the datasource fetched directly.
	direct, err := b.measure(ctx, directName(limit, true), func() (sample, error) {
		r, err := b.client.fetchAll(ctx, datasource, sess, b.keys, limit)
		return sample{Seconds: r.Seconds, Bytes: r.Bytes, Chunks: b.chunks, SplitDS: datasource}, err
	})
	if err != nil {
		return err
	}
	add(directName(limit, true), direct)

	// Cold, then from dmfs's memory, on one mount with a fresh cache
	// folder that holds everything.
	cacheDir := b.path("disk-cache")
	defer os.RemoveAll(cacheDir)
	flags := []string{"--cache-dir", cacheDir, "--cache-dir-size", fmt.Sprintf("%dMiB", b.cacheLarge>>20)}
	m, err := b.mountDMFS(ctx, b.cacheLarge, flags...)
	if err != nil {
		return err
	}
	src := filepath.Join(m.dir(), datasource)
	// copyMeasure runs one measured copy on mount m and fills in the
	// disk tier's figures of that copy and the daemon's peak memory.
	copyMeasure := func(m *dmfsMount, name string, settle bool, fill func(*sample)) (sample, error) {
		before, err := m.diskStatus(ctx)
		if err != nil {
			return sample{}, err
		}
		s, err := b.measure(ctx, name, func() (sample, error) { return b.copyDisk(ctx, src) })
		if err != nil {
			return sample{}, err
		}
		after, err := m.diskStatus(ctx)
		if settle && err == nil {
			after, err = b.settleDisk(ctx, m)
		}
		if err != nil {
			return sample{}, err
		}
		s.DiskMeasured, s.Disk = true, after.sub(before)
		if s.RSS, err = m.peakMemory(); err != nil {
			return sample{}, err
		}
		if fill != nil {
			fill(&s)
		}
		b.logf("  %-58s disk tier: %d hits, %d writes, %d dropped; gateway: %d chunk GETs, %d chunk HEADs, %d metadata keys, %d listings, %d catalog, %d other",
			name, s.Disk.Hits, s.Disk.Writes, s.Disk.Dropped, s.Split.ChunkGets, s.Split.ChunkHeads, s.Split.MetaKeys,
			s.Split.Listings, s.Split.Catalog, s.Split.Other)
		return add(name, s), nil
	}
	cold, err := copyMeasure(m, mDCold, true, nil)
	if err != nil {
		return err
	}
	var warm sample
	if D.dropErr == nil {
		before, after, err := b.dropChunkPages(src, b.keys, "the cold copy")
		if err != nil {
			return err
		}
		if warm, err = copyMeasure(m, mDWarm, false, func(s *sample) {
			s.PageCacheMeasured, s.PageCacheBefore, s.PageCacheAfter = true, before, after
			if s.Check == "" && after > 0 {
				s.Check = fmt.Sprintf("page cache not dropped: %d bytes of the chunk files resident", after)
			}
		}); err != nil {
			return err
		}
	}
	if err := b.closeMount(m); err != nil {
		return err
	}
	entries, folder, err := folderFiles(cacheDir)
	if err != nil {
		return err
	}
	b.logf("  cache folder after unmount: %d files, %.1f MB (%s)", len(entries), float64(folder)/1e6, fsKind(cacheDir))

	// A fresh mount of the same folder, the page cache dropped: the
	// chunks come from the folder's files on disk.
	var remount sample
	if D.dropErr == nil {
		if m, err = b.mountDMFS(ctx, b.cacheLarge, flags...); err != nil {
			return err
		}
		src = filepath.Join(m.dir(), datasource)
		before, err := residentBytes(entries)
		if err != nil {
			return err
		}
		if err := b.dropPageCache(); err != nil {
			return err
		}
		after, err := residentBytes(entries)
		if err != nil {
			return err
		}
		b.logf("  page cache of the cache folder's files: %.1f MB resident after the remount, %.1f MB after the drop",
			float64(before)/1e6, float64(after)/1e6)
		if remount, err = copyMeasure(m, mDRemount, false, func(s *sample) {
			s.FolderBytes = folder
			s.PageCacheMeasured, s.PageCacheBefore, s.PageCacheAfter = true, before, after
			if s.Check == "" && after > 0 {
				s.Check = fmt.Sprintf("page cache not dropped: %d bytes of the cache folder's files resident (%s)", after, fsKind(cacheDir))
			}
		}); err != nil {
			return err
		}
		if err := b.closeMount(m); err != nil {
			return err
		}
	}

	// Ratios of throughputs taken in this run; a capped copy has none.
	ratio := func(name string, num, den sample) {
		if !num.Capped && !den.Capped {
			res.addRatio(name, throughput(num), throughput(den))
		}
	}
	ratio(ratioDColdLimit, cold, direct)
	if D.dropErr == nil {
		ratio(ratioDRemountWarm, remount, warm)
		ratio(ratioDRemountCold, remount, cold)
		ratio(ratioDRemountLimit, remount, direct)
	}
	return nil
}

// writeDiskSection writes the "Disk cache" section, one table per latency.
func (b *bench) writeDiskSection(w io.Writer, results []*latencyResult) {
	order := diskOrder(b.o.limitClients())
	found := false
	for _, r := range results {
		found = found || (r.Disk != nil && r.Disk.has(order))
	}
	if !found {
		return
	}
	fmt.Fprintf(w, "## Disk cache (`--cache-dir`)\n\n")
	fmt.Fprintf(w, "`%s` (%d keys, %d chunks, %.1f MB on the wire) copied by `cp -r` to tmpfs three ways in each run, each copy then checked against the direct client's local copy (chunks byte for byte, metadata as JSON), untimed. ",
		datasource, len(b.keys), b.chunks, float64(b.wireBytes)/1e6)
	fmt.Fprintf(w, "**Cold**: a fresh mount (`--cache-size %dMiB --cache-dir DIR --cache-dir-size %dMiB`, both holding everything) with DIR new and empty; its time ends when `cp -r` does, and the disk tier's writes it queued are then waited for, untimed. ",
		b.cacheLarge>>20, b.cacheLarge>>20)
	fmt.Fprintf(w, "**From dmfs's memory**: the same mount again after the kernel's page cache is dropped (`sync; echo 1 > /proc/sys/vm/drop_caches`), so every read reaches dmfs, which answers from its memory; the Checks column gives the page cache of the mount's chunk files (mincore(2)) after the cold copy → after the drop. ")
	fmt.Fprintf(w, "**Remount from disk**: `dmfs unmount`, a fresh mount with the same DIR, the page cache dropped again, then `cp -r`: dmfs's memory is empty, so the chunks come from DIR's files on disk (DIR is in the benchmark's work folder under `$TMPDIR`, on %s; the Checks column gives the page cache of DIR's files (mincore(2)) after the remount → after the drop), unless the disk tier misses and the gateway is asked. ",
		fsKind(b.work))
	fmt.Fprintf(w, "After every drop the gateway's data folder is read back into the page cache (untimed), so that the gateway answers from memory, as it did the limit's fetch. ")
	fmt.Fprintf(w, "The limit GETs every key of `%s` with %d clients. ", datasource, b.o.limitClients())
	fmt.Fprintf(w, "Gateway requests are the gateway's counters during the copy, split into the chunk GETs and HEADs of `%s`, the GETs and HEADs of its metadata keys (`.zmetadata`, `.zarray`, ...), listings (`GET /zarr/ID/PATH/`), catalog lookups, and other requests (sessions, other datasources' keys); the target's metadata requests are its metadata keys (a listing is not kept on disk: each folder listed costs one per mount, with or without the folder). ", datasource)
	fmt.Fprintf(w, "The disk tier's hits, writes and dropped writes are the mount's own counters (`dmfs status --json`) over the copy. Peak memory is VmHWM of the dmfs daemon after the copy plus the most its cache's memory file held (`memory_file_peak_bytes` in `dmfs status --json`: values kept there are not in the RSS).\n\n")
	if b.disk.dropErr != nil {
		fmt.Fprintf(w, "The page cache could not be dropped (%s): the rows from dmfs's memory and after the remount are missing.\n\n", escapeCell(b.disk.dropErr.Error()))
	}
	for _, r := range results {
		if r.Disk == nil || !r.Disk.has(order) {
			continue
		}
		fmt.Fprintf(w, "### Disk cache, gateway latency %v\n\n", r.Latency)
		r.Disk.writeDiskTable(w, order)
		fmt.Fprintf(w, "\nTargets (DESIGN.md §6, remount with a disk cache; the other ratios are for information):\n\n")
		writeTargets(w, r.Disk.diskTargets())
		fmt.Fprintln(w)
	}
}

// writeDiskTable writes one latency's disk cache rows and ratios.
func (r *latencyResult) writeDiskTable(w io.Writer, order []string) {
	fmt.Fprintf(w, "| Operation | Time, s: median (min–max) | MB/s | Gateway requests: all (chunk GET, chunk HEAD, metadata key, listing, catalog, other) | Disk tier: hits / writes / dropped | Peak memory, MiB | Checks |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|\n")
	for _, name := range order {
		ss := r.Samples[name]
		if len(ss) == 0 {
			continue
		}
		mbps := mbpsColumn(ss)
		f := func(get func(sample) int64) string {
			s, _ := summarize(pick(ss, func(s sample) float64 { return float64(get(s)) }))
			return s.format("", 0)
		}
		reqCol := fmt.Sprintf("%s (%s, %s, %s, %s, %s, %s)", f(func(s sample) int64 { return s.Requests }),
			f(func(s sample) int64 { return s.Split.ChunkGets }), f(func(s sample) int64 { return s.Split.ChunkHeads }),
			f(func(s sample) int64 { return s.Split.MetaKeys }), f(func(s sample) int64 { return s.Split.Listings }),
			f(func(s sample) int64 { return s.Split.Catalog }), f(func(s sample) int64 { return s.Split.Other }))
		if countIf(ss, func(s sample) bool { return s.Split.Unsplit > 0 }) > 0 {
			reqCol += "; split incomplete: " + f(func(s sample) int64 { return s.Split.Unsplit }) + " key requests not counted per key"
		}
		diskCol := "—"
		if countIf(ss, func(s sample) bool { return s.DiskMeasured }) == len(ss) {
			diskCol = f(func(s sample) int64 { return s.Disk.Hits }) + " / " + f(func(s sample) int64 { return s.Disk.Writes }) +
				" / " + f(func(s sample) int64 { return s.Disk.Dropped })
		}
		rss := "—"
		if ss[0].RSS > 0 {
			m, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.RSS) / (1 << 20) }))
			rss = m.format("", 0)
		}
		checks := checksCol(ss)
		if countIf(ss, func(s sample) bool { return s.PageCacheMeasured }) > 0 {
			parts := make([]string, 0, len(ss))
			for _, s := range ss {
				if s.PageCacheMeasured {
					parts = append(parts, residentText(s.PageCacheBefore)+" → "+residentText(s.PageCacheAfter))
				}
			}
			checks += "; page cache " + strings.Join(parts, ", ")
		}
		if countIf(ss, func(s sample) bool { return s.FolderBytes > 0 }) > 0 {
			m, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.FolderBytes) / 1e6 }))
			checks += "; cache folder " + m.format(" MB", 1)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", name, timeColumn(ss), mbps, reqCol, diskCol, rss, checks)
	}
	fmt.Fprintf(w, "\n| Ratio (computed within each run) | median (min–max) |\n|---|---|\n")
	for _, name := range diskRatioOrder {
		if s, ok := summarize(r.Ratios[name]); ok {
			fmt.Fprintf(w, "| %s | %s |\n", name, s.format("x", 2))
		}
	}
}

// diskTargets checks the disk cache figures of DESIGN.md §6: the remount
// re-read makes no chunk request and at most one metadata request (one
// datasource is read; a listing counts: it is what a lister asks for the
// datasource's structure), at least half the warm in-memory throughput; the
// read from memory makes no request; every copy is byte-exact and every
// page cache drop took.
func (r *latencyResult) diskTargets() []target {
	var out []target
	if s, ok := summarize(r.Ratios[ratioDRemountWarm]); ok {
		out = append(out, target{ratioDRemountWarm, "≥ 0.5x", s.format("x", 2), s.Min >= 0.5})
	}
	count := func(name, what, want string, get func(sample) int64, ok func(summary) bool) {
		ss := r.Samples[name]
		if len(ss) == 0 {
			return
		}
		s, _ := summarize(pick(ss, func(s sample) float64 { return float64(get(s)) }))
		// A split that missed key requests cannot show that none was made.
		complete := countIf(ss, func(s sample) bool { return s.Split.Unsplit > 0 }) == 0
		out = append(out, target{name + ": " + what, want, s.format("", 0), ok(s) && complete})
	}
	count(mDRemount, "chunk requests", "0", func(s sample) int64 { return s.Split.ChunkGets + s.Split.ChunkHeads },
		func(s summary) bool { return s.Max == 0 })
	count(mDRemount, targetDMeta, "≤ 1", func(s sample) int64 { return s.Split.metadata() },
		func(s summary) bool { return s.Max <= 1 })
	count(mDWarm, "gateway requests", "0", func(s sample) int64 { return s.Requests },
		func(s summary) bool { return s.Max == 0 })
	for _, d := range []struct{ name, what string }{{mDWarm, targetDMountDropped}, {mDRemount, targetDDirDropped}} {
		ss := r.Samples[d.name]
		if len(ss) == 0 {
			continue
		}
		n := countIf(ss, func(s sample) bool { return s.PageCacheMeasured && s.PageCacheAfter == 0 })
		out = append(out, target{d.name + ": " + d.what, "every run", fmt.Sprintf("in %d of %d runs", n, len(ss)), n == len(ss)})
	}
	for _, name := range []string{mDCold, mDWarm, mDRemount} {
		ss := r.Samples[name]
		if len(ss) == 0 {
			continue
		}
		failed := countIf(ss, func(s sample) bool { return !s.Checked || (s.Check != "" && !strings.HasPrefix(s.Check, "page cache")) })
		out = append(out, target{name + ": " + targetDExact, "every run", fmt.Sprintf("in %d of %d runs", len(ss)-failed, len(ss)), failed == 0})
	}
	return out
}
