package csi

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/oceanum-dmfs/dmfs/internal/mountinfo"
)

// processStart returns the start time of pid (clock ticks after boot, field
// 22 of /proc/PID/stat): with the pid it names one process, so a record
// never points at an unrelated process that got a reused pid. ok is false
// when pid does not run or is a zombie.
func processStart(pid int) (start uint64, ok bool) {
	if pid <= 0 {
		return 0, false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	return parseStat(string(b))
}

// parseStat reads the state and start time of a /proc/PID/stat line; the
// command name (field 2) is in parentheses and may hold anything.
func parseStat(s string) (start uint64, ok bool) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	fields := strings.Fields(s[i+1:])
	// fields[0] is field 3 (the state), so field 22 is fields[19].
	if len(fields) < 20 || fields[0] == "Z" || fields[0] == "X" {
		return 0, false
	}
	start, err := strconv.ParseUint(fields[19], 10, 64)
	return start, err == nil
}

// alive reports whether the process a record names still runs.
func (r *record) alive() bool {
	start, ok := processStart(r.PID)
	return ok && start == r.Start
}

// targetState is what the kernel says about a target path.
type targetState struct {
	mounted bool // something is mounted there
	dmfs    bool // ... and it is a dmfs mount
	dead    bool // ... whose server is gone (ENOTCONN)
}

// inspectTarget looks target up in the mount table and stats it. The
// parent is resolved (not the target: stat on a dead mount fails), so a
// symlinked parent finds the mount the kernel lists.
func inspectTarget(target string) (targetState, error) {
	var st targetState
	key := target
	if parent, err := filepath.EvalSymlinks(filepath.Dir(target)); err == nil {
		key = filepath.Join(parent, filepath.Base(target))
	}
	m, ok, err := mountinfo.Find(key)
	if err != nil {
		return st, fmt.Errorf("reading the mount table: %w", err)
	}
	st.mounted = ok
	st.dmfs = ok && isDmfsMount(m)
	if st.dmfs {
		// stat may be answered from the kernel's attribute cache; statfs
		// always asks the mount's process.
		if err := statfsWithin(target, statfsWait); errors.Is(err, syscall.ENOTCONN) || errors.Is(err, syscall.ECONNABORTED) {
			st.dead = true
			return st, nil
		}
	}
	if _, err := os.Lstat(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		if errors.Is(err, syscall.ENOTCONN) {
			st.dead = true
			return st, nil
		}
		return st, fmt.Errorf("%s: %w", target, err)
	}
	return st, nil
}

// statfsWait bounds the liveness check of a mount: one that does not answer
// within it is taken as alive (busy), never torn down for being slow.
const statfsWait = 5 * time.Second

// statfsWithin is statfs(2) on path, given up after wait (the call itself
// then stays blocked in the kernel until the mount answers).
func statfsWithin(path string, wait time.Duration) error {
	done := make(chan error, 1)
	go func() {
		var sfs syscall.Statfs_t
		done <- syscall.Statfs(path, &sfs)
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(wait):
		return nil
	}
}

func isDmfsMount(m mountinfo.Entry) bool {
	return m.FSType == "fuse.dmfs" || (strings.HasPrefix(m.FSType, "fuse") && m.Source == "dmfs")
}

// unmountTarget unmounts target, lazily (detached now, gone when the last
// open file is closed) when it is busy or its server is dead. lazy reports
// which. A target that is not mounted is not an error.
func unmountTarget(target string) (lazy bool, err error) {
	err = syscall.Unmount(target, 0)
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.ENOENT):
		return false, nil // not a mount point (any more)
	}
	if derr := syscall.Unmount(target, syscall.MNT_DETACH); derr != nil {
		if errors.Is(derr, syscall.EINVAL) || errors.Is(derr, syscall.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("unmounting %s: %v; detaching it: %w", target, err, derr)
	}
	return true, nil
}
