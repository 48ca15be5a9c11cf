package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/oceanum-dmfs/dmfs/internal/mountinfo"
	"github.com/oceanum-dmfs/dmfs/internal/statedir"
)

func isDmfsMount(m mountinfo.Entry) bool {
	return m.FSType == "fuse.dmfs" || (strings.HasPrefix(m.FSType, "fuse") && m.Source == "dmfs")
}

// errMountPoint marks a mount point that cannot be used.
var errMountPoint = errors.New("unusable mount point")

// checkMountpoint resolves path and checks that a mount can go there: an
// existing, empty directory that is not already a mount.
func checkMountpoint(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %v", errMountPoint, path, err)
	}
	st, err := os.Stat(abs)
	switch {
	case errors.Is(err, syscall.ENOTCONN):
		return "", fmt.Errorf("%w: %s is a stale mount (its filesystem process is gone); run 'dmfs unmount %s' or 'fusermount3 -u %s' first",
			errMountPoint, abs, abs, abs)
	case errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("%w: %s does not exist (create it with 'mkdir -p %s')", errMountPoint, abs, abs)
	case err != nil:
		return "", fmt.Errorf("%w: %s: %v", errMountPoint, abs, err)
	case !st.IsDir():
		return "", fmt.Errorf("%w: %s is not a directory", errMountPoint, abs)
	}
	if m, ok, err := mountinfo.Find(abs); err == nil && ok {
		return "", fmt.Errorf("%w: %s is already a mount point (%s); unmount it first", errMountPoint, abs, m.FSType)
	}
	d, err := os.Open(abs)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %v", errMountPoint, abs, err)
	}
	names, _ := d.Readdirnames(1)
	d.Close()
	if len(names) > 0 {
		return "", fmt.Errorf("%w: %s is not empty", errMountPoint, abs)
	}
	return abs, nil
}

// stateName names a per-mount file in the state folder.
func stateName(mountpoint, ext string) string { return statedir.NameFor(mountpoint, ext) }

func pidFileName(mountpoint string) string { return stateName(mountpoint, ".pid") }

func writePidFile(dir *statedir.Dir, mountpoint string) error {
	return dir.WriteRecord(pidFileName(mountpoint), []byte(strconv.Itoa(os.Getpid())+"\n"))
}

func readPidFile(dir *statedir.Dir, mountpoint string) (int, error) {
	b, err := dir.ReadRecord(pidFileName(mountpoint))
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s: not a pid", dir.File(pidFileName(mountpoint)))
	}
	return pid, nil
}
