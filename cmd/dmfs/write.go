package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/oceanum-dmfs/dmfs/fs"
	"github.com/oceanum-dmfs/dmfs/internal/bytesize"
	"github.com/oceanum-dmfs/dmfs/internal/statedir"
	"github.com/oceanum-dmfs/dmfs/session"
)

// writeCloseTimeout bounds closing the session of a --write mount: the
// finalise commits every key written, which takes longer than a plain close.
const writeCloseTimeout = 2 * time.Minute

// summaryLines caps the keys a write summary names (log, `dmfs unmount`);
// the result record holds up to maxResultKeys of each kind.
const (
	summaryLines  = 20
	maxResultKeys = 100
	maxResultText = 512 // bytes of one key or error kept in the record
)

// checkPrivateDir creates path (mode 0700) if it is missing and checks that
// it is a directory of ours that group and others cannot enter: the files
// there hold data (being written, or tables being read). A symlink is
// refused, not followed, like a --log-file. what names the folder in errors.
func checkPrivateDir(what, path string) error {
	if err := os.Mkdir(path, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s folder: %w", what, err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("%s folder: %w", what, err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	var problem string
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		problem = "is a symbolic link; give the folder itself"
	case !fi.IsDir():
		problem = "is not a directory"
	case st.Uid != uint32(os.Geteuid()):
		problem = fmt.Sprintf("is not owned by you (uid %d)", os.Geteuid())
	case st.Mode&0o077 != 0:
		problem = fmt.Sprintf("is open to group or others; run 'chmod 700 %s' or choose another folder", path)
	default:
		return nil
	}
	return fmt.Errorf("%s folder %s %s (owner uid %d, mode %s)", what, path, problem, st.Uid, fi.Mode())
}

// privateDir returns a private folder: given (a flag's value, named by flag
// in errors), else the folder name in the state folder, checked by
// checkPrivateDir. A bad given folder is a usage error; a bad default one
// is a state folder problem.
func privateDir(dir *statedir.Dir, name, flag, given string) (string, int, error) {
	if given != "" {
		if err := checkPrivateDir(name, given); err != nil {
			return "", exitUsage, fmt.Errorf("%s: %w", flag, err)
		}
		return given, exitOK, nil
	}
	path := dir.File(name)
	if err := checkPrivateDir(name, path); err != nil {
		if flag != "" {
			err = fmt.Errorf("%w; or give %s", err, flag)
		}
		return "", exitFailure, err
	}
	return path, exitOK, nil
}

// spoolDir returns the folder for spool files: --spool-dir, else "spool" in
// the state folder.
func spoolDir(dir *statedir.Dir, given string) (string, int, error) {
	return privateDir(dir, "spool", "--spool-dir", given)
}

// warnSpoolSpace warns when the spool folder's file system has less room
// than --write-spool-size: writers would get ENOSPC before the bound. The
// default folder is in XDG_RUNTIME_DIR, often a small tmpfs (memory).
func warnSpoolSpace(path string, size int64, log *slog.Logger) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return
	}
	free := int64(st.Bavail) * st.Bsize
	if free >= size {
		return
	}
	const tmpfsMagic = 0x01021994
	log.Warn("the spool folder has less free space than --write-spool-size; writes fail with ENOSPC once it is full "+
		"(--spool-dir picks another folder)", "spool_dir", path, "free", bytesize.Format(free),
		"write_spool_size", bytesize.Format(size), "tmpfs", st.Type == tmpfsMagic)
}

// writeResult is what a --write mount's process leaves in the state folder
// for `dmfs unmount`, another process: written pending (Done false) once the
// mount serves, which tells `dmfs unmount` to wait for the uploads, and
// replaced by the outcome just before the process exits. A record still
// pending once the process is gone means it was killed, and its last session
// was not finalised. Read back, it is untrusted: printed, never acted on.
type writeResult struct {
	PID  int    `json:"pid"`
	Log  string `json:"log,omitempty"` // where the mount logs, for messages
	Done bool   `json:"done"`

	Finalised bool `json:"finalised"`
	Uploaded  int  `json:"uploaded"`
	// Final counts keys made final: at session renewals, and at the close
	// when it finalised.
	Final      int    `json:"final,omitempty"`
	Discarded  int    `json:"discarded,omitempty"`
	CloseError string `json:"close_error,omitempty"`

	Failed          []failedKey `json:"failed,omitempty"`
	FailedMore      int         `json:"failed_more,omitempty"` // failed keys beyond those listed
	NotUploaded     []string    `json:"not_uploaded,omitempty"`
	NotUploadedMore int         `json:"not_uploaded_more,omitempty"`
}

type failedKey struct {
	Key   string `json:"key"`
	Error string `json:"error"`
}

func resultRecordName(mountpoint string) string { return stateName(mountpoint, ".result") }

// newWriteResult is the outcome of a write mount: sum is what FinishWrites
// found, rep the client's report after the close, finalise whether the close
// asked for finalise_write=true. Finalised only when it did, the close
// succeeded, and nothing failed, was discarded or stayed staged.
func newWriteResult(sum fs.WriteSummary, rep session.WriteReport, finalise bool, closeErr error) writeResult {
	r := writeResult{
		PID:       os.Getpid(),
		Done:      true,
		Finalised: finalise && closeErr == nil && sum.OK() && rep.OK() && len(rep.Staged) == 0,
		Uploaded:  sum.Uploaded,
		Final:     len(rep.Final),
		Discarded: len(rep.Discarded),
	}
	if closeErr != nil {
		r.CloseError = clip(closeErr.Error())
	}
	// The fs and the session may both report a key; one line each.
	seen := map[string]bool{}
	add := func(key string, err error) {
		if seen[key] {
			return
		}
		seen[key] = true
		msg := "failed"
		if err != nil {
			msg = err.Error()
		}
		r.Failed = append(r.Failed, failedKey{Key: clip(key), Error: clip(msg)})
	}
	for _, f := range sum.Failed {
		add(f.Key, f.Err)
	}
	for _, f := range rep.Failed {
		add(f.Key, f.Err)
	}
	slices.SortFunc(r.Failed, func(a, b failedKey) int { return cmp.Compare(a.Key, b.Key) })
	for _, k := range sum.NotUploaded {
		r.NotUploaded = append(r.NotUploaded, clip(k))
	}
	slices.Sort(r.NotUploaded)
	r.Failed, r.FailedMore = capList(r.Failed, maxResultKeys)
	r.NotUploaded, r.NotUploadedMore = capList(r.NotUploaded, maxResultKeys)
	return r
}

// capList keeps the first n of list and counts the rest.
func capList[T any](list []T, n int) ([]T, int) {
	if len(list) <= n {
		return list, 0
	}
	return list[:n], len(list) - n
}

// clip keeps maxResultText bytes of s, so that the record stays small.
func clip(s string) string {
	if len(s) <= maxResultText {
		return s
	}
	return s[:maxResultText] + "..."
}

// code is the exit status the outcome calls for.
func (r writeResult) code() int {
	if r.Done && r.Finalised {
		return exitOK
	}
	return exitWrite
}

// summary renders the outcome for people: a headline, then the keys that
// failed or were never uploaded, at most limit of them (the headline comes
// first, so lines[1:] are the keys). Keys and errors are
// quoted or cleaned: a file name may hold any byte but '/' and NUL.
func (r writeResult) summary(limit int) []string {
	if !r.Done {
		return []string{fmt.Sprintf("writes NOT finalised: the mount's process (pid %d) ended before it finished "+
			"its writes (was it killed?); what it wrote since its last session renewal was not made final", r.PID)}
	}
	var head string
	if r.Finalised {
		head = fmt.Sprintf("writes finalised: %d files uploaded", r.Uploaded)
	} else {
		head = fmt.Sprintf("writes NOT finalised: %d files uploaded, %d failed, %d never uploaded, %d discarded",
			r.Uploaded, len(r.Failed)+r.FailedMore, len(r.NotUploaded)+r.NotUploadedMore, r.Discarded)
		if r.CloseError != "" {
			head += "; closing the session: " + cleanText(r.CloseError)
		}
		if r.Final > 0 {
			head += fmt.Sprintf("; %d keys made final earlier, at session renewals, stay final", r.Final)
		}
	}
	lines := []string{head}
	failedMore, notMore := r.FailedMore, r.NotUploadedMore
	for _, f := range r.Failed {
		if len(lines)-1 >= limit {
			failedMore++
			continue
		}
		lines = append(lines, fmt.Sprintf("  failed: %q: %s", f.Key, cleanText(f.Error)))
	}
	for _, k := range r.NotUploaded {
		if len(lines)-1 >= limit {
			notMore++
			continue
		}
		lines = append(lines, fmt.Sprintf("  never uploaded: %q", k))
	}
	if failedMore+notMore > 0 {
		lines = append(lines, fmt.Sprintf("  ... and %d more (%d failed, %d never uploaded)", failedMore+notMore, failedMore, notMore))
	}
	return lines
}

// cleanText makes s one printable line.
func cleanText(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return ' '
	}, s)
}

// writeResultRecord replaces the mount point's result record. Lists are
// halved until the record fits what ReadRecord accepts.
func writeResultRecord(dir *statedir.Dir, mountpoint string, r writeResult) error {
	for {
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		if len(b) < statedir.MaxRecord || (len(r.Failed) == 0 && len(r.NotUploaded) == 0) {
			return dir.WriteRecord(resultRecordName(mountpoint), append(b, '\n'))
		}
		if len(r.Failed) >= len(r.NotUploaded) {
			n := len(r.Failed) / 2
			r.FailedMore += len(r.Failed) - n
			r.Failed = r.Failed[:n]
		} else {
			n := len(r.NotUploaded) / 2
			r.NotUploadedMore += len(r.NotUploaded) - n
			r.NotUploaded = r.NotUploaded[:n]
		}
	}
}

// readResultRecord reads the mount point's result record; false when there
// is none, or none that can be trusted (warned about).
func readResultRecord(dir *statedir.Dir, mountpoint string, warn func(string)) (writeResult, bool) {
	name := resultRecordName(mountpoint)
	b, err := dir.ReadRecord(name)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			warn(fmt.Sprintf("write result ignored: %v", err))
		}
		return writeResult{}, false
	}
	var r writeResult
	if err := json.Unmarshal(b, &r); err != nil || r.PID <= 0 {
		warn(fmt.Sprintf("write result ignored: %s is not a dmfs write result", dir.File(name)))
		return writeResult{}, false
	}
	return r, true
}

// logLocation says where this process logs, for `dmfs unmount`'s messages:
// --log-file, else what stderr is when it is a file (a background mount's
// log); "" for a terminal or a pipe.
func logLocation(logFile string) string {
	if logFile != "" {
		if abs, err := filepath.Abs(logFile); err == nil {
			return abs
		}
		return logFile
	}
	p, err := os.Readlink("/proc/self/fd/2")
	if err != nil || !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "/dev/") {
		return ""
	}
	return p
}

// sessionEnder is what mountEnd needs of the session client.
type sessionEnder interface {
	CloseFinal(ctx context.Context, finalise bool) error
	WriteReport() session.WriteReport
}

// mountEnd closes the session when the mount ends, however it ends (an
// unmount from outside, a signal, a failed start), and reports a write
// mount's outcome.
type mountEnd struct {
	client  sessionEnder
	id      string // the session, for the log
	dir     *statedir.Dir
	mp      string
	log     *slog.Logger
	logPath string    // where the log goes, for `dmfs unmount`'s messages
	summary io.Writer // also gets a write outcome (foreground with --log-file); nil: the log only
}

// close closes the session and returns the exit code. sum is what
// FinishWrites found once a --write mount has served; nil for a read-only
// mount or one that never served, which closes without finalising and exits
// 0 (a failed close leaves the session record: the next mount or unmount
// here closes it). A write mount finalises only when sum and the client's
// report show that every write succeeded; its outcome is logged, printed to
// summary, and left in the result record for `dmfs unmount`. The close gets
// a context of its own: the signal that ended the mount cancelled the other.
func (e mountEnd) close(sum *fs.WriteSummary) int {
	timeout := sessionCloseTimeout
	finalise := false
	if sum != nil {
		timeout = writeCloseTimeout
		finalise = sum.OK() && e.client.WriteReport().OK()
	}
	cctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := e.client.CloseFinal(cctx, finalise)
	// The session logs the close (or its failure) itself.
	if err != nil {
		// The record stays: the next mount or unmount here tries again.
		e.log.Warn("the session stays open until it expires, or until the next 'dmfs mount' or 'dmfs unmount' here closes it",
			"session", e.id)
	} else {
		e.dir.Remove(sessionRecordName(e.mp))
	}
	if sum == nil {
		return exitOK
	}
	res := newWriteResult(*sum, e.client.WriteReport(), finalise, err)
	res.Log = e.logPath
	lines := res.summary(summaryLines)
	if res.Finalised {
		e.log.Info(lines[0])
	} else {
		for _, l := range lines {
			e.log.Error(strings.TrimSpace(l))
		}
	}
	if e.summary != nil {
		for _, l := range lines {
			fmt.Fprintf(e.summary, "dmfs mount: %s\n", l)
		}
	}
	if werr := writeResultRecord(e.dir, e.mp, res); werr != nil {
		e.log.Warn("write result not recorded; 'dmfs unmount' cannot report it", "err", werr)
	}
	return res.code()
}

// Notices while `dmfs unmount` waits for a write mount's uploads.
var (
	uploadNoticeAfter = 3 * time.Second
	uploadNoticeEvery = 30 * time.Second
)

// waitExit waits until process pid has exited: false if ctx ends first or,
// with limit > 0, after limit. notice, if not nil, is called with the time
// waited at each poll.
func waitExit(ctx context.Context, pid int, limit time.Duration, notice func(time.Duration)) bool {
	start := time.Now()
	for processAlive(pid) {
		waited := time.Since(start)
		if limit > 0 && waited > limit {
			return false
		}
		if notice != nil {
			notice(waited)
		}
		// Often at first, so that an unmount returns as soon as the
		// process is gone; a write mount may upload for hours.
		poll := 20 * time.Millisecond
		if waited > unmountWait {
			poll = 250 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(poll):
		}
	}
	return true
}

// uploadNotices says, after uploadNoticeAfter and then every
// uploadNoticeEvery, that `dmfs unmount` is waiting for uploads.
func uploadNotices(stderr io.Writer, logPath string) func(time.Duration) {
	next := uploadNoticeAfter
	where := "the mount's log"
	if logPath != "" {
		where = logPath
	}
	return func(waited time.Duration) {
		if waited >= next {
			fmt.Fprintf(stderr, "dmfs unmount: waiting for uploads to finish (see %s)\n", cleanText(where))
			next = waited + uploadNoticeEvery
		}
	}
}

// unmountWrites is the end of `dmfs unmount` of a --write mount (pending is
// its record from before the unmount): it waits, however long the uploads
// take, for the process to exit, then reports the outcome it left and
// returns 0 only when its writes were finalised.
func unmountWrites(ctx context.Context, dir *statedir.Dir, mp string, pending writeResult, lo *leftoverOptions, stderr io.Writer) int {
	if !waitExit(ctx, pending.PID, 0, uploadNotices(stderr, pending.Log)) {
		fmt.Fprintf(stderr, "dmfs unmount: stopped waiting; process %d goes on with its uploads and logs the outcome\n", pending.PID)
		return exitFailure
	}
	// A killed mount left its session open: closed, without finalising.
	closeLeftoverAfterUnmount(ctx, dir, mp, lo, stderr)
	res, ok := readResultRecord(dir, mp, unmountWarning(stderr))
	if ok {
		dir.Remove(resultRecordName(mp))
	}
	lines, code := unmountOutcome(res, ok && res.PID == pending.PID, pending.Log)
	for _, l := range lines {
		fmt.Fprintf(stderr, "dmfs unmount: %s\n", l)
	}
	return code
}

// unmountOutcome is what `dmfs unmount` says and returns given the result
// record the mount's process left (found false: none, or another process's).
func unmountOutcome(res writeResult, found bool, logPath string) ([]string, int) {
	if !found {
		where := "the mount's log"
		if logPath != "" {
			where = logPath
		}
		return []string{"writes NOT known to be finalised: the mount's process left no outcome; see " + cleanText(where)}, exitWrite
	}
	lines := res.summary(summaryLines)
	if res.code() != exitOK && logPath != "" {
		lines = append(lines, "see "+cleanText(logPath))
	}
	return lines, res.code()
}

// reportUnmountedWrites is `dmfs unmount` of a --write mount unmounted by
// other means (umount, fusermount3 -u, or umount -l after a SIGKILL): the
// outcome its process left is reported, once its process is gone, with
// exit 8 when its writes were not finalised. reported is false when there
// is no outcome to report, or it was finalised (the unmount then exits as
// for any path not mounted).
func reportUnmountedWrites(ctx context.Context, dir *statedir.Dir, mp string, lo *leftoverOptions, stderr io.Writer) (code int, reported bool) {
	if dir == nil {
		return 0, false
	}
	res, ok := readResultRecord(dir, mp, unmountWarning(stderr))
	if !ok {
		return 0, false
	}
	if !res.Done {
		// Still uploading (umount by hand), or killed: wait, then report.
		return unmountWrites(ctx, dir, mp, res, lo, stderr), true
	}
	dir.Remove(resultRecordName(mp))
	lines, code := unmountOutcome(res, true, res.Log)
	for _, l := range lines {
		fmt.Fprintf(stderr, "dmfs unmount: %s\n", l)
	}
	return code, code != exitOK
}
