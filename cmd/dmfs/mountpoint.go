package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// mountEntry is one line of /proc/self/mountinfo that matters here.
type mountEntry struct {
	Mountpoint string
	FSType     string
	Source     string
}

// readMounts parses mountinfo: "id parent maj:min root mountpoint opts ... - fstype source superopts".
func readMounts(r io.Reader) ([]mountEntry, error) {
	var out []mountEntry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+2 >= len(fields) {
			continue
		}
		out = append(out, mountEntry{
			Mountpoint: unescapeMount(fields[4]),
			FSType:     fields[sep+1],
			Source:     unescapeMount(fields[sep+2]),
		})
	}
	return out, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// findMount returns the mount table entry at path, if any.
func findMount(path string) (mountEntry, bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return mountEntry{}, false, err
	}
	defer f.Close()
	mounts, err := readMounts(f)
	if err != nil {
		return mountEntry{}, false, err
	}
	for i := len(mounts) - 1; i >= 0; i-- { // the last mount on a path is the visible one
		if mounts[i].Mountpoint == path {
			return mounts[i], true, nil
		}
	}
	return mountEntry{}, false, nil
}

func isDmfsMount(m mountEntry) bool {
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
	if m, ok, err := findMount(abs); err == nil && ok {
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

// stateDir holds pid and log files of background mounts.
func stateDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "dmfs")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("dmfs-%d", os.Getuid()))
}

// stateFile names a per-mount file (pid, log) after the mount point.
func stateFile(mountpoint, ext string) string {
	sum := sha256.Sum256([]byte(mountpoint))
	base := strings.Trim(strings.ReplaceAll(mountpoint, "/", "_"), "_")
	if len(base) > 40 {
		base = base[len(base)-40:]
	}
	return filepath.Join(stateDir(), base+"-"+hex.EncodeToString(sum[:4])+ext)
}

func writePidFile(mountpoint string) (string, error) {
	if err := os.MkdirAll(stateDir(), 0o700); err != nil {
		return "", err
	}
	p := stateFile(mountpoint, ".pid")
	return p, os.WriteFile(p, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600)
}

func readPidFile(mountpoint string) (int, bool) {
	b, err := os.ReadFile(stateFile(mountpoint, ".pid"))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid, err == nil && pid > 0
}
