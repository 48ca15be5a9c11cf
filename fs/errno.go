package fs

import (
	"context"
	"errors"
	iofs "io/fs"
	"log/slog"
	"syscall"

	"github.com/oceanum-dmfs/dmfs/zarr"
)

// errnoOf is the one place where failures become errno values. Lower layers
// return wrapped errors with standard sentinels; this maps them:
// missing -> ENOENT, refused -> EACCES, a write to a datasource another
// session is writing (409) -> EBUSY, a write without --write -> EROFS,
// anything else (timeouts, 5xx,
// malformed metadata, a fetch cancelled because the mount is ending) -> EIO.
// EINTR is only for the caller whose own request was interrupted (ctx, the
// FUSE request's context, is done): a cancellation from elsewhere is not the
// caller's signal. Causes hidden by the mapping are logged here, once, so
// the errno never loses them.
func errnoOf(ctx context.Context, log *slog.Logger, op, path string, err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
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
	case errors.Is(err, zarr.ErrLocked):
		log.Warn("datasource locked by another writing session (both need --allow-multiwrite to share it)", "op", op, "path", path, "err", err)
		return syscall.EBUSY
	case errors.Is(err, zarr.ErrReadOnly):
		log.Warn("read-only", "op", op, "path", path, "err", err)
		return syscall.EROFS
	case errors.Is(err, context.Canceled):
		log.Warn("cancelled (the mount is ending)", "op", op, "path", path, "err", err)
		return syscall.EIO
	case errors.Is(err, context.DeadlineExceeded):
		log.Warn("timed out", "op", op, "path", path, "err", err)
		return syscall.EIO
	default:
		log.Warn("i/o error", "op", op, "path", path, "err", err)
		return syscall.EIO
	}
}
