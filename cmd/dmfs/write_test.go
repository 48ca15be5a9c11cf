package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/fs"
	"github.com/oceanum-dmfs/dmfs/internal/statedir"
	"github.com/oceanum-dmfs/dmfs/session"
)

func TestWriteFlagsAreChecked(t *testing.T) {
	groupOpen := filepath.Join(t.TempDir(), "open")
	require.NoError(t, os.Mkdir(groupOpen, 0o700))
	require.NoError(t, os.Chmod(groupOpen, 0o750))
	link := filepath.Join(t.TempDir(), "link")
	require.NoError(t, os.Symlink(t.TempDir(), link))
	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"--allow-delete without --write", []string{"--allow-delete"}, []string{"--allow-delete only applies to a --write mount"}},
		{"--allow-multiwrite without --write", []string{"--allow-multiwrite"}, []string{"--allow-multiwrite only applies"}},
		{"several without --write", []string{"--uploads", "8", "--spool-dir", "/tmp/x"}, []string{"--spool-dir, --uploads only applies"}},
		{"--uploads 0", []string{"--write", "--uploads", "0"}, []string{"--uploads must be at least 1"}},
		{"--write-spool-size 0", []string{"--write", "--write-spool-size", "0"}, []string{"--write-spool-size must be more than 0"}},
		{"negative --write-back", []string{"--write", "--write-back", "-1s"}, []string{"--write-back must not be negative"}},
		{"spool dir open to group", []string{"--write", "--spool-dir", groupOpen}, []string{groupOpen, "open to group or others", "chmod 700"}},
		{"spool dir a symlink", []string{"--write", "--spool-dir", link}, []string{link, "symbolic link"}},
		{"spool dir a file", []string{"--write", "--spool-dir", file}, []string{file, "not a directory"}},
		{"spool dir's parent missing", []string{"--write", "--spool-dir", filepath.Join(file, "x")}, []string{"--spool-dir"}},
	}
	if os.Geteuid() == 0 {
		other := filepath.Join(t.TempDir(), "other")
		require.NoError(t, os.Mkdir(other, 0o700))
		require.NoError(t, os.Chown(other, 65534, 65534))
		cases = append(cases, struct {
			name string
			args []string
			want []string
		}{"spool dir of another user", []string{"--write", "--spool-dir", other}, []string{other, "not owned by you", "uid 65534"}})
	}
	for _, c := range cases {
		for _, mode := range []string{"background", "foreground"} {
			t.Run(c.name+"/"+mode, func(t *testing.T) {
				openStateDir(t)
				g := newFakeGateway(t)
				args := append([]string{"mount", "--service", g.URL}, c.args...)
				if mode == "foreground" {
					args = append(args, "--foreground")
				}
				code, _, stderr := runArgs(t, map[string]string{"DATAMESH_TOKEN": testToken}, append(args, t.TempDir())...)
				assert.Equal(t, exitUsage, code, stderr)
				for _, s := range c.want {
					assert.Contains(t, stderr, s)
				}
				assert.Empty(t, g.requests(), "no session acquired")
			})
		}
	}
}

func TestCheckSpoolDir(t *testing.T) {
	base := t.TempDir()
	missing := filepath.Join(base, "new")
	require.NoError(t, checkPrivateDir("spool", missing), "a missing folder is created")
	fi, err := os.Lstat(missing)
	require.NoError(t, err)
	assert.True(t, fi.IsDir())
	assert.Equal(t, os.FileMode(0), fi.Mode().Perm()&0o077, "created private")
	require.NoError(t, checkPrivateDir("spool", missing), "and then taken as it is")

	dir := openStateDir(t)
	path, code, err := spoolDir(dir, "")
	require.NoError(t, err)
	assert.Equal(t, exitOK, code)
	assert.Equal(t, dir.File("spool"), path, "the default is spool/ in the state folder")

	// The state folder's own spool/ must pass the same checks.
	require.NoError(t, os.Chmod(path, 0o755))
	_, code, err = spoolDir(dir, "")
	require.Error(t, err)
	assert.Equal(t, exitFailure, code, "a bad default is a state folder problem, not a usage error")
	assert.Contains(t, err.Error(), "--spool-dir")
}

func TestWriteFlagsReachTheDaemonAndSpoolDirIsAbsolute(t *testing.T) {
	t.Chdir(t.TempDir())
	args := []string{"--write", "--allow-delete", "--allow-multiwrite", "--write-spool-size", "512MiB",
		"--spool-dir", "spool", "--write-back", "500ms", "--uploads", "8", "/mnt/x"}
	parse := func(args []string) (mountOptions, *pflag.FlagSet) {
		var o mountOptions
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		o.AddFlags(fs, func(string) string { return "" })
		require.NoError(t, fs.Parse(args))
		require.NoError(t, o.checkWrite(fs))
		return o, fs
	}
	want, fs := parse(args)
	wd, err := os.Getwd()
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(wd, "spool"), want.SpoolDir, "the background mount runs in /")
	got, _ := parse(append(childFlags(fs), "--", "/mnt/x"))
	assert.Equal(t, want, got)
	assert.True(t, got.Write && got.AllowDelete && got.AllowMultiwrite)

	var o mountOptions
	o.AddFlags(pflag.NewFlagSet("t", pflag.ContinueOnError), func(string) string { return "" })
	assert.False(t, o.Write, "read-only by default")
	assert.Equal(t, byteSize(4<<30), o.SpoolSize)
	assert.Equal(t, 2*time.Second, o.WriteBack)
	assert.Equal(t, 64, o.Uploads)
}

func TestValidNewID(t *testing.T) {
	for _, id := range []string{"abc", "era5_wind-10m", strings.Repeat("a", 80)} {
		assert.NoError(t, validNewID(id), id)
		assert.True(t, session.ValidNewID(id), "the same rule as the session's: %s", id)
	}
	for _, id := range []string{"ab", "Upper", "dot.ted", "sp ace", strings.Repeat("a", 81), "a\nb"} {
		err := validNewID(id)
		require.Error(t, err, id)
		assert.False(t, session.ValidNewID(id), id)
		assert.Contains(t, err.Error(), "not a valid new datasource id")
		assert.Contains(t, err.Error(), "^[a-z0-9_-]{3,80}$")
		assert.NotContains(t, err.Error(), "\n", "the id is quoted")
	}
}

// fakeEnder is a session client that records the close.
type fakeEnder struct {
	before, after session.WriteReport
	closeErr      error
	closed        int
	finalise      bool
}

func (f *fakeEnder) CloseFinal(ctx context.Context, finalise bool) error {
	f.closed++
	f.finalise = finalise
	return f.closeErr
}

func (f *fakeEnder) WriteReport() session.WriteReport {
	if f.closed > 0 {
		return f.after
	}
	return f.before
}

func TestMountEndFinalisesOnlyWhenEveryWriteSucceeded(t *testing.T) {
	uploadErr := errors.New("gateway answered 500")
	closeErr := errors.New("DELETE /session/s1: 503")
	good := fs.WriteSummary{Uploaded: 3}
	cases := []struct {
		name          string
		sum           *fs.WriteSummary
		before, after session.WriteReport
		closeErr      error
		finalise      bool
		code          int
		log           []string
		sessionRecord bool // kept: the close failed
	}{
		{"read-only mount", nil, session.WriteReport{}, session.WriteReport{}, nil, false, exitOK,
			nil, false},
		{"read-only mount, close failed", nil, session.WriteReport{}, session.WriteReport{}, closeErr, false, exitOK,
			[]string{"the session stays open"}, true},
		{"all uploaded", &good, session.WriteReport{Staged: []string{"a/x"}}, session.WriteReport{Final: []string{"a/x"}}, nil,
			true, exitOK, []string{"writes finalised: 3 files uploaded"}, false},
		{"an upload failed", &fs.WriteSummary{Uploaded: 2, Failed: []fs.FailedUpload{{Key: "a/y", Err: uploadErr}}},
			session.WriteReport{Staged: []string{"a/x"}}, session.WriteReport{Discarded: []string{"a/x"}}, nil,
			false, exitWrite, []string{"writes NOT finalised", `failed: \"a/y\": gateway answered 500`}, false},
		{"a file never uploaded", &fs.WriteSummary{Uploaded: 1, NotUploaded: []string{"a/open"}},
			session.WriteReport{}, session.WriteReport{}, nil, false, exitWrite, []string{`never uploaded: \"a/open\"`}, false},
		{"the session reports a failure", &good, session.WriteReport{Failed: []session.FailedWrite{{Key: "a/z", Err: uploadErr}}},
			session.WriteReport{Failed: []session.FailedWrite{{Key: "a/z", Err: uploadErr}}}, nil, false, exitWrite,
			[]string{`failed: \"a/z\"`}, false},
		{"the finalise failed", &good, session.WriteReport{Staged: []string{"a/x"}},
			session.WriteReport{Failed: []session.FailedWrite{{Key: "a/x", Err: closeErr}}}, closeErr, true, exitWrite,
			[]string{"the session stays open", "writes NOT finalised", "503"}, true},
		{"the close failed with nothing staged", &good, session.WriteReport{}, session.WriteReport{}, closeErr, true, exitWrite,
			[]string{"writes NOT finalised"}, true},
		{"keys final at renewals stay final", &fs.WriteSummary{Uploaded: 5, NotUploaded: []string{"a/p"}},
			session.WriteReport{Final: []string{"a/1", "a/2"}}, session.WriteReport{Final: []string{"a/1", "a/2"}}, nil,
			false, exitWrite, []string{"2 keys made final earlier, at session renewals, stay final"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := openStateDir(t)
			mp := "/mnt/w"
			require.NoError(t, writeSessionRecord(dir, mp, sessionRecord{Gateway: "g", ID: "s1", PID: os.Getpid()}))
			client := &fakeEnder{before: c.before, after: c.after, closeErr: c.closeErr}
			var logged, summary bytes.Buffer
			end := mountEnd{client: client, id: "s1", dir: dir, mp: mp, log: slog.New(slog.NewTextHandler(&logged, nil)),
				logPath: "/var/log/dmfs.log", summary: &summary}

			code := end.close(c.sum)
			assert.Equal(t, c.code, code)
			assert.Equal(t, 1, client.closed)
			assert.Equal(t, c.finalise, client.finalise, "finalise_write")
			for _, s := range c.log {
				assert.Contains(t, logged.String(), s)
			}
			if c.log == nil {
				assert.Empty(t, logged.String(), "the session logs its own close, once")
			}
			_, err := os.Lstat(dir.File(sessionRecordName(mp)))
			assert.Equal(t, c.sessionRecord, err == nil, "session record kept: %v", err)

			res, ok := readResultRecord(dir, mp, func(s string) { t.Error(s) })
			if c.sum == nil {
				assert.False(t, ok, "a read-only mount leaves no result")
				assert.Empty(t, summary.String())
				return
			}
			require.True(t, ok)
			assert.Equal(t, c.code == exitOK, res.Finalised)
			assert.Equal(t, c.code, res.code())
			assert.Equal(t, os.Getpid(), res.PID)
			assert.Equal(t, "/var/log/dmfs.log", res.Log)
			assert.Contains(t, summary.String(), "dmfs mount: writes ")
		})
	}
}

func TestResultRecordRoundTripAndFit(t *testing.T) {
	dir := openStateDir(t)
	mp := "/mnt/w"
	_, ok := readResultRecord(dir, mp, func(s string) { t.Error(s) })
	assert.False(t, ok, "none yet")

	var sum fs.WriteSummary
	for i := range 250 {
		sum.Failed = append(sum.Failed, fs.FailedUpload{Key: fmt.Sprintf("ds/%04d/%s", i, strings.Repeat("k", 600)),
			Err: errors.New(strings.Repeat("e", 2000))})
		sum.NotUploaded = append(sum.NotUploaded, fmt.Sprintf("ds/open%04d", i))
	}
	res := newWriteResult(sum, session.WriteReport{}, false, nil)
	assert.Len(t, res.Failed, maxResultKeys)
	assert.Equal(t, 150, res.FailedMore)
	assert.Len(t, res.NotUploaded, maxResultKeys)
	require.NoError(t, writeResultRecord(dir, mp, res))

	fi, err := os.Lstat(dir.File(resultRecordName(mp)))
	require.NoError(t, err)
	assert.Less(t, fi.Size(), int64(statedir.MaxRecord))
	got, ok := readResultRecord(dir, mp, func(s string) { t.Error(s) })
	require.True(t, ok, "the record fits what ReadRecord accepts")
	assert.Equal(t, 250, len(got.Failed)+got.FailedMore, "keys dropped to fit are counted")
	assert.Equal(t, 250, len(got.NotUploaded)+got.NotUploadedMore)
	assert.LessOrEqual(t, len(got.Failed[0].Key), maxResultText+3)
	assert.False(t, got.Finalised)

	small := writeResult{PID: 42, Done: true, Finalised: true, Uploaded: 7, Log: "/l"}
	require.NoError(t, writeResultRecord(dir, mp, small))
	got, ok = readResultRecord(dir, mp, func(s string) { t.Error(s) })
	require.True(t, ok)
	assert.Equal(t, small, got)

	// Not a record of ours: ignored with a warning.
	require.NoError(t, dir.WriteRecord(resultRecordName(mp), []byte(`{"pid": 0}`)))
	var warned []string
	_, ok = readResultRecord(dir, mp, func(s string) { warned = append(warned, s) })
	assert.False(t, ok)
	assert.NotEmpty(t, warned)
	require.NoError(t, os.Chmod(dir.File(resultRecordName(mp)), 0o644))
	warned = nil
	_, ok = readResultRecord(dir, mp, func(s string) { warned = append(warned, s) })
	assert.False(t, ok)
	require.Len(t, warned, 1)
	assert.Contains(t, warned[0], "open to group or others")
}

func TestUnmountOutcome(t *testing.T) {
	many := writeResult{PID: 9, Done: true, Uploaded: 1, FailedMore: 5}
	for i := range 30 {
		many.Failed = append(many.Failed, failedKey{Key: fmt.Sprintf("ds/k%02d", i), Error: "500"})
	}
	cases := []struct {
		name  string
		res   writeResult
		found bool
		code  int
		want  []string
		lines int // 0: not checked
	}{
		{"no record", writeResult{}, false, exitWrite, []string{"NOT known to be finalised", "/log"}, 1},
		{"killed before finishing", writeResult{PID: 9}, true, exitWrite, []string{"NOT finalised", "pid 9", "killed"}, 0},
		{"finalised", writeResult{PID: 9, Done: true, Finalised: true, Uploaded: 12}, true, exitOK,
			[]string{"writes finalised: 12 files uploaded"}, 1},
		{"failed keys named", writeResult{PID: 9, Done: true, Uploaded: 2, Discarded: 2, CloseError: "x",
			Failed: []failedKey{{Key: "ds/a\nb", Error: "gateway\x1b[31m 500"}}, NotUploaded: []string{"ds/c.partial"}}, true, exitWrite,
			[]string{"1 failed, 1 never uploaded, 2 discarded", `failed: "ds/a\nb": gateway [31m 500`, `never uploaded: "ds/c.partial"`, "see /log"}, 0},
		{"capped at 20 keys", many, true, exitWrite, []string{"35 failed", "... and 15 more"}, 1 + summaryLines + 1 + 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			lines, code := unmountOutcome(c.res, c.found, "/log")
			assert.Equal(t, c.code, code)
			text := strings.Join(lines, "\n")
			for _, s := range c.want {
				assert.Contains(t, text, s)
			}
			if c.lines > 0 {
				assert.Len(t, lines, c.lines, text)
			}
			for _, l := range lines {
				assert.NotContains(t, l, "\n", "one line each: keys are quoted, errors cleaned")
				assert.NotContains(t, l, "\x1b")
			}
		})
	}
}

// TestUnmountWritesWaitsAndReports plays the mount's process with a child
// that lives a little, and its outcome with a record written meanwhile.
func TestUnmountWritesWaitsAndReports(t *testing.T) {
	old, oldEvery := uploadNoticeAfter, uploadNoticeEvery
	uploadNoticeAfter, uploadNoticeEvery = 50*time.Millisecond, 200*time.Millisecond
	t.Cleanup(func() { uploadNoticeAfter, uploadNoticeEvery = old, oldEvery })
	cases := []struct {
		name   string
		result *writeResult // written while the process runs; nil: it stays pending (killed)
		code   int
		want   []string
	}{
		{"finalised", &writeResult{Done: true, Finalised: true, Uploaded: 4}, exitOK, []string{"writes finalised: 4 files uploaded"}},
		{"not finalised", &writeResult{Done: true, Failed: []failedKey{{Key: "ds/x", Error: "boom"}}}, exitWrite,
			[]string{"writes NOT finalised", `"ds/x": boom`}},
		{"killed", nil, exitWrite, []string{"ended before it finished"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := openStateDir(t)
			mp := t.TempDir()
			proc := exec.Command("sleep", "0.6")
			require.NoError(t, proc.Start())
			t.Cleanup(func() { proc.Wait() })
			pending := writeResult{PID: proc.Process.Pid, Log: "/the/log"}
			require.NoError(t, writeResultRecord(dir, mp, pending))
			if c.result != nil {
				r := *c.result
				r.PID = pending.PID
				require.NoError(t, writeResultRecord(dir, mp, r))
			}
			var stderr bytes.Buffer
			code := unmountWrites(context.Background(), dir, mp, pending, &leftoverOptions{}, &stderr)
			assert.Equal(t, c.code, code, stderr.String())
			assert.Contains(t, stderr.String(), "dmfs unmount: waiting for uploads to finish (see /the/log)")
			for _, s := range c.want {
				assert.Contains(t, stderr.String(), s)
			}
			_, err := os.Lstat(dir.File(resultRecordName(mp)))
			assert.ErrorIs(t, err, os.ErrNotExist, "the record is removed once read")
		})
	}
}

func TestWaitExit(t *testing.T) {
	proc := exec.Command("sleep", "5")
	require.NoError(t, proc.Start())
	t.Cleanup(func() { proc.Process.Kill(); proc.Wait() })
	start := time.Now()
	assert.False(t, waitExit(context.Background(), proc.Process.Pid, 100*time.Millisecond, nil), "the limit")
	assert.Less(t, time.Since(start), 2*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.False(t, waitExit(ctx, proc.Process.Pid, 0, nil), "the context")
	assert.True(t, waitExit(context.Background(), goneProcess(t), 0, nil))
}

// A stale result from an earlier mount is removed when a mount starts, so
// that `dmfs unmount` never reports it as this mount's.
func TestMountRemovesAnEarlierResult(t *testing.T) {
	dir := openStateDir(t)
	g := newFakeGateway(t) // answers 204 to everything: the session cannot be acquired
	mp := t.TempDir()
	require.NoError(t, writeResultRecord(dir, mp, writeResult{PID: 1, Done: true, Finalised: true}))
	code, _, stderr := runArgs(t, map[string]string{"DATAMESH_TOKEN": testToken}, "mount", "--foreground", "--service", g.URL, mp)
	assert.NotEqual(t, exitOK, code, stderr)
	_, err := os.Lstat(dir.File(resultRecordName(mp)))
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// `dmfs unmount` of a write mount that was unmounted by other means
// (umount -l after a SIGKILL) reports what its process left.
func TestUnmountOfAnUnmountedWriteMountReportsItsOutcome(t *testing.T) {
	dead := exec.Command("true")
	require.NoError(t, dead.Run())
	cases := []struct {
		name     string
		record   *writeResult
		code     int
		reported bool
		want     string
	}{
		{"killed while pending", &writeResult{PID: dead.Process.Pid}, exitWrite, true, "ended before it finished"},
		{"not finalised", &writeResult{PID: dead.Process.Pid, Done: true, Failed: []failedKey{{Key: "ds/k", Error: "500"}}}, exitWrite, true, `"ds/k": 500`},
		{"finalised", &writeResult{PID: dead.Process.Pid, Done: true, Finalised: true, Uploaded: 2}, exitOK, false, "writes finalised: 2 files uploaded"},
		{"no record", nil, 0, false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := openStateDir(t)
			mp := t.TempDir()
			if c.record != nil {
				require.NoError(t, writeResultRecord(dir, mp, *c.record))
			}
			var stderr bytes.Buffer
			code, reported := reportUnmountedWrites(context.Background(), dir, mp, &leftoverOptions{}, &stderr)
			assert.Equal(t, c.reported, reported, stderr.String())
			if reported {
				assert.Equal(t, c.code, code)
			}
			if c.want != "" {
				assert.Contains(t, stderr.String(), c.want)
			}
			_, err := os.Lstat(dir.File(resultRecordName(mp)))
			assert.ErrorIs(t, err, os.ErrNotExist, "the record is removed once read")
		})
	}
}
