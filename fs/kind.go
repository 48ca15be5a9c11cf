package fs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sync/singleflight"
)

// A datasource directory shows what its container holds (DESIGN §3): a
// dataset is its Zarr store; a table (dataframe, geodataframe) is one file,
// ID.parquet; a stage that found no data is an empty directory. Every
// datasource and query directory also holds infoName, what the catalog says
// of it. Knowing the container costs at most one stage request per
// datasource per metadata TTL, and none when the catalog already tells it
// (its container, or a Zarr driver).

// infoName is the read-only description file of every datasource and query
// directory; Zarr readers ignore it.
const infoName = ".datasource.json"

// tableMemory is the largest table held in memory; larger ones go to a file
// in Options.TableDir.
const tableMemory = 16 << 20

// tableProgressEvery is how often a long table download logs its progress.
const tableProgressEvery = 5 * time.Second

// kindState is what a datasource holds and how to learn it.
type kindState struct {
	// learn finds the container (ContainerDataset, a table's, or "" when
	// there is no data); called at most once per metadata TTL.
	learn func(ctx context.Context) (string, error)
	// info builds the description file's document for a container.
	info func(container string) *Info
	// table: the file's name and how to stream it.
	tableName string
	openTable func(ctx context.Context, ifChanged string) (Table, error)

	load     singleflight.Group
	download singleflight.Group

	mu        sync.Mutex
	container string
	known     time.Time // when container was learnt; zero: never
	tbl       *tableData
}

// fixedKind is the state of a datasource whose container is known.
func fixedKind(container string) func(context.Context) (string, error) {
	return func(context.Context) (string, error) { return container, nil }
}

// containerOf returns what d holds: ContainerDataset for a Zarr store
// (every datasource without kind state), a table's container, or "" for no
// data.
func (d *datasource) containerOf(ctx context.Context) (string, error) {
	k := d.kind
	if k == nil || d.isCreated() {
		return ContainerDataset, nil
	}
	now := d.opt.now()
	k.mu.Lock()
	if !k.known.IsZero() && now.Sub(k.known) < d.opt.MetadataTTL {
		c := k.container
		k.mu.Unlock()
		return c, nil
	}
	k.mu.Unlock()
	return shared(ctx, &k.load, "", func(lctx context.Context) (string, error) {
		c, err := k.learn(lctx)
		if errors.Is(err, ErrNoData) {
			d.opt.Logger.Info("no data: the directory is empty", "datasource", d.id)
			c, err = "", nil
		}
		if err != nil {
			return "", err
		}
		k.mu.Lock()
		k.container, k.known = c, d.opt.now()
		k.mu.Unlock()
		return c, nil
	})
}

// isTable reports whether a container is a table's.
func isTable(container string) bool { return container != ContainerDataset && container != "" }

// infoDocument is d's description file for its container.
func (d *datasource) infoDocument(container string) []byte {
	var info *Info
	if d.kind != nil && d.kind.info != nil {
		info = d.kind.info(container)
	}
	if info == nil {
		info = &Info{ID: d.id, Container: container}
	}
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		b = []byte("{}")
	}
	return append(b, '\n')
}

// lookupSourceRoot answers the names of a datasource's top directory that
// are not in its Zarr store: the description file, and everything in a
// table's or an empty directory. done is false for a dataset's other names.
func (n *dirNode) lookupSourceRoot(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno, bool) {
	if !n.isSourceRoot() {
		return nil, 0, false
	}
	c, err := n.ds.containerOf(ctx)
	if err != nil {
		return nil, errnoOf(ctx, n.ds.opt.Logger, "lookup", n.fullPath(name), err), true
	}
	if name == infoName {
		return n.infoNode(ctx, c, out), 0, true
	}
	if c == ContainerDataset {
		return nil, 0, false
	}
	k := n.ds.kind
	if c == "" || name != k.tableName {
		return nil, syscall.ENOENT, true
	}
	t, err := n.ds.table(ctx)
	if err != nil {
		return nil, errnoOf(ctx, n.ds.opt.Logger, "download", n.fullPath(name), err), true
	}
	mt := n.ds.modTime()
	n.ds.opt.fileAttr(&out.Attr, t.size, mt)
	out.Attr.Mode &^= 0o222 // read-only, whatever the mount's file mode
	out.Attr.Ino = t.ino
	return n.NewInode(ctx, &tableFile{writeOps: n.readOnlyOps(), t: t, opt: n.ds.opt, modTime: mt}, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: t.ino}), 0, true
}

// readOnlyOps are the write side of a file that is never written.
func (n *dirNode) readOnlyOps() writeOps { return writeOps{rw: n.ds.opt.writer != nil} }

// isTableDir reports whether n is a datasource directory showing a table
// (or no data): nothing can be written there.
func (n *dirNode) isTableDir(ctx context.Context) bool {
	// A table's directory has no folders: only its top can be one.
	if n.ds.kind == nil || !n.isSourceRoot() {
		return false
	}
	c, err := n.ds.containerOf(ctx)
	return err == nil && c != ContainerDataset
}

// isSourceRoot reports whether n is the top directory of a datasource or
// query the catalog knows: not one made by mkdir in this mount, which has
// nothing but what is written to it.
func (n *dirNode) isSourceRoot() bool {
	return n.path == "" && !n.chunks && !n.ds.isCreated()
}

// infoNode is the description file for container c; its inode number
// follows its content, so a changed description is a new file.
func (n *dirNode) infoNode(ctx context.Context, c string, out *fuse.EntryOut) *gofs.Inode {
	data := n.ds.infoDocument(c)
	ino := n.ds.infoIno(data)
	mt := n.ds.modTime()
	n.ds.opt.fileAttr(&out.Attr, int64(len(data)), mt)
	out.Attr.Mode &^= 0o222 // read-only, whatever the mount's file mode
	out.Attr.Ino = ino
	return n.NewInode(ctx, &infoFile{writeOps: n.readOnlyOps(), data: data, opt: n.ds.opt, modTime: mt}, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: ino})
}

// infoIno numbers a description file by its content: a changed
// description is a new file to the kernel.
func (d *datasource) infoIno(data []byte) uint64 {
	sum := sha256.Sum256(data)
	return d.opt.inodes.base("\x00info\x00"+d.ns+"\x00"+hex.EncodeToString(sum[:8]), 1)
}

// tableIno numbers the table file; a datasource downloads it once.
func (d *datasource) tableIno() uint64 { return d.opt.inodes.base("\x00table\x00"+d.ns, 1) }

// sourceRootEntries are the entries a datasource's top directory shows
// beside its Zarr store (table: the table file instead of it); store is
// false when it has no Zarr store to list.
func (n *dirNode) sourceRootEntries(ctx context.Context) (entries []fuse.DirEntry, store bool, errno syscall.Errno) {
	if !n.isSourceRoot() {
		return nil, true, 0
	}
	c, err := n.ds.containerOf(ctx)
	if err != nil {
		return nil, false, errnoOf(ctx, n.ds.opt.Logger, "readdir", n.ds.id, err)
	}
	entries = []fuse.DirEntry{{Name: infoName, Mode: fuse.S_IFREG, Ino: n.ds.infoIno(n.ds.infoDocument(c))}}
	if isTable(c) {
		entries = append(entries, fuse.DirEntry{Name: n.ds.kind.tableName, Mode: fuse.S_IFREG, Ino: n.ds.tableIno()})
	}
	return entries, c == ContainerDataset, 0
}

// infoFile is a datasource's description, in memory.
type infoFile struct {
	gofs.Inode
	writeOps
	opt     *Options
	data    []byte
	modTime time.Time
}

var (
	_ gofs.NodeOpener    = (*infoFile)(nil)
	_ gofs.NodeReader    = (*infoFile)(nil)
	_ gofs.NodeGetattrer = (*infoFile)(nil)
)

func (f *infoFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.opt.fileAttr(&out.Attr, int64(len(f.data)), f.modTime)
	out.Attr.Mode &^= 0o222 // read-only, whatever the mount's file mode
	out.Attr.Ino = f.StableAttr().Ino
	return 0
}

func (f *infoFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	return f.openReadOnly(ctx, f.opt, flags)
}

func (f *infoFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return fuse.ReadResultData(sliceAt(f.data, off, len(dest))), 0
}

// tableData is a downloaded table: in memory, or read from a file (an
// unlinked one in TableDir, or the disk cache's copy).
type tableData struct {
	mem  []byte
	file io.ReaderAt // when not in mem
	size int64
	ino  uint64
}

func (t *tableData) readAt(dest []byte, off int64) ([]byte, error) {
	if t.file == nil {
		return sliceAt(t.mem, off, len(dest)), nil
	}
	if off >= t.size {
		return nil, nil
	}
	n, err := t.file.ReadAt(dest[:min(int64(len(dest)), t.size-off)], off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return dest[:n], nil
}

// reader is the table's bytes as an io.ReaderAt.
func (t *tableData) reader() io.ReaderAt {
	if t.file == nil {
		return bytes.NewReader(t.mem)
	}
	return t.file
}

// table returns d's table, downloaded whole at the first call (so that its
// size is exact before anyone reads it) and kept for the datasource's life.
func (d *datasource) table(ctx context.Context) (*tableData, error) {
	k := d.kind
	k.mu.Lock()
	t := k.tbl
	k.mu.Unlock()
	if t != nil {
		return t, nil
	}
	return sharedFor(ctx, &k.download, "", 0, func(lctx context.Context) (*tableData, error) {
		t, err := d.loadTable(lctx)
		if err != nil {
			return nil, err
		}
		k.mu.Lock()
		k.tbl = t
		k.mu.Unlock()
		return t, nil
	})
}

// tableDiskVersion names d's table in the cache's disk tier ("": not kept
// there). Its version is checked with the gateway at each mount (a
// conditional download), so the name needs no digest. A --write mount keeps
// nothing there, as for chunks.
func (d *datasource) tableDiskVersion() string {
	if d.opt.writer != nil {
		return ""
	}
	return "\x00table\x00" + d.ns
}

// loadTable returns the table from the disk cache when the gateway says
// the copy there is still its version, else downloads it (and keeps it
// there when the gateway names its version).
func (d *datasource) loadTable(ctx context.Context) (*tableData, error) {
	k := d.kind
	version := d.tableDiskVersion()
	kept, ok := d.opt.Cache.OpenBlob(version, k.tableName)
	ifChanged := ""
	if ok {
		ifChanged = kept.Meta
	}
	start := d.opt.now()
	tbl, err := k.openTable(ctx, ifChanged)
	if ok {
		if errors.Is(err, ErrNotModified) {
			d.opt.Logger.Info("table unchanged: served from the disk cache", "datasource", d.id, "file", k.tableName,
				"bytes", kept.Size(), "duration", d.opt.now().Sub(start))
			return &tableData{file: kept, size: kept.Size(), ino: d.tableIno()}, nil
		}
		kept.Close()
	}
	if err != nil {
		return nil, err
	}
	t, err := d.downloadTable(tbl, start)
	if err != nil {
		return nil, err
	}
	if tbl.Validator != "" {
		d.opt.Cache.KeepBlob(version, k.tableName, tbl.Validator, t.reader(), t.size)
	}
	return t, nil
}

// downloadTable streams the table into memory when it is small, else into
// an unlinked file in TableDir, logging progress on long downloads.
func (d *datasource) downloadTable(tbl Table, start time.Time) (*tableData, error) {
	k := d.kind
	body, size := tbl.Body, tbl.Size
	defer body.Close()
	t := &tableData{ino: d.tableIno()}
	var dst io.Writer
	var mem *bytes.Buffer
	var file *os.File
	if d.opt.TableDir == "" || (size >= 0 && size <= tableMemory) {
		mem = &bytes.Buffer{}
		if size > 0 && size <= tableMemory { // a size from the gateway: bounded before it is trusted
			mem.Grow(int(size)) // one allocation, no copy per growth
		}
		dst = mem
	} else {
		f, err := os.CreateTemp(d.opt.TableDir, "table-")
		if err != nil {
			return nil, fmt.Errorf("table file: %w", err)
		}
		os.Remove(f.Name())
		file, t.file, dst = f, f, f
	}
	progress := &progressWriter{w: dst, log: func(n int64) {
		d.opt.Logger.Info("downloading table", "datasource", d.id, "bytes", n, "of", size)
	}, every: tableProgressEvery, now: d.opt.now, last: start}
	n, err := io.Copy(progress, body)
	if err == nil && size >= 0 && n != size {
		err = fmt.Errorf("table of %d bytes announced, %d received: %w", size, n, io.ErrUnexpectedEOF)
	}
	if err != nil {
		if file != nil {
			file.Close()
		}
		return nil, fmt.Errorf("downloading table %s: %w", k.tableName, err)
	}
	t.size = n
	if mem != nil {
		t.mem = mem.Bytes()
	}
	d.opt.Logger.Info("table downloaded", "datasource", d.id, "file", k.tableName, "bytes", n,
		"duration", d.opt.now().Sub(start), "in_memory", t.file == nil)
	return t, nil
}

// progressWriter counts bytes and calls log at most every `every`.
type progressWriter struct {
	w     io.Writer
	n     int64
	log   func(n int64)
	every time.Duration
	now   func() time.Time
	last  time.Time
}

func (p *progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	p.n += int64(n)
	if t := p.now(); t.Sub(p.last) >= p.every {
		p.last = t
		p.log(p.n)
	}
	return n, err
}

// tableFile is a downloaded table, read-only.
type tableFile struct {
	gofs.Inode
	writeOps
	opt     *Options
	t       *tableData
	modTime time.Time
}

var (
	_ gofs.NodeOpener    = (*tableFile)(nil)
	_ gofs.NodeReader    = (*tableFile)(nil)
	_ gofs.NodeGetattrer = (*tableFile)(nil)
)

func (f *tableFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.opt.fileAttr(&out.Attr, f.t.size, f.modTime)
	out.Attr.Mode &^= 0o222 // read-only, whatever the mount's file mode
	out.Attr.Ino = f.StableAttr().Ino
	return 0
}

func (f *tableFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	return f.openReadOnly(ctx, f.opt, flags)
}

func (f *tableFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	b, err := f.t.readAt(dest, off)
	if err != nil {
		return nil, errnoOf(ctx, f.opt.Logger, "read", "table", err)
	}
	return fuse.ReadResultData(b), 0
}
