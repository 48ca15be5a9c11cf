package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/cache"
)

func TestCacheDirFlags(t *testing.T) {
	o, _ := parseOptions(t, "/mnt/x")
	assert.Empty(t, o.CacheDir, "off by default")
	assert.Equal(t, byteSize(cache.DefaultDiskMaxBytes), o.CacheDirSize, "10GiB by default")

	t.Chdir(t.TempDir())
	wd, err := os.Getwd()
	require.NoError(t, err)
	o, flags := parseOptions(t, "-o", "cache_dir=c,cache_dir_size=2GiB", "/mnt/x")
	assert.Equal(t, filepath.Join(wd, "c"), o.CacheDir, "made absolute: the background mount runs in /")
	assert.Equal(t, byteSize(2<<30), o.CacheDirSize)
	assert.Contains(t, childFlags(flags), "--cache-dir="+filepath.Join(wd, "c"))
	child, _ := parseOptions(t, append(childFlags(flags), "--", "/mnt/x")...)
	assert.Equal(t, o.CacheDir, child.CacheDir)
	assert.Equal(t, o.CacheDirSize, child.CacheDirSize)
}

func TestCacheDirBadValuesAreUsageErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"--cache-dir", dir, "--cache-dir-size", "lots"}, `"lots"`},
		{[]string{"--cache-dir", dir, "--cache-dir-size", "-1GiB"}, "--cache-dir-size"},
		{[]string{"--cache-dir", dir, "--cache-dir-size", "0"}, "--cache-dir-size must be at least 1MiB"},
		{[]string{"--cache-dir", dir, "--cache-dir-size", "4KiB"}, "--cache-dir-size must be at least 1MiB"},
		{[]string{"--cache-dir-size", "2GiB"}, "--cache-dir-size only applies with --cache-dir"},
		{[]string{"--cache-dir", dir, "--write"}, "--cache-dir does not apply to a --write mount"},
	} {
		checkUsageError(t, c.args, c.says)
	}
}

// An unsafe folder is refused before any session is asked for (the service
// here answers nothing: reaching it would be a gateway error, not a usage
// error).
func TestUnsafeCacheDirIsRefusedBeforeTheSession(t *testing.T) {
	for _, c := range []struct {
		name  string
		setup func(t *testing.T) string
		says  string
	}{
		{"group-writable", func(t *testing.T) string {
			d := filepath.Join(t.TempDir(), "c")
			require.NoError(t, os.Mkdir(d, 0o700))
			require.NoError(t, os.Chmod(d, 0o770))
			return d
		}, "is writable by group or others"},
		{"a symbolic link", func(t *testing.T) string {
			d := filepath.Join(t.TempDir(), "c")
			require.NoError(t, os.Symlink(t.TempDir(), d))
			return d
		}, "is a symbolic link"},
		{"a missing parent", func(t *testing.T) string {
			return filepath.Join(t.TempDir(), "no-such-folder", "c")
		}, "no-such-folder"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
			env := map[string]string{"DATAMESH_TOKEN": "t", "DATAMESH_TOKEN_FILE": ""}
			code, _, stderr := runArgs(t, env, "mount", "--foreground", "--service", "http://127.0.0.1:9",
				"--cache-dir", c.setup(t), t.TempDir())
			assert.Equal(t, exitUsage, code, stderr)
			assert.Contains(t, stderr, "--cache-dir: disk cache folder")
			assert.Contains(t, stderr, c.says)
		})
	}
}
