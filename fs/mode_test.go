package fs

import (
	"context"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/cache"
	"github.com/oceanum-dmfs/dmfs/zarr"
)

// TestModesAndOwnerApplyToEveryNode: --file-mode, --dir-mode, --uid and
// --gid show on the root, datasource and group directories, metadata and
// chunk files; files that are never written (.datasource.json) lose the
// write bits, whatever the mode.
func TestModesAndOwnerApplyToEveryNode(t *testing.T) {
	for _, c := range []struct {
		name              string
		opt               Options
		fileMode, dirMode uint32
		infoMode          uint32
	}{
		{"defaults", Options{}, 0o444, 0o555, 0o444},
		{"given", Options{UID: 7, GID: 8, FileMode: 0o640, DirMode: 0o750}, 0o640, 0o750, 0o440},
		{"owner only", Options{UID: 7, GID: 8, FileMode: 0o600, DirMode: 0o700}, 0o600, 0o700, 0o400},
	} {
		t.Run(c.name, func(t *testing.T) {
			chunks := cache.New(cache.Options{MaxBytes: 1 << 20})
			t.Cleanup(chunks.Close)
			cat := &memCatalog{listed: []string{"alpha"}, stores: map[string]zarr.Store{"alpha": testStore()}}
			opt := c.opt
			opt.Catalog, opt.Cache, opt.MetadataTTL = cat, chunks, time.Minute
			f := &fixture{root: NewRoot(opt), cat: cat}
			gofs.NewNodeFS(f.root, &gofs.Options{})

			var root fuse.AttrOut
			require.Zero(t, f.root.Getattr(context.Background(), nil, &root))
			assert.Equal(t, fuse.S_IFDIR|c.dirMode, root.Mode, "root")
			for path, want := range map[string]uint32{
				"alpha":                  fuse.S_IFDIR | c.dirMode,
				"alpha/grid":             fuse.S_IFDIR | c.dirMode,
				"alpha/.zmetadata":       fuse.S_IFREG | c.fileMode,
				"alpha/grid/.zarray":     fuse.S_IFREG | c.fileMode,
				"alpha/grid/0.0":         fuse.S_IFREG | c.fileMode,
				"alpha/.datasource.json": fuse.S_IFREG | c.infoMode,
			} {
				_, out, errno := f.lookup(t, f.root, path)
				require.Zero(t, errno, path)
				assert.Equal(t, want, out.Attr.Mode, "%s: mode %o", path, out.Attr.Mode)
				assert.Equal(t, [2]uint32{c.opt.UID, c.opt.GID}, [2]uint32{out.Attr.Uid, out.Attr.Gid}, path)
			}
		})
	}
}
