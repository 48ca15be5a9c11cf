package fs

// WriteStats is a moment's view of a --write mount's uploads, for `dmfs
// status` and metrics.
type WriteStats struct {
	Pending    int   // uploads queued or running (files closed and not yet sent, or being sent)
	InFlight   int   // uploads being sent now
	Uploaded   int   // keys uploaded through the mount so far
	Failed     int   // keys whose upload failed for good
	SpoolBytes int64 // bytes spooled (written, waiting to be uploaded)
	SpoolMax   int64 // the bound on SpoolBytes (--write-spool-size)
}

// WriteStats reports the uploads of a --write mount; false for a read-only
// mount. It only reads.
func (r *Root) WriteStats() (WriteStats, bool) {
	w := r.opt.writer
	if w == nil {
		return WriteStats{}, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return WriteStats{
		Pending:    len(w.jobs),
		InFlight:   len(w.inflight),
		Uploaded:   w.uploaded,
		Failed:     len(w.failed),
		SpoolBytes: w.spoolUsed,
		SpoolMax:   w.wo.SpoolSize,
	}, true
}
