package fs

import (
	"context"
	"time"
)

// WriteOptions make a mount writable (dmfs mount --write). Nil in Options
// keeps the mount read-only.
type WriteOptions struct {
	// AllowDelete lets unlink and rmdir reach the gateway (DELETE of a key,
	// of a whole datasource); without it they are EPERM. Files and folders
	// that exist only in this mount (never uploaded) can always be removed.
	AllowDelete bool
	// SpoolDir is the private folder where files being written are kept
	// until uploaded (anonymous files: nothing is left behind).
	SpoolDir string
	// SpoolSize bounds the bytes spooled at once; writers wait for uploads
	// to free space, and get ENOSPC when nothing can free it.
	SpoolSize int64
	// Uploads bounds the uploads in flight (default 64).
	Uploads int
	// WriteBack is how long a closed file waits before it is uploaded, so
	// that a tool that renames its temporary file (rsync) renames it before
	// any upload. Files named *.partial are never uploaded under that name.
	WriteBack time.Duration
	// ValidNewID checks the name of a new datasource (mkdir at the root);
	// an error is EINVAL, logged.
	ValidNewID func(id string) error
}

// WriteSummary is what FinishWrites found: what was uploaded and what was
// not.
type WriteSummary struct {
	Uploaded int // keys uploaded through this mount
	// Failed are keys whose upload (or delete) failed for good.
	Failed []FailedUpload
	// NotUploaded are files written but never uploaded: still open when
	// the mount ended, or temporary (*.partial) files never renamed.
	NotUploaded []string
}

// FailedUpload is one key that did not reach the gateway.
type FailedUpload struct {
	Key string // "DATASOURCE/KEY"
	Err error
}

// OK reports whether every file written through the mount was uploaded.
func (s WriteSummary) OK() bool { return len(s.Failed) == 0 && len(s.NotUploaded) == 0 }

var _ = context.Background
