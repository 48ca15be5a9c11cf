package statedir

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// fdPath names name in the folder through this process's descriptor of
// it: the folder opened and checked once is the one used, and the address
// stays short whatever the folder's path (a unix socket address holds at
// most 107 bytes).
func (d *Dir) fdPath(name string) (string, error) {
	if err := plainName(name); err != nil {
		return "", err
	}
	return fmt.Sprintf("/proc/self/fd/%d/%s", d.fd(), name), nil
}

func plainName(name string) error {
	if name == "" || len(name) > 255 || name == "." || name == ".." {
		return fmt.Errorf("state file name %q: not a plain name", name)
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '/' || name[i] == 0 {
			return fmt.Errorf("state file name %q: not a plain name", name)
		}
	}
	return nil
}

// ListenUnix makes name a unix socket of ours, mode 0600, replacing what
// was there (the caller holds the lock that makes the name its own: a
// socket left there is a killed process's), and listens on it. The folder
// (mode 0700) keeps others out already; the mode says it again. The
// listener does not remove the socket when closed: RemoveSocket does, while
// the folder is still open.
func (d *Dir) ListenUnix(name string) (*net.UnixListener, error) {
	addr, err := d.fdPath(name)
	if err != nil {
		return nil, err
	}
	if err := syscall.Unlinkat(d.fd(), name); err != nil && !errors.Is(err, syscall.ENOENT) {
		return nil, &os.PathError{Op: "remove", Path: d.File(name), Err: err}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: addr, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", d.File(name), unwrapOp(err))
	}
	l.SetUnlinkOnClose(false)
	if err := syscall.Fchmodat(d.fd(), name, 0o600, 0); err != nil {
		l.Close()
		d.Remove(name)
		return nil, &os.PathError{Op: "chmod", Path: d.File(name), Err: err}
	}
	return l, nil
}

// RemoveSocket removes the socket name, and nothing else of that name.
func (d *Dir) RemoveSocket(name string) error {
	if _, err := d.statSocket(name); err != nil {
		return err
	}
	return d.Remove(name)
}

// statSocket checks that name is a unix socket of ours that group and
// others cannot use; anything else is an error matching ErrUnsafe (a
// missing one matches os.ErrNotExist).
func (d *Dir) statSocket(name string) (*unix.Stat_t, error) {
	if err := plainName(name); err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(d.fd(), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, &os.PathError{Op: "stat", Path: d.File(name), Err: err}
	}
	mode := fileMode(st.Mode)
	switch {
	case mode&os.ModeSocket == 0:
		return nil, &UnsafeError{Path: d.File(name), Problem: "is not a unix socket", UID: st.Uid, Mode: mode, Fix: "remove it"}
	case st.Uid != d.uid:
		return nil, &UnsafeError{Path: d.File(name), Problem: fmt.Sprintf("is not owned by you (uid %d)", d.uid),
			UID: st.Uid, Mode: mode, Fix: "remove it"}
	case st.Mode&0o077 != 0:
		return nil, &UnsafeError{Path: d.File(name), Problem: "is open to group or others", UID: st.Uid, Mode: mode, Fix: "remove it"}
	}
	return &st, nil
}

// DialUnix connects to the socket name once it is checked to be a socket
// of ours without group or other permissions (see statSocket). A socket
// nobody listens on any more (its process was killed) gives an error
// matching syscall.ECONNREFUSED.
func (d *Dir) DialUnix(ctx context.Context, name string) (net.Conn, error) {
	if _, err := d.statSocket(name); err != nil {
		return nil, err
	}
	addr, err := d.fdPath(name)
	if err != nil {
		return nil, err
	}
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, "unix", addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", d.File(name), unwrapOp(err))
	}
	return c, nil
}

// unwrapOp drops net.OpError's text, which would show the /proc address.
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}
