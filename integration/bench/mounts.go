package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/oceanum-dmfs/dmfs/internal/mountinfo"
)

// mount is one FUSE mount made by the benchmark; close undoes it whatever
// state it is in.
type mount interface {
	dir() string
	close() error
}

// dmfsMount is a `dmfs mount` daemon with its own runtime dir, so that its
// pid file is the only one there.
type dmfsMount struct {
	bin, mnt, runtime string
	env               []string
}

// mountDMFS mounts with the given cache size. flags (the user's) come
// first, so that the benchmark's own flags and extra (--write and its
// flags) after them win.
func mountDMFS(ctx context.Context, bin, service, token, mnt, runtime string, cacheBytes int64, logFile string,
	flags []string, extra ...string) (*dmfsMount, error) {
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(runtime, 0o700); err != nil {
		return nil, err
	}
	m := &dmfsMount{bin: bin, mnt: mnt, runtime: runtime,
		env: append(os.Environ(), "XDG_RUNTIME_DIR="+runtime, "DATAMESH_TOKEN="+token)}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	args := append(append([]string{"mount"}, flags...), "--service", service,
		"--cache-size", strconv.FormatInt(cacheBytes>>20, 10)+"MiB", "--log-file", logFile)
	args = append(append(args, extra...), mnt)
	cmd := exec.CommandContext(cctx, bin, args...)
	cmd.Env = m.env
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = m.close()
		return nil, fmt.Errorf("dmfs mount %s: %w: %s", mnt, err, strings.TrimSpace(string(out)))
	}
	return m, nil
}

func (m *dmfsMount) dir() string { return m.mnt }

// pid is the mount daemon's pid, from its pid file.
func (m *dmfsMount) pid() (int, error) {
	files, _ := filepath.Glob(filepath.Join(m.runtime, "dmfs", "*.pid"))
	if len(files) != 1 {
		return 0, fmt.Errorf("want one pid file under %s, found %d", m.runtime, len(files))
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// peakMemory is the daemon's peak memory, in bytes: its VmHWM plus the most its cache's
// memory file held (values kept there are not in the RSS), from `dmfs status --json`.
func (m *dmfsMount) peakMemory() (int64, error) {
	pid, err := m.pid()
	if err != nil {
		return 0, err
	}
	rss, err := vmHWM(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := m.status(ctx)
	if err != nil {
		return 0, err
	}
	if st.Cache == nil {
		return 0, fmt.Errorf("dmfs status: %s reports no cache", m.mnt)
	}
	return rss + st.Cache.MemoryFilePeakBytes, nil
}

func vmHWM(statusPath string) (int64, error) {
	f, err := os.Open(statusPath)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			fields := strings.Fields(v)
			if len(fields) != 2 || fields[1] != "kB" {
				return 0, fmt.Errorf("%s: unexpected VmHWM line %q", statusPath, sc.Text())
			}
			kb, err := strconv.ParseInt(fields[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: %w", statusPath, err)
			}
			return kb << 10, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s has no VmHWM line", statusPath)
}

// hwmWatch polls VmHWM of a process until it is stopped and keeps the
// largest value read: the peak RSS of a process that may exit before the
// end (a --write mount's daemon exits at the end of `dmfs unmount`, after
// its last uploads).
type hwmWatch struct {
	stop, done chan struct{}
	peak       int64
}

func watchHWM(statusPath string, every time.Duration) *hwmWatch {
	w := &hwmWatch{stop: make(chan struct{}), done: make(chan struct{})}
	read := func() {
		if v, err := vmHWM(statusPath); err == nil && v > w.peak {
			w.peak = v
		}
	}
	go func() {
		defer close(w.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			read()
			select {
			case <-w.stop:
				read()
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// Stop ends the polling and returns the peak, 0 if none was read.
func (w *hwmWatch) Stop() int64 {
	close(w.stop)
	<-w.done
	return w.peak
}

// unmount runs `dmfs unmount` with the time cap and times it. For a
// --write mount it returns once every upload is done and the session is
// finalised; exit status 8 says the writes were not finalised.
func (m *dmfsMount) unmount(ctx context.Context, limit time.Duration) (timed, error) {
	return runTimedEnv(ctx, limit, m.env, true, m.bin, "unmount", m.mnt)
}

func (m *dmfsMount) close() error {
	pid, pidErr := m.pid()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, m.bin, "unmount", m.mnt)
	cmd.Env = m.env
	out, err := cmd.CombinedOutput()
	if err == nil && !isMounted(m.mnt) {
		return nil
	}
	// The polite way failed: detach lazily and end the daemon by its pid.
	_ = exec.Command("fusermount3", "-u", "-z", m.mnt).Run()
	if pidErr == nil {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	if err == nil {
		err = errors.New("still mounted")
	}
	return fmt.Errorf("dmfs unmount %s: %w: %s", m.mnt, err, strings.TrimSpace(string(out)))
}

// rcloneMount is a foreground `rclone mount` child process.
type rcloneMount struct {
	mnt  string
	cmd  *exec.Cmd
	done chan struct{}
}

// mountRclone mounts the gateway's zarr URL of one datasource with rclone's
// http backend, configured by environment only so that the token is not in
// argv. cacheDir empty means rclone's default VFS settings.
func mountRclone(ctx context.Context, rclone, zarrURL, token, session, mnt, cacheDir, logFile string) (*rcloneMount, error) {
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return nil, err
	}
	args := []string{"mount", ":http:", mnt, "--read-only", "--config", "/dev/null", "--log-file", logFile}
	if cacheDir != "" {
		args = append(args, "--vfs-cache-mode", "full", "--cache-dir", cacheDir)
	}
	cmd := exec.Command(rclone, args...)
	cmd.Env = append(os.Environ(),
		"RCLONE_HTTP_URL="+zarrURL,
		"RCLONE_HTTP_HEADERS="+rcloneHeaders(token, session))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start rclone mount: %w", err)
	}
	m := &rcloneMount{mnt: mnt, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(m.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for !isMounted(mnt) {
		select {
		case <-m.done:
			return nil, fmt.Errorf("rclone mount exited before the mount was ready; see %s", logFile)
		case <-ctx.Done():
			_ = m.close()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = m.close()
			return nil, fmt.Errorf("rclone mount not ready after 30 s; see %s", logFile)
		}
	}
	return m, nil
}

// rcloneHeaders is the --http-headers value: comma-separated name,value
// pairs (rclone's CommaSepList, CSV-quoted when a value holds a comma).
func rcloneHeaders(token, session string) string {
	q := func(s string) string {
		if strings.ContainsAny(s, ",\"") {
			return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
		}
		return s
	}
	return strings.Join([]string{"X-DATAMESH-TOKEN", q(token), "Authorization", q("Token " + token),
		"X-DATAMESH-SESSIONID", q(session)}, ",")
}

func (m *rcloneMount) dir() string { return m.mnt }

func (m *rcloneMount) close() error {
	err := exec.Command("fusermount3", "-u", m.mnt).Run()
	select {
	case <-m.done:
		return err
	case <-time.After(10 * time.Second):
	}
	_ = exec.Command("fusermount3", "-u", "-z", m.mnt).Run()
	_ = m.cmd.Process.Kill()
	<-m.done
	return errors.New("rclone did not exit after unmount; killed")
}

// isMounted tells whether path is a mount point now.
func isMounted(path string) bool {
	_, ok, err := mountinfo.Find(path)
	return err == nil && ok
}

// timed is one timed command.
type timed struct {
	Seconds float64
	Capped  bool    // killed at the time cap
	CPU     float64 // the machine's busy CPU-seconds meanwhile (-1: unknown)
}

// runTimed runs argv, discarding stdout, and kills it at cap.
func runTimed(ctx context.Context, limit time.Duration, argv ...string) (timed, error) {
	return runTimedEnv(ctx, limit, nil, false, argv...)
}

// runTimedEnv is runTimed with an environment (nil: this process's), and
// stdout kept for the error message when keepStdout.
func runTimedEnv(ctx context.Context, limit time.Duration, env []string, keepStdout bool, argv ...string) (timed, error) {
	cctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(cctx, argv[0], argv[1:]...)
	cmd.Env = env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if keepStdout {
		cmd.Stdout = &stderr
	}
	busy, start := machineBusy(), time.Now()
	err := cmd.Run()
	t := timed{Seconds: time.Since(start).Seconds(), CPU: busySince(busy)}
	if cctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
		t.Capped = true
		return t, nil
	}
	if err != nil {
		return t, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, firstLines(stderr.String(), 3))
	}
	return t, nil
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(strings.TrimSpace(s), "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "; ")
}

// treeBytes sums the sizes of the regular files under dir: all of them, and
// the chunks only (dmfs serves metadata files re-encoded from .zmetadata,
// equal as JSON but not byte for byte).
func treeBytes(dir string) (total, chunks int64, err error) {
	err = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
			if !isMetadataKey(d.Name()) {
				chunks += info.Size()
			}
		}
		return nil
	})
	return total, chunks, err
}
