package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The large-chunk benchmarks (DESIGN.md §6, issue 18): demo_large's field,
// uncompressed float32 in chunks of exactly 4 MiB, where the cost is bytes
// through FUSE rather than latency, read by `cp -r` cold, from dmfs's
// memory with the kernel's page cache dropped, and by xarray; each against
// the limit's fetch of the same chunks and a local `cp -r` of the same
// files, in the same run. And demo_large's shard, one 64 MiB object, read
// once: its requests (byte ranges) and its bytes.

const (
	largeDS  = "demo_large"
	largeVar = "field" // 4 MiB chunks
	shardVar = "shard" // one 64 MiB chunk
	// largeSmallCacheMin is the least cache of the small-cache row: a few
	// chunks.
	largeSmallCacheMin = 32 << 20
)

// Large-chunk measure names, in table order; the limit's row is named by
// largeDirectName. They live in latencyResult.Large, apart from the reads.
const (
	mLLocalDrop   = "local `cp -r`, page cache dropped"
	mLLocalWarm   = "local `cp -r`, page cache warm"
	mLLocalXr     = "local xarray `.load()`, page cache warm"
	mLCold        = "dmfs `cp -r` cold"
	mLWarmKept    = "dmfs `cp -r` warm, page cache kept"
	mLWarmDrop    = "dmfs `cp -r` from dmfs's memory, page cache dropped"
	mLColdSmall   = "dmfs `cp -r` cold, small cache"
	mLXrCold      = "dmfs xarray `.load()` cold"
	mLXrWarm      = "dmfs xarray `.load()` warm"
	mLShardDirect = "shard (64 MiB): direct HTTP GET, 1 client"
	mLShard       = "shard (64 MiB): dmfs `cp` cold"

	ratioLCold     = "cp -r cold: max(the limit's fetch, local `cp -r` warm) time / dmfs time"
	ratioLMem      = "cp -r from dmfs's memory, page cache dropped: local `cp -r` warm time / dmfs time"
	ratioLMemDrop  = "cp -r from dmfs's memory, page cache dropped: local `cp -r` (page cache dropped) time / dmfs time"
	ratioLColdSm   = "cp -r cold, small cache: max(the limit's fetch, local `cp -r` warm) time / dmfs time"
	ratioLXrFetch  = "xarray `.load()` cold: the limit's fetch time / dmfs time"
	ratioLXrLocal  = "xarray `.load()` cold: local xarray `.load()` time / dmfs time"
	ratioLXrBound  = "xarray `.load()`: (dmfs cold − warm time) / the limit's fetch time"
	ratioLShard    = "shard: direct GET time / dmfs time"
	targetLDropped = "page cache of the chunk files dropped before the copy (resident bytes = 0, or read by passthrough)"
	targetLRSS     = "peak memory − cache size (small cache, reading all of `field`)"
	targetLExact   = "byte-exact"
)

// largeDirectName names the limit's fetch of field's chunks.
func largeDirectName(n int) string {
	return fmt.Sprintf("direct HTTP, %d clients (the limit), the same chunks", n)
}

// largeOrder is the large table's row order.
func largeOrder(limit int) []string {
	return []string{largeDirectName(limit), mLLocalDrop, mLLocalWarm, mLLocalXr, mLCold, mLWarmKept, mLWarmDrop,
		mLColdSmall, mLXrCold, mLXrWarm, mLShardDirect, mLShard}
}

var largeRatioOrder = []string{ratioLCold, ratioLMem, ratioLMemDrop, ratioLColdSm, ratioLXrFetch, ratioLXrLocal,
	ratioLXrBound, ratioLShard}

// largeSet is what the large rows know of demo_large, learnt once.
type largeSet struct {
	ready      bool
	chunkKeys  []string // field's chunks: what the limit fetches
	fieldFiles []string // every key under field/, relative to it: what `cp -r` of field copies
	chunks     int64
	chunkBytes int64
	fieldBytes int64  // chunks and field's metadata
	shardKey   string // shard's one chunk
	shardBytes int64
	// dir holds the local copy, dir/demo_large (the direct fetch's files,
	// shard's chunk left out), on the work folder's file system, and the
	// shard's chunk in shardFile.
	dir, shardFile         string
	cacheLarge, cacheSmall int64
	dropErr                error // why the page cache cannot be dropped (nil: it can)
}

// largeSetup lists demo_large and makes the local copy, once.
func (b *bench) largeSetup(ctx context.Context, sess string) error {
	L := &b.large
	if L.ready {
		return nil
	}
	keys, err := b.client.listKeys(ctx, largeDS, sess)
	if err != nil {
		return err
	}
	var rest []string
	for _, k := range keys {
		if strings.HasPrefix(k, shardVar+"/") && !isMetadataKey(k) {
			if L.shardKey != "" {
				return fmt.Errorf("%s: %s has more than one chunk (%s, %s)", largeDS, shardVar, L.shardKey, k)
			}
			L.shardKey = k
			continue
		}
		rest = append(rest, k)
	}
	if L.shardKey == "" {
		return fmt.Errorf("%s has no %s chunk: is the dmfs binary older than demo_large?", largeDS, shardVar)
	}
	L.dir = filepath.Join(b.work, "large")
	got, err := b.client.download(ctx, largeDS, sess, rest, b.o.limitClients(), filepath.Join(L.dir, largeDS))
	if err != nil {
		return fmt.Errorf("local copy of %s: %w", largeDS, err)
	}
	shardDir := filepath.Join(b.work, "large-shard")
	sh, err := b.client.download(ctx, largeDS, sess, []string{L.shardKey}, 1, shardDir)
	if err != nil {
		return fmt.Errorf("local copy of %s/%s: %w", largeDS, L.shardKey, err)
	}
	L.shardFile, L.shardBytes = filepath.Join(shardDir, filepath.FromSlash(L.shardKey)), sh.Bytes
	for _, k := range rest {
		rel, ok := strings.CutPrefix(k, largeVar+"/")
		if !ok {
			continue
		}
		L.fieldFiles = append(L.fieldFiles, rel)
		L.fieldBytes += got.Sizes[k]
		if !isMetadataKey(k) {
			L.chunkKeys = append(L.chunkKeys, k)
			L.chunks++
			L.chunkBytes += got.Sizes[k]
		}
	}
	slices.Sort(L.fieldFiles)
	if L.chunks == 0 {
		return fmt.Errorf("%s/%s has no chunks", largeDS, largeVar)
	}
	L.cacheLarge = max(1<<30, (2*(got.Bytes+sh.Bytes)+1<<20)&^(1<<20-1))
	L.cacheSmall = max(largeSmallCacheMin, L.fieldBytes/10) &^ (1<<20 - 1)
	syscall.Sync() // the fresh copy's writeback must not compete with the measurements
	L.dropErr = b.dropPageCache()
	if L.dropErr != nil {
		b.logf("cannot drop the page cache (%v): the rows that need it are left out", L.dropErr)
	}
	L.ready = true
	b.logf("dataset %s: %s has %d chunks, %.1f MB; %s %.1f MB in one chunk; local copy in %s (%s); caches %d MiB and %d MiB",
		largeDS, largeVar, L.chunks, float64(L.chunkBytes)/1e6, shardVar, float64(L.shardBytes)/1e6, L.dir,
		fsKind(L.dir), L.cacheLarge>>20, L.cacheSmall>>20)
	return nil
}

// dropPageCache drops the kernel's page cache (dropPageCache) and reads
// the gateway's data folder back into it, untimed: the gateway must serve
// every row from memory, as it did the limit's fetch, and the next parts
// must find it so too.
func (b *bench) dropPageCache() error {
	if err := dropPageCache(); err != nil {
		return err
	}
	start := time.Now()
	n, err := readTree(b.dataDir)
	if err != nil {
		return fmt.Errorf("reading the gateway's data back into the page cache: %w", err)
	}
	b.logf("  dropped the page cache; read the gateway's %.1f MB back in %.2f s", float64(n)/1e6, time.Since(start).Seconds())
	return nil
}

// readTree reads every regular file under dir and returns the bytes read.
func readTree(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		n, err := io.Copy(io.Discard, f)
		total += n
		return err
	})
	return total, err
}

// dropPageCache writes back dirty pages and drops the kernel's clean page
// cache, that of FUSE files included (needs root).
func dropPageCache() error {
	syscall.Sync()
	f, err := os.OpenFile("/proc/sys/vm/drop_caches", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString("1\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// dropChunkPages drops the kernel's page cache and says how much of the
// chunk files among keys (relative to the mount's datasource folder src)
// was resident before and after, as mincore(2) sees them; after names what
// came before the drop, for the log.
func (b *bench) dropChunkPages(src string, keys []string, after string) (before, left int64, err error) {
	files := make([]string, 0, len(keys))
	for _, k := range keys {
		if !isMetadataKey(k) {
			files = append(files, filepath.Join(src, filepath.FromSlash(k)))
		}
	}
	if before, err = residentBytes(files); err != nil {
		return 0, 0, err
	}
	if err := b.dropPageCache(); err != nil {
		return 0, 0, err
	}
	if left, err = residentBytes(files); err != nil {
		return 0, 0, err
	}
	b.logf("  page cache of the mount's chunk files: %.1f MB resident after %s, %.1f MB after the drop",
		float64(before)/1e6, after, float64(left)/1e6)
	return before, left, nil
}

// residentBytes sums the bytes of files the kernel's page cache holds,
// from mincore(2) on a read-only mapping of each file (which reads
// nothing).
func residentBytes(files []string) (int64, error) {
	page := int64(os.Getpagesize())
	var total int64
	for _, path := range files {
		n, err := fileResident(path, page)
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

func fileResident(path string, page int64) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := st.Size()
	if size == 0 {
		return 0, nil
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, fmt.Errorf("mmap %s: %w", path, err)
	}
	defer unix.Munmap(mem)
	vec := make([]byte, (size+page-1)/page)
	// x/sys/unix has no mincore wrapper.
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)),
		uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		return 0, fmt.Errorf("mincore %s: %w", path, errno)
	}
	var n int64
	for i, v := range vec {
		if v&1 != 0 {
			n += min(page, size-int64(i)*page)
		}
	}
	return n, nil
}

// copyLarge times `cp -r src` into a fresh folder on tmpfs; when want is
// not "", it then checks the copy against want (untimed).
func (b *bench) copyLarge(ctx context.Context, src, want string) (sample, error) {
	dest := filepath.Join(b.shm, fmt.Sprintf("large-%d", time.Now().UnixNano()))
	defer os.RemoveAll(dest)
	t, err := runTimed(ctx, b.o.limit, "cp", "-r", src, dest)
	if err != nil {
		return sample{}, err
	}
	s := sample{Seconds: t.Seconds, Capped: t.Capped, CPU: t.CPU, Chunks: b.large.chunks}
	var chunkBytes int64
	s.Bytes, chunkBytes, _ = treeBytes(dest)
	if want != "" {
		s.Checked = true
		switch {
		case t.Capped:
			s.Check = "not checked: stopped at the time cap"
		default:
			if err := compareTree(dest, want, b.large.fieldFiles); err != nil {
				s.Check = "copy differs from the direct fetch: " + err.Error()
			}
		}
	} else if !t.Capped && chunkBytes != b.large.chunkBytes {
		// dmfs serves metadata re-encoded: count the chunks only.
		return sample{}, fmt.Errorf("cp -r %s copied %d bytes of chunks, want %d", src, chunkBytes, b.large.chunkBytes)
	}
	return s, nil
}

// readShard times `cp` of the shard's chunk from a mount and checks its
// bytes against the direct fetch's.
func (b *bench) readShard(ctx context.Context, mnt string) (sample, error) {
	dest := filepath.Join(b.shm, fmt.Sprintf("shard-%d", time.Now().UnixNano()))
	defer os.Remove(dest)
	t, err := runTimed(ctx, b.o.limit, "cp", filepath.Join(mnt, largeDS, filepath.FromSlash(b.large.shardKey)), dest)
	if err != nil {
		return sample{}, err
	}
	s := sample{Seconds: t.Seconds, Capped: t.Capped, CPU: t.CPU, Chunks: 1, Checked: true}
	if t.Capped {
		s.Check = "not checked: stopped at the time cap"
		return s, nil
	}
	got, err := os.ReadFile(dest)
	if err != nil {
		return sample{}, err
	}
	want, err := os.ReadFile(b.large.shardFile)
	if err != nil {
		return sample{}, err
	}
	s.Bytes = int64(len(got))
	if !bytes.Equal(got, want) {
		s.Check = fmt.Sprintf("differs from the direct fetch (%d bytes, want %d; first difference at byte %d)",
			len(got), len(want), firstDiff(got, want))
	}
	return s, nil
}

// firstDiff is the offset of the first byte where a and b differ.
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// oneLargeRun measures every large-chunk row once.
func (b *bench) oneLargeRun(ctx context.Context, parent *latencyResult) error {
	if parent.Large == nil {
		parent.Large = newLatencyResult(parent.Latency)
	}
	res := parent.Large
	sess, err := b.session(ctx)
	if err != nil {
		return err
	}
	if err := b.largeSetup(ctx, sess); err != nil {
		return err
	}
	L := &b.large
	limit := b.o.limitClients()
	fieldPrefix := largeDS + "/" + largeVar + "/"
	add := func(name string, s sample) sample { res.add(name, s); return s }

	// The limit: field's chunks fetched directly.
	direct, err := b.measure(ctx, largeDirectName(limit), func() (sample, error) {
		r, err := b.client.fetchAll(ctx, largeDS, sess, L.chunkKeys, limit)
		return sample{Seconds: r.Seconds, CPU: r.CPU, Bytes: r.Bytes, Chunks: L.chunks, KeyPrefix: fieldPrefix}, err
	})
	if err != nil {
		return err
	}
	add(largeDirectName(limit), direct)

	// The local copy: page cache dropped (from disk, unless the work
	// folder is on tmpfs), then warm; then xarray on it, warm.
	local := filepath.Join(L.dir, largeDS, largeVar)
	var localDrop sample
	if L.dropErr == nil {
		if err := b.dropPageCache(); err != nil {
			return err
		}
		if localDrop, err = b.measure(ctx, mLLocalDrop, func() (sample, error) { return b.copyLarge(ctx, local, "") }); err != nil {
			return err
		}
		add(mLLocalDrop, localDrop)
	} else if _, err := b.copyLarge(ctx, local, ""); err != nil { // warms the page cache
		return err
	}
	localWarm, err := b.measure(ctx, mLLocalWarm, func() (sample, error) { return b.copyLarge(ctx, local, "") })
	if err != nil {
		return err
	}
	add(mLLocalWarm, localWarm)
	localXr, err := b.measure(ctx, mLLocalXr, func() (sample, error) {
		return b.xarrayVar(ctx, "path", filepath.Join(L.dir, largeDS), largeVar, "load", "", L.chunkBytes, L.chunks)
	})
	if err != nil {
		return err
	}
	add(mLLocalXr, localXr)

	// dmfs cp -r: cold, warm with the page cache kept, then from dmfs's
	// memory with the page cache dropped, on one mount.
	m, err := b.mountDMFS(ctx, L.cacheLarge)
	if err != nil {
		return err
	}
	src := filepath.Join(m.dir(), largeDS, largeVar)
	copyMeasure := func(name, want string) (sample, error) {
		s, err := b.measure(ctx, name, func() (sample, error) {
			s, err := b.copyLarge(ctx, src, want)
			s.KeyPrefix = fieldPrefix
			return s, err
		})
		if err != nil {
			return s, err
		}
		if s.RSS, err = m.peakMemory(); err != nil {
			return s, err
		}
		if s.Check != "" {
			b.checkFailures++
			b.logf("  CHECK FAILED %s: %s", name, s.Check)
		}
		return add(name, s), nil
	}
	cold, err := copyMeasure(mLCold, local)
	if err != nil {
		return err
	}
	if _, err := copyMeasure(mLWarmKept, ""); err != nil {
		return err
	}
	var fromMem sample
	if L.dropErr == nil {
		st, err := m.status(ctx)
		if err != nil {
			return err
		}
		passthrough := st.PassthroughMinBytes > 0 && st.PassthroughMinBytes <= L.chunkBytes/int64(L.chunks)
		before, after, err := b.dropChunkPages(src, L.fieldFiles, "the warm copy")
		if err != nil {
			return err
		}
		s, err := b.measure(ctx, mLWarmDrop, func() (sample, error) {
			s, err := b.copyLarge(ctx, src, local)
			s.KeyPrefix = fieldPrefix
			return s, err
		})
		if err != nil {
			return err
		}
		if s.RSS, err = m.peakMemory(); err != nil {
			return err
		}
		s.PageCacheMeasured, s.PageCacheBefore, s.PageCacheAfter = true, before, after
		s.Passthrough = passthrough
		if s.Check == "" && after > 0 && !passthrough {
			s.Check = fmt.Sprintf("page cache not dropped: %d bytes of the chunk files resident", after)
		}
		if s.Check != "" {
			b.checkFailures++
			b.logf("  CHECK FAILED %s: %s", mLWarmDrop, s.Check)
		}
		fromMem = add(mLWarmDrop, s)
	}
	if err := b.closeMount(m); err != nil {
		return err
	}

	// dmfs cp -r cold with a small cache, for the peak memory.
	if m, err = b.mountDMFS(ctx, L.cacheSmall); err != nil {
		return err
	}
	src = filepath.Join(m.dir(), largeDS, largeVar)
	small, err := copyMeasure(mLColdSmall, local)
	if err != nil {
		return err
	}
	if err := b.closeMount(m); err != nil {
		return err
	}

	// xarray .load() of field through dmfs, cold then warm.
	if m, err = b.mountDMFS(ctx, L.cacheLarge); err != nil {
		return err
	}
	xr := map[string]sample{}
	for _, name := range []string{mLXrCold, mLXrWarm} {
		s, err := b.measure(ctx, name, func() (sample, error) {
			s, err := b.xarrayVar(ctx, "path", filepath.Join(m.dir(), largeDS), largeVar, "load", "", L.chunkBytes, L.chunks)
			s.KeyPrefix = fieldPrefix
			return s, err
		})
		if err != nil {
			return err
		}
		xr[name] = add(name, s)
	}
	if err := b.closeMount(m); err != nil {
		return err
	}

	// The shard: one whole-object GET, then read once through a fresh
	// mount.
	shardPrefix := largeDS + "/" + shardVar + "/"
	sd, err := b.measure(ctx, mLShardDirect, func() (sample, error) {
		r, err := b.client.fetchAll(ctx, largeDS, sess, []string{L.shardKey}, 1)
		return sample{Seconds: r.Seconds, CPU: r.CPU, Bytes: r.Bytes, Chunks: 1, KeyPrefix: shardPrefix}, err
	})
	if err != nil {
		return err
	}
	add(mLShardDirect, sd)
	if m, err = b.mountDMFS(ctx, L.cacheLarge); err != nil {
		return err
	}
	sh, err := b.measure(ctx, mLShard, func() (sample, error) {
		s, err := b.readShard(ctx, m.dir())
		s.KeyPrefix = shardPrefix
		return s, err
	})
	if err != nil {
		return err
	}
	if sh.RSS, err = m.peakMemory(); err != nil {
		return err
	}
	if sh.Check != "" {
		b.checkFailures++
		b.logf("  CHECK FAILED %s: %s", mLShard, sh.Check)
	}
	add(mLShard, sh)
	b.logf("  %-58s GET %d (206: %d), HEAD %d, %.2f bytes sent per byte read", mLShard, sh.Gets, sh.Partial, sh.Heads,
		float64(sh.BytesSent)/float64(max(1, sh.Bytes)))
	if err := b.closeMount(m); err != nil {
		return err
	}

	// Ratios of times taken in this run; a capped time has none.
	ratio := func(name string, num, den sample) {
		if !num.Capped && !den.Capped && num.Seconds > 0 && den.Seconds > 0 {
			res.addRatio(name, num.Seconds, den.Seconds)
		}
	}
	bound := direct
	if localWarm.Seconds > bound.Seconds {
		bound = localWarm
	}
	ratio(ratioLCold, bound, cold)
	ratio(ratioLColdSm, bound, small)
	if L.dropErr == nil {
		ratio(ratioLMem, localWarm, fromMem)
		ratio(ratioLMemDrop, localDrop, fromMem)
	}
	ratio(ratioLXrFetch, direct, xr[mLXrCold])
	ratio(ratioLXrLocal, localXr, xr[mLXrCold])
	if c, w := xr[mLXrCold], xr[mLXrWarm]; !c.Capped && !w.Capped && !direct.Capped && direct.Seconds > 0 {
		res.Ratios[ratioLXrBound] = append(res.Ratios[ratioLXrBound], (c.Seconds-w.Seconds)/direct.Seconds)
	}
	ratio(ratioLShard, sd, sh)
	return nil
}

// writeLargeSection writes the "Large chunks" section, one table per
// latency.
func (b *bench) writeLargeSection(w io.Writer, results []*latencyResult) {
	order := largeOrder(b.o.limitClients())
	found := false
	for _, r := range results {
		found = found || (r.Large != nil && r.Large.has(order))
	}
	if !found {
		return
	}
	L := &b.large
	fmt.Fprintf(w, "## Large chunks\n\n")
	fmt.Fprintf(w, "`%s` (`dmfs serve --demo --demo-size %s`): `%s` is uncompressed float32 in %d chunks of exactly 4 MiB (%.1f MB), `%s` one chunk of %.1f MB (a v3 shard's size). ",
		largeDS, b.o.size, largeVar, L.chunks, float64(L.chunkBytes)/1e6, shardVar, float64(L.shardBytes)/1e6)
	fmt.Fprintf(w, "Every `cp -r` copies the folder `%s/%s` (its chunks, `.zarray` and `.zattrs`) to tmpfs; the dmfs copies are then checked against the direct fetch's files (chunks byte for byte, metadata as JSON), untimed. ", largeDS, largeVar)
	fmt.Fprintf(w, "The limit GETs the same chunks with %d clients, dropping the bodies through one reused buffer each (the gateway's limit, not a client's page faults); the shard's direct GET does the same. The local copy is the direct fetch's files, written once (untimed) to %s; `cp -r` of it runs first with the page cache dropped (`sync; echo 1 > /proc/sys/vm/drop_caches`), then again with the files in the page cache (warm). After every drop the gateway's data folder is read back into the page cache (untimed), so that the gateway answers every row from memory, as it did the limit's fetch. ",
		b.o.limitClients(), fsKind(L.dir))
	fmt.Fprintf(w, "Machine CPU busy is what every process on the machine (the gateway, dmfs, `cp`, this bench) spent during the timed part, in CPU-seconds on %d cores, from /proc/stat: on a machine this small, the sum of the gateway's, the reader's and dmfs's work bounds a cold copy as much as the gateway's latency does. ",
		runtime.NumCPU())
	fmt.Fprintf(w, "**The ratios use the warm local copy**, memory to memory, the faster of the two, which is what DESIGN.md §6's \"local `cp -r` of the same files\" is taken to mean here; the page-cache-dropped figure is shown beside it. ")
	fmt.Fprintf(w, "dmfs `cp -r` cold is a fresh mount (cache %d MiB, holding everything); then on the same mount warm with the kernel's page cache kept, then with it dropped so that every read reaches dmfs, which answers from its memory: the Checks column gives the page cache of the mount's chunk files (from mincore(2)) after the warm copy → after the drop. ",
		L.cacheLarge>>20)
	fmt.Fprintf(w, "A root mount reads chunks of at least `passthrough_min_bytes` (`dmfs status --json`) by FUSE passthrough: the kernel reads them straight from dmfs's memory file, so they have no page cache to drop, and the pages mincore(2) sees on them are the memory file's; the Checks column says so. ")
	fmt.Fprintf(w, "The small-cache row is a fresh mount with a %d MiB cache (a tenth of `%s`, at least %d MiB). xarray rows time `open_zarr` + `%s.load()` in Python, on a fresh mount (cold, then warm) and on the local copy (page cache warm). ",
		L.cacheSmall>>20, largeVar, largeSmallCacheMin>>20, largeVar)
	fmt.Fprintf(w, "The shard is fetched whole by one direct GET, then read once by `cp` through a fresh mount and compared byte for byte with the direct GET's bytes; its GETs answered 206 are byte ranges. ")
	fmt.Fprintf(w, "Requests per chunk count the GETs and HEADs of the row's own keys (`%s/` or `%s/`); gateway bytes per byte read are the gateway's body bytes over the bytes the row read.\n\n", largeVar, shardVar)
	if L.dropErr != nil {
		fmt.Fprintf(w, "The page cache could not be dropped (%s): the rows that need it are missing.\n\n", escapeCell(L.dropErr.Error()))
	}
	for _, r := range results {
		if r.Large == nil || !r.Large.has(order) {
			continue
		}
		fmt.Fprintf(w, "### Large chunks, gateway latency %v\n\n", r.Latency)
		r.Large.writeLargeTable(w, order)
		fmt.Fprintf(w, "\nTargets (DESIGN.md §6):\n\n")
		if r.Latency != 20*time.Millisecond {
			fmt.Fprintf(w, "DESIGN.md sets the large-chunk `cp -r` ratios for a gateway with 20 ms latency; at %v they are shown for information.\n\n", r.Latency)
		}
		writeTargets(w, r.Large.largeTargets(L.cacheSmall))
		fmt.Fprintln(w)
	}
}

// writeLargeTable writes one latency's large-chunk rows and ratios.
func (r *latencyResult) writeLargeTable(w io.Writer, order []string) {
	fmt.Fprintf(w, "| Operation | Time, s: median (min–max) | MB/s | Machine CPU busy, s | Gateway requests | Requests per chunk | Gateway bytes per byte read | Fetches in flight per run: mean / max | Peak memory, MiB | Checks |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|---|\n")
	for _, name := range order {
		ss := r.Samples[name]
		if len(ss) == 0 {
			continue
		}
		timeCol := timeColumn(ss)
		mbps := mbpsColumn(ss)
		reqCol := "0"
		if countIf(ss, func(s sample) bool { return s.Requests > 0 }) > 0 {
			req, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.Requests) }))
			g, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.Gets) }))
			p, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.Partial) }))
			h, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.Heads) }))
			reqCol = fmt.Sprintf("%s (GET %s, of which 206: %s; HEAD %s)", req.format("", 0), g.format("", 0), p.format("", 0), h.format("", 0))
		}
		perChunk := "—"
		if ss[0].KeyPrefix != "" && ss[0].Chunks > 0 {
			p, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.KeyRequests) / float64(s.Chunks) }))
			perChunk = p.format("", 3)
		}
		perByte := "—"
		if countIf(ss, func(s sample) bool { return s.BytesSent > 0 && s.Bytes > 0 }) == len(ss) {
			p, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.BytesSent) / float64(s.Bytes) }))
			perByte = p.format("", 3)
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
					part := residentText(s.PageCacheBefore) + " → " + residentText(s.PageCacheAfter)
					if s.Passthrough {
						part = "none: passthrough, dmfs's memory file " + part
					}
					parts = append(parts, part)
				}
			}
			checks += "; page cache " + strings.Join(parts, ", ")
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", name, timeCol, mbps, cpuColumn(ss), reqCol, perChunk, perByte,
			inFlightCol(ss), rss, checks)
	}
	fmt.Fprintf(w, "\n| Ratio (computed within each run) | median (min–max) |\n|---|---|\n")
	for _, name := range largeRatioOrder {
		if s, ok := summarize(r.Ratios[name]); ok {
			fmt.Fprintf(w, "| %s | %s |\n", name, s.format("x", 2))
		}
	}
}

// cpuColumn summarises the samples' machine CPU-seconds, "—" unless every
// one was measured.
func cpuColumn(ss []sample) string {
	if countIf(ss, func(s sample) bool { return s.CPU > 0 }) != len(ss) {
		return "—"
	}
	c, _ := summarize(pick(ss, func(s sample) float64 { return s.CPU }))
	return c.format("", 2)
}

// residentText writes a page cache size: a few pages in bytes, more in MB.
func residentText(n int64) string {
	switch {
	case n == 0:
		return "0"
	case n < 100_000:
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f MB", float64(n)/1e6)
}

// largeTargets checks the large-chunk figures of DESIGN.md §6.
func (r *latencyResult) largeTargets(cacheSmall int64) []target {
	var out []target
	ratio := func(name, want string, ok func(summary) bool) {
		if s, found := summarize(r.Ratios[name]); found {
			out = append(out, target{name, want, s.format("x", 2), ok(s)})
		}
	}
	ratio(ratioLCold, "≥ 0.8x", func(s summary) bool { return s.Min >= 0.8 })
	ratio(ratioLMem, "≥ 0.8x", func(s summary) bool { return s.Min >= 0.8 })
	ratio(ratioLXrBound, "≤ 1.25x", func(s summary) bool { return s.Max <= 1.25 })
	if ss := r.Samples[mLWarmDrop]; len(ss) > 0 {
		s, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.Requests) }))
		out = append(out, target{mLWarmDrop + ": gateway requests", "0", s.format("", 0), s.Max == 0})
		n := countIf(ss, func(s sample) bool { return s.PageCacheMeasured && (s.PageCacheAfter == 0 || s.Passthrough) })
		out = append(out, target{mLWarmDrop + ": " + targetLDropped, "every run", fmt.Sprintf("in %d of %d runs", n, len(ss)), n == len(ss)})
	}
	perChunk := func(name, want string, ok func(float64) bool) {
		ss := r.Samples[name]
		if len(ss) == 0 || ss[0].Chunks == 0 {
			return
		}
		s, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.KeyRequests) / float64(s.Chunks) }))
		out = append(out, target{name + ": requests per chunk", want, s.format("", 3), ok(s.Max) && ok(s.Min)})
	}
	perChunk(mLCold, "≤ 1.1", func(v float64) bool { return v <= 1.1 })
	perChunk(mLXrCold, "= 1", func(v float64) bool { return v == 1 })
	if ss := r.Samples[mLColdSmall]; len(ss) > 0 && cacheSmall > 0 && ss[0].RSS > 0 {
		s, _ := summarize(pick(ss, func(s sample) float64 { return float64(s.RSS-cacheSmall) / (1 << 20) }))
		out = append(out, target{targetLRSS, "≤ 64 MiB", s.format(" MiB", 0), s.Max <= 64})
	}
	for _, name := range []string{mLCold, mLWarmDrop, mLColdSmall, mLShard} {
		ss := r.Samples[name]
		if len(ss) == 0 {
			continue
		}
		failed := countIf(ss, func(s sample) bool { return !s.Checked || (s.Check != "" && !strings.HasPrefix(s.Check, "page cache")) })
		out = append(out, target{name + ": " + targetLExact, "every run", fmt.Sprintf("in %d of %d runs", len(ss)-failed, len(ss)), failed == 0})
	}
	return out
}
