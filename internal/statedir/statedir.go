// Package statedir is dmfs's private state folder: pid files, logs of
// background mounts, session records, mount locks and the mounts' status
// sockets.
//
// The folder is $XDG_RUNTIME_DIR/dmfs, or $TMPDIR/dmfs-UID (/tmp/dmfs-UID)
// when XDG_RUNTIME_DIR is unset. The second name is predictable in a folder
// every user can write to, so nothing found there is trusted as found: the
// folder is created 0700 without following a symlink, then opened with
// O_NOFOLLOW|O_DIRECTORY and checked through that descriptor (a directory,
// owned by us, no group or other permission bits) or refused. Every file is
// then opened relative to that descriptor with O_NOFOLLOW, so a symlink
// planted under a file's name is never followed, and records are written to
// a fresh O_EXCL name and renamed into place.
package statedir

import (
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
	"time"
)

// MaxRecord bounds what Read accepts: records are a few hundred bytes, so
// anything larger was not written by dmfs.
const MaxRecord = 64 << 10

// ErrUnsafe marks a state folder or file that is refused because someone
// else could have planted or changed it.
var ErrUnsafe = errors.New("unsafe state")

// ErrLocked is returned by TryLock when another process holds the lock.
var ErrLocked = errors.New("locked")

// UnsafeError says which path was refused, why, and what to do.
type UnsafeError struct {
	Path    string
	Problem string // "is a symbolic link", "is not owned by you (uid 1000)", ...
	UID     uint32 // owner of Path
	Mode    os.FileMode
	Fix     string
}

func (e *UnsafeError) Error() string {
	return fmt.Sprintf("%s %s (owner uid %d, mode %s); %s", e.Path, e.Problem, e.UID, e.Mode, e.Fix)
}

func (e *UnsafeError) Is(target error) bool { return target == ErrUnsafe }

// LockedError is ErrLocked with the pid the holder wrote into the lock file
// (0 when it has not written it yet).
type LockedError struct {
	Path string
	PID  int
}

func (e *LockedError) Error() string {
	if e.PID > 0 {
		return fmt.Sprintf("%s is held by pid %d", e.Path, e.PID)
	}
	return e.Path + " is held by another process"
}

func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// Dir is an open, verified state folder.
type Dir struct {
	path string
	f    *os.File // O_DIRECTORY|O_NOFOLLOW; every file is opened relative to it
	uid  uint32
}

// DefaultPath returns the state folder's path and its parent, and whether
// the parent must be private (XDG_RUNTIME_DIR) rather than a shared,
// sticky temporary folder.
func DefaultPath(getenv func(string) string) (dir, parent string, private bool, err error) {
	uid := os.Geteuid()
	if x := getenv("XDG_RUNTIME_DIR"); x != "" {
		if !filepath.IsAbs(x) {
			return "", "", false, fmt.Errorf("XDG_RUNTIME_DIR=%q is not an absolute path; set it to your runtime folder or unset it", x)
		}
		x = filepath.Clean(x)
		return filepath.Join(x, "dmfs"), x, true, nil
	}
	tmp := filepath.Clean(os.TempDir())
	return filepath.Join(tmp, fmt.Sprintf("dmfs-%d", uid)), tmp, false, nil
}

// Open opens the default state folder (see DefaultPath), creating it when
// create is set. Without create, a folder that does not exist is an error
// matching os.ErrNotExist.
func Open(create bool) (*Dir, error) {
	dir, parent, private, err := DefaultPath(os.Getenv)
	if err != nil {
		return nil, err
	}
	return OpenIn(parent, filepath.Base(dir), private, create)
}

// OpenIn opens the state folder name inside parent. A private parent must be
// owned by us and not writable by group or others (XDG_RUNTIME_DIR); a
// shared one (/tmp) must be owned by us or root and, when others can write
// to it, sticky, so that nobody else can rename our folder away.
func OpenIn(parent, name string, private, create bool) (*Dir, error) {
	uid := uint32(os.Geteuid())
	path := filepath.Join(parent, name)
	pf, err := os.OpenFile(parent, os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		if private {
			return nil, fmt.Errorf("XDG_RUNTIME_DIR: %w; set it to an existing folder of yours, or unset it", err)
		}
		return nil, fmt.Errorf("state folder %s: %w", path, err)
	}
	defer pf.Close()
	pst, err := fstat(pf)
	if err != nil {
		return nil, fmt.Errorf("state folder %s: %w", path, err)
	}
	if err := checkParent(parent, pst, uid, private); err != nil {
		return nil, err
	}
	pfd := int(pf.Fd())
	if create {
		// mkdirat does not follow a symlink planted at name: it fails with
		// EEXIST, and the checks below refuse the symlink.
		if err := syscall.Mkdirat(pfd, name, 0o700); err != nil && !errors.Is(err, syscall.EEXIST) {
			return nil, fmt.Errorf("creating the state folder %s: %w", path, err)
		}
	}
	// Lstat by path gives the clear message for a symlink or a file; the
	// descriptor opened below is what is trusted.
	lst, err := os.Lstat(path)
	if err != nil {
		return nil, fmt.Errorf("state folder: %w", err)
	}
	if err := checkDir(path, lst.Mode(), lst.Sys().(*syscall.Stat_t), uid); err != nil {
		return nil, err
	}
	fd, err := syscall.Openat(pfd, name, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the state folder %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	st, err := fstat(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("state folder %s: %w", path, err)
	}
	want := lst.Sys().(*syscall.Stat_t)
	if err := checkDir(path, fileMode(st.Mode), st, uid); err != nil {
		f.Close()
		return nil, err
	}
	if st.Dev != want.Dev || st.Ino != want.Ino {
		f.Close()
		return nil, &UnsafeError{Path: path, Problem: "was replaced while being opened", UID: st.Uid, Mode: fileMode(st.Mode),
			Fix: "check who else writes to " + parent + ", or set XDG_RUNTIME_DIR to a private folder"}
	}
	return &Dir{path: path, f: f, uid: uid}, nil
}

func checkParent(parent string, st *syscall.Stat_t, uid uint32, private bool) error {
	mode := fileMode(st.Mode)
	if private {
		if st.Uid != uid {
			return &UnsafeError{Path: parent, Problem: fmt.Sprintf("(XDG_RUNTIME_DIR) is not owned by you (uid %d)", uid),
				UID: st.Uid, Mode: mode, Fix: "set XDG_RUNTIME_DIR to a folder of yours, or unset it"}
		}
		if st.Mode&0o022 != 0 {
			return &UnsafeError{Path: parent, Problem: "(XDG_RUNTIME_DIR) is writable by group or others",
				UID: st.Uid, Mode: mode, Fix: fmt.Sprintf("run 'chmod go-w %s', or set XDG_RUNTIME_DIR to a private folder", parent)}
		}
		return nil
	}
	if st.Uid != uid && st.Uid != 0 {
		return &UnsafeError{Path: parent, Problem: fmt.Sprintf("is owned by neither you (uid %d) nor root", uid),
			UID: st.Uid, Mode: mode, Fix: "set XDG_RUNTIME_DIR (or TMPDIR) to a folder of yours"}
	}
	if st.Mode&0o022 != 0 && st.Mode&syscall.S_ISVTX == 0 {
		return &UnsafeError{Path: parent, Problem: "is writable by others and not sticky (others could rename dmfs's state folder)",
			UID: st.Uid, Mode: mode, Fix: "set XDG_RUNTIME_DIR (or TMPDIR) to a folder of yours"}
	}
	return nil
}

func checkDir(path string, mode os.FileMode, st *syscall.Stat_t, uid uint32) error {
	fix := "remove it (as its owner or root) or set XDG_RUNTIME_DIR to a private folder"
	switch {
	case mode&os.ModeSymlink != 0:
		return &UnsafeError{Path: path, Problem: "is a symbolic link, not dmfs's state folder", UID: st.Uid, Mode: mode, Fix: fix}
	case !mode.IsDir():
		return &UnsafeError{Path: path, Problem: "is not a directory", UID: st.Uid, Mode: mode, Fix: fix}
	case st.Uid != uid:
		return &UnsafeError{Path: path, Problem: fmt.Sprintf("is not owned by you (uid %d)", uid),
			UID: st.Uid, Mode: mode, Fix: fix}
	case st.Mode&0o077 != 0:
		return &UnsafeError{Path: path, Problem: "is open to group or others", UID: st.Uid, Mode: mode,
			Fix: fmt.Sprintf("remove it, or run 'chmod 700 %s' if you made it so", path)}
	}
	return nil
}

// NameFor names a per-mount-point file (pid, log, session record, lock):
// readable, and distinct per path.
func NameFor(mountpoint, ext string) string {
	sum := sha256.Sum256([]byte(mountpoint))
	base := strings.Trim(strings.ReplaceAll(mountpoint, "/", "_"), "_")
	if len(base) > 40 {
		base = base[len(base)-40:]
	}
	return base + "-" + hex.EncodeToString(sum[:4]) + ext
}

// Path is the folder's path, for messages.
func (d *Dir) Path() string { return d.path }

// File is the path of name in the folder, for messages.
func (d *Dir) File(name string) string { return filepath.Join(d.path, name) }

// Close releases the folder's descriptor.
func (d *Dir) Close() error { return d.f.Close() }

func (d *Dir) fd() int { return int(d.f.Fd()) }

func (d *Dir) openat(name string, flag int, perm uint32) (*os.File, error) {
	if name == "" || strings.ContainsRune(name, '/') || name == "." || name == ".." {
		return nil, fmt.Errorf("state file name %q: not a plain name", name)
	}
	fd, err := syscall.Openat(d.fd(), name, flag|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, perm)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, symlinkError(d.File(name), "dmfs did not follow it; remove it")
		}
		return nil, &os.PathError{Op: "open", Path: d.File(name), Err: err}
	}
	return os.NewFile(uintptr(fd), d.File(name)), nil
}

// openChecked is openat followed by the check that the file is a private
// regular file of ours (checkFile); its stat is returned with it.
func (d *Dir) openChecked(name string, flag int, perm uint32) (*os.File, *syscall.Stat_t, error) {
	f, err := d.openat(name, flag, perm)
	if err != nil {
		return nil, nil, err
	}
	st, err := fstat(f)
	if err == nil {
		err = d.checkFile(f.Name(), st, true)
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, st, nil
}

// WriteRecord replaces name with data atomically: data goes to a fresh
// O_EXCL file of mode 0600, renamed over name (rename replaces a planted
// symlink itself, never its target).
func (d *Dir) WriteRecord(name string, data []byte) error {
	tmp := fmt.Sprintf(".%s.%d.%d.tmp", name, os.Getpid(), time.Now().UnixNano())
	f, err := d.openat(tmp, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syscall.Renameat(d.fd(), tmp, d.fd(), name)
		if err != nil {
			err = &os.LinkError{Op: "rename", Old: d.File(tmp), New: d.File(name), Err: err}
		}
	}
	if err != nil {
		syscall.Unlinkat(d.fd(), tmp)
	}
	return err
}

// ReadRecord reads name, which must be a regular file of ours without group
// or other permission bits, of at most MaxRecord bytes; anything else is an
// error matching ErrUnsafe. A missing file matches os.ErrNotExist.
func (d *Dir) ReadRecord(name string) ([]byte, error) {
	// O_NONBLOCK: opening a FIFO planted under name must not hang.
	f, st, err := d.openChecked(name, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st.Size > MaxRecord {
		return nil, &UnsafeError{Path: f.Name(), Problem: fmt.Sprintf("is %d bytes, more than a dmfs record (%d)", st.Size, MaxRecord),
			UID: st.Uid, Mode: fileMode(st.Mode), Fix: "remove it"}
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxRecord+1))
	if err == nil && len(b) > MaxRecord {
		return nil, &UnsafeError{Path: f.Name(), Problem: "grew past the size of a dmfs record", UID: st.Uid, Mode: fileMode(st.Mode), Fix: "remove it"}
	}
	return b, err
}

// OpenAppend opens name for appending (a log), creating it with mode 0600.
// It must be a regular file of ours without group or other permission bits.
func (d *Dir) OpenAppend(name string) (*os.File, error) {
	f, _, err := d.openChecked(name, syscall.O_WRONLY|syscall.O_APPEND|syscall.O_CREAT, 0o600)
	return f, err
}

// Remove removes name (never what a symlink named name points to).
func (d *Dir) Remove(name string) error {
	if err := syscall.Unlinkat(d.fd(), name); err != nil {
		return &os.PathError{Op: "remove", Path: d.File(name), Err: err}
	}
	return nil
}

func (d *Dir) checkFile(path string, st *syscall.Stat_t, private bool) error {
	return checkFile(path, st, d.uid, private)
}

func checkFile(path string, st *syscall.Stat_t, uid uint32, private bool) error {
	mode := fileMode(st.Mode)
	switch {
	case !mode.IsRegular():
		return &UnsafeError{Path: path, Problem: "is not a regular file", UID: st.Uid, Mode: mode, Fix: "remove it"}
	case st.Uid != uid:
		return &UnsafeError{Path: path, Problem: fmt.Sprintf("is not owned by you (uid %d)", uid),
			UID: st.Uid, Mode: mode, Fix: "remove it"}
	case private && st.Mode&0o077 != 0:
		return &UnsafeError{Path: path, Problem: "is open to group or others", UID: st.Uid, Mode: mode, Fix: "remove it"}
	}
	return nil
}

// OpenLog opens a log file the user named (--log-file) for appending,
// creating it with mode 0600. It is not followed if it is a symlink and must
// be a regular file we own; its permissions are the user's choice.
func OpenLog(path string) (*os.File, error) {
	fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_APPEND|syscall.O_CREAT|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, symlinkError(path, "dmfs did not follow it; give the path of the file itself")
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	st, err := fstat(f)
	if err == nil {
		err = checkFile(path, st, uint32(os.Geteuid()), false)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Lock is an exclusive flock on a file in the state folder, held until
// Close or until the process ends (the kernel drops it even on SIGKILL).
type Lock struct{ f *os.File }

// TryLock takes the exclusive lock name without waiting and writes our pid
// into it. When another process holds it, the error matches ErrLocked and is
// a *LockedError with the holder's pid. The lock file is never removed:
// removing it would let two processes lock two different files.
func (d *Dir) TryLock(name string) (*Lock, error) {
	f, _, err := d.openChecked(name, syscall.O_RDWR|syscall.O_CREAT, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			buf := make([]byte, 24)
			n, _ := f.ReadAt(buf, 0)
			pid, _ := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
			return nil, &LockedError{Path: f.Name(), PID: pid}
		}
		return nil, &os.PathError{Op: "flock", Path: f.Name(), Err: err}
	}
	// Tells a process that finds the lock taken who holds it.
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &Lock{f: f}, nil
}

// Close releases the lock.
func (l *Lock) Close() error { return l.f.Close() }

// symlinkError describes a symlink that O_NOFOLLOW refused, with its owner
// for the message (who planted it).
func symlinkError(path, fix string) error {
	e := &UnsafeError{Path: path, Problem: "is a symbolic link", Mode: os.ModeSymlink, Fix: fix}
	if fi, err := os.Lstat(path); err == nil {
		e.Mode = fi.Mode()
		e.UID = fi.Sys().(*syscall.Stat_t).Uid
	}
	return e
}

func fstat(f *os.File) (*syscall.Stat_t, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return nil, &os.PathError{Op: "fstat", Path: f.Name(), Err: err}
	}
	return &st, nil
}

// fileMode converts a raw st_mode to an os.FileMode, for checks and messages.
func fileMode(m uint32) os.FileMode {
	mode := os.FileMode(m & 0o777)
	switch m & syscall.S_IFMT {
	case syscall.S_IFDIR:
		mode |= os.ModeDir
	case syscall.S_IFLNK:
		mode |= os.ModeSymlink
	case syscall.S_IFIFO:
		mode |= os.ModeNamedPipe
	case syscall.S_IFSOCK:
		mode |= os.ModeSocket
	case syscall.S_IFCHR:
		mode |= os.ModeDevice | os.ModeCharDevice
	case syscall.S_IFBLK:
		mode |= os.ModeDevice
	}
	if m&syscall.S_ISVTX != 0 {
		mode |= os.ModeSticky
	}
	if m&syscall.S_ISGID != 0 {
		mode |= os.ModeSetgid
	}
	if m&syscall.S_ISUID != 0 {
		mode |= os.ModeSetuid
	}
	return mode
}
