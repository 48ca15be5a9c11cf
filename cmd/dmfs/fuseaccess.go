package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// What fusermount3 uses; variables for tests.
var (
	fuseDevice = "/dev/fuse"
	fuseConf   = "/etc/fuse.conf"
)

// checkFuseAccess checks what fusermount3 would refuse a user other than
// root, so that the refusal comes before a session is acquired and says
// what to do: no access to /dev/fuse, and --allow-other or --allow-root
// without user_allow_other in /etc/fuse.conf. Root mounts directly.
func checkFuseAccess(o *mountOptions) error {
	if os.Geteuid() == 0 {
		return nil
	}
	if err := syscall.Access(fuseDevice, 0o6); err != nil { // R_OK|W_OK, as the user
		return fuseDeviceError(err)
	}
	if !o.AllowOther && !o.AllowRoot {
		return nil
	}
	flag := "--allow-other"
	if o.AllowRoot {
		flag = "--allow-root"
	}
	ok, err := userAllowOther(fuseConf)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s: reading %s: %v", flag, fuseConf, err)
	}
	if !ok {
		return fmt.Errorf("%s needs the line 'user_allow_other' in %s when you are not root; "+
			"an administrator can add it, or mount without %s", flag, fuseConf, flag)
	}
	return nil
}

// fuseDeviceError says why /dev/fuse cannot be used, and what to do.
func fuseDeviceError(err error) error {
	if errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("%s does not exist: load the fuse module ('modprobe fuse'), or in a container pass the device in (docker run --device /dev/fuse)", fuseDevice)
	}
	detail := ""
	var st syscall.Stat_t
	if syscall.Stat(fuseDevice, &st) == nil {
		detail = fmt.Sprintf(" (mode %04o, owner uid %d, group gid %d)", st.Mode&0o7777, st.Uid, st.Gid)
	}
	return fmt.Errorf("no read and write access to %s%s: %v; an administrator can grant it (mode 0666 is usual), or mount as root",
		fuseDevice, detail, err)
}

// userAllowOther reports whether the fuse.conf at path has a
// user_allow_other line (comments after '#' ignored, as fusermount3 does).
func userAllowOther(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, 1<<20))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if strings.TrimSpace(line) == "user_allow_other" {
			return true, nil
		}
	}
	return false, sc.Err()
}

// stderrMu serialises captureStderr: it swaps a process-wide variable.
var stderrMu sync.Mutex

// captureStderr runs mount and returns what the programs it started wrote
// to stderr meanwhile. go-fuse starts fusermount3 with os.Stderr, and
// fusermount3 says why it refused only there ("fusermount3: failed to open
// /dev/fuse: Permission denied"), while go-fuse's error says only "exited
// with code 256": os.Stderr is a pipe for that moment, so the message can go
// into the error the user sees. Nothing else in dmfs reads os.Stderr while
// it serves (loggers hold their own writer).
func captureStderr(mount func() error) (string, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return "", mount()
	}
	var buf bytes.Buffer
	copied := make(chan struct{})
	go func() {
		io.Copy(&buf, io.LimitReader(r, 64<<10))
		io.Copy(io.Discard, r)
		close(copied)
	}()
	stderrMu.Lock()
	saved := os.Stderr
	os.Stderr = w
	err = mount()
	os.Stderr = saved
	stderrMu.Unlock()
	w.Close()
	// fusermount3 has exited when mount returns; a program that kept the
	// pipe open would cost only the end of the message.
	select {
	case <-copied:
	case <-time.After(time.Second):
		r.Close() // ends the copy
		<-copied
	}
	r.Close()
	return strings.TrimSpace(buf.String()), err
}
