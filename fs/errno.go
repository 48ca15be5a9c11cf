package fs

import (
	"context"
	"errors"
	iofs "io/fs"
	"log/slog"
	"syscall"
)

// errnoOf is the one place where failures become errno values. Lower layers
// return wrapped errors with standard sentinels; this maps them:
// missing -> ENOENT, refused -> EACCES, the caller's interrupt -> EINTR,
// anything else (timeouts, 5xx, malformed metadata) -> EIO. Causes hidden by
// the mapping are logged here, once, so the errno never loses them.
func errnoOf(log *slog.Logger, op, path string, err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, context.Canceled):
		log.Debug("interrupted", "op", op, "path", path)
		return syscall.EINTR
	case errors.Is(err, iofs.ErrNotExist):
		// Plain 404s are routine (Zarr readers probe missing chunks); only a
		// cause beyond "absent" (a datasource gone, 410) is worth a line,
		// and the session layer logs that where it knows it.
		log.Debug("not found", "op", op, "path", path, "err", err)
		return syscall.ENOENT
	case errors.Is(err, iofs.ErrPermission):
		log.Warn("access refused", "op", op, "path", path, "err", err)
		return syscall.EACCES
	case errors.Is(err, context.DeadlineExceeded):
		log.Warn("timed out", "op", op, "path", path, "err", err)
		return syscall.EIO
	default:
		log.Warn("i/o error", "op", op, "path", path, "err", err)
		return syscall.EIO
	}
}
