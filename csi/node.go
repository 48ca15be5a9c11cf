package csi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// How long an unpublish waits for a mount's process to close its session
// and exit: a read-only mount closes it within 5 s (cmd/dmfs's
// sessionCloseTimeout); a write mount first finishes its uploads, for as
// long as the call's deadline allows, and the kubelet's retry waits again.
const (
	readOnlyExitWait = 10 * time.Second
	writeExitWait    = 90 * time.Second
	// retireWait bounds the wait for the process of a mount being replaced.
	retireWait = 10 * time.Second
)

// NodeGetInfo names the node; dmfs volumes have no topology and no limit.
func (d *Driver) NodeGetInfo(context.Context, *csipb.NodeGetInfoRequest) (*csipb.NodeGetInfoResponse, error) {
	return &csipb.NodeGetInfoResponse{NodeId: d.opt.NodeID}, nil
}

// NodeGetCapabilities offers none: no staging (nothing to attach or format),
// no stats, no expansion.
func (d *Driver) NodeGetCapabilities(context.Context, *csipb.NodeGetCapabilitiesRequest) (*csipb.NodeGetCapabilitiesResponse, error) {
	return &csipb.NodeGetCapabilitiesResponse{}, nil
}

// checkTarget checks the volume id and target path every node call needs.
func checkTarget(id, target string) error {
	switch {
	case id == "":
		return status.Error(codes.InvalidArgument, "volume_id is required")
	case target == "":
		return status.Error(codes.InvalidArgument, "target_path is required")
	case !filepath.IsAbs(target):
		return status.Errorf(codes.InvalidArgument, "target_path %q is not absolute", target)
	}
	return nil
}

// NodePublishVolume mounts the volume at the target path (see the package
// comment for what a second call does).
func (d *Driver) NodePublishVolume(ctx context.Context, req *csipb.NodePublishVolumeRequest) (*csipb.NodePublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if err := checkTarget(id, target); err != nil {
		return nil, err
	}
	readerOnly, err := checkCapability(req.GetVolumeCapability())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	spec, err := specFromAttributes(req.GetVolumeContext(), readerOnly || req.GetReadonly())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	token := strings.TrimSpace(req.GetSecrets()[TokenKey])
	if token == "" {
		return nil, status.Errorf(codes.InvalidArgument,
			"no Datamesh token: the volume's nodePublishSecretRef must name a Secret with the key %q", TokenKey)
	}
	target = filepath.Clean(target)
	release, ok := d.claim(target)
	if !ok {
		return nil, status.Errorf(codes.Aborted, "another call on %s is in progress", target)
	}
	defer release()
	pod := req.GetVolumeContext()[kubeletPrefix+"pod.namespace"] + "/" + req.GetVolumeContext()[kubeletPrefix+"pod.name"]
	if err := d.publish(ctx, id, target, pod, spec, token); err != nil {
		return nil, err
	}
	return &csipb.NodePublishVolumeResponse{}, nil
}

// checkCapability accepts mount access with any access mode; readerOnly
// reports a reader-only mode.
func checkCapability(c *csipb.VolumeCapability) (readerOnly bool, err error) {
	if c == nil {
		return false, errors.New("volume_capability is required")
	}
	if c.GetBlock() != nil {
		return false, errors.New("dmfs volumes are filesystems: block access is not supported")
	}
	m := c.GetMount()
	if m == nil {
		return false, errors.New("volume_capability must have access_type mount")
	}
	if len(m.GetMountFlags()) > 0 {
		return false, fmt.Errorf("mount options %q are not supported: set volumeAttributes instead", m.GetMountFlags())
	}
	switch c.GetAccessMode().GetMode() {
	case csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, csipb.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
		return true, nil
	case csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, csipb.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csipb.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER, csipb.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER,
		csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER:
		return false, nil
	default:
		return false, errors.New("volume_capability.access_mode is required")
	}
}

// claim marks target busy; ok is false when a call on it is in progress.
func (d *Driver) claim(target string) (release func(), ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.busy[target] {
		return nil, false
	}
	d.busy[target] = true
	return func() {
		d.mu.Lock()
		delete(d.busy, target)
		d.mu.Unlock()
	}, true
}

// publish mounts spec at target for volume id; pod ("namespace/name", from
// the kubelet's attributes) is only for the log.
func (d *Driver) publish(ctx context.Context, id, target, pod string, spec mountSpec, token string) error {
	st, err := inspectTarget(target)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	rec, hasRec, err := d.recs.read(target)
	if err != nil {
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	if st.mounted && !st.dmfs {
		return status.Errorf(codes.FailedPrecondition, "%s is already a mount point, not of dmfs", target)
	}
	if st.mounted && !st.dead && hasRec && rec.alive() {
		switch {
		case rec.VolumeID != id:
			return status.Errorf(codes.FailedPrecondition, "%s serves another volume (%s)", target, rec.VolumeID)
		case rec.Fingerprint != spec.fingerprint():
			return status.Errorf(codes.AlreadyExists, "volume %s is already published at %s with other attributes or access", id, target)
		}
		return nil // already published: nothing to do
	}
	if st.mounted || hasRec {
		if err := d.retire(ctx, target, st, rec, hasRec); err != nil {
			return err
		}
	}

	created := false
	if fi, err := os.Stat(target); errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir(target, 0o750); err != nil {
			return status.Errorf(codes.Internal, "creating %s: %v", target, err)
		}
		created = true
	} else if err != nil {
		return status.Errorf(codes.Internal, "%s: %v", target, err)
	} else if !fi.IsDir() {
		return status.Errorf(codes.FailedPrecondition, "%s is not a directory", target)
	}
	fail := func(err error) error {
		d.recs.remove(target)
		if created {
			os.Remove(target)
		}
		return err
	}
	logf, err := d.dir.OpenAppend(logName(target))
	if err != nil {
		return fail(status.Errorf(codes.Internal, "the mount's log file: %v", err))
	}
	defer logf.Close()
	// Written before the process starts, so that a plugin that dies while
	// it starts leaves a record that a later call acts on.
	rec = record{VolumeID: id, Target: target, Fingerprint: spec.fingerprint(), Write: spec.write}
	if err := d.recs.write(rec); err != nil {
		return fail(status.Errorf(codes.Internal, "writing the volume record: %v", err))
	}
	flags := append(append([]string(nil), spec.flags...), "--allow-other")
	if d.opt.MountLogLevel != "" {
		flags = append(flags, "--log-level="+d.opt.MountLogLevel)
	}
	cmd, err := d.opt.Launch(ctx, flags, target, token, logf)
	if err != nil {
		var me *MountError
		switch {
		case errors.As(err, &me):
			return fail(status.Errorf(me.grpcCode(), "%v (log: %s)", me, d.dir.File(logName(target))))
		case ctx.Err() != nil:
			return fail(status.FromContextError(ctx.Err()).Err())
		default:
			return fail(status.Errorf(codes.Internal, "starting dmfs mount: %v", err))
		}
	}
	c := d.supervise(target, cmd)
	rec.PID = c.pid
	rec.Start, _ = processStart(c.pid)
	if err := d.recs.write(rec); err != nil {
		// Without its record a restarted plugin could not tell this
		// mount's process: undo the mount rather than lose track of it.
		c.stopping.Store(true)
		unmountTarget(target)
		return fail(status.Errorf(codes.Internal, "writing the volume record: %v", err))
	}
	d.log.Info("published", "volume_id", id, "pod", pod, "target", target, "pid", c.pid, "write", spec.write,
		"log", d.dir.File(logName(target)))
	return nil
}

// supervise reaps a mount process this plugin started and logs how it
// ended.
func (d *Driver) supervise(target string, cmd *exec.Cmd) *child {
	c := &child{pid: cmd.Process.Pid, done: make(chan struct{})}
	d.mu.Lock()
	d.children[target] = c
	d.mu.Unlock()
	go func() {
		cmd.Wait()
		c.code = cmd.ProcessState.ExitCode()
		defer close(c.done)
		attrs := []any{"target", target, "pid", c.pid, "exit", cmd.ProcessState.String(), "log", d.dir.File(logName(target))}
		switch {
		case !c.stopping.Load():
			d.log.Warn("a mount process ended on its own; the target fails (ENOTCONN) until NodePublishVolume remounts it", attrs...)
		case c.code == 8:
			d.log.Warn("a write mount ended with its writes NOT finalised; see its log", attrs...)
		case c.code != 0:
			d.log.Warn("a mount process failed as it ended", attrs...)
		default:
			d.log.Info("mount ended; its session is closed", attrs...)
		}
	}()
	return c
}

// child is a mount process this plugin started and reaps.
type child struct {
	pid      int
	done     chan struct{} // closed once reaped
	code     int           // exit status (-1: killed by a signal), set before done is closed
	stopping atomic.Bool   // set before the plugin unmounts it
}

// stopping marks target's child, if any, as being ended by the plugin.
func (d *Driver) stopping(target string) {
	d.mu.Lock()
	if c := d.children[target]; c != nil {
		c.stopping.Store(true)
	}
	d.mu.Unlock()
}

// retire removes what an earlier mount left at target before a new mount
// goes there: a dead mount (its process was killed), a mount without a
// record, a record without a mount. A process that is still running is
// waited for (it closes its session once unmounted), never killed: it may
// be finishing the uploads of a write mount.
func (d *Driver) retire(ctx context.Context, target string, st targetState, rec record, hasRec bool) error {
	if st.mounted {
		d.stopping(target)
		lazy, err := unmountTarget(target)
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		d.log.Info("replacing a mount that no longer serves", "target", target, "dead", st.dead, "detached", lazy)
	}
	if hasRec && rec.PID > 0 {
		if _, _, exited := d.waitExit(ctx, rec, retireWait); !exited {
			return status.Errorf(codes.Unavailable, "the previous mount's process at %s (pid %d) is still running; retry later", target, rec.PID)
		}
	}
	d.forget(target)
	if err := d.recs.remove(target); err != nil {
		return status.Errorf(codes.Internal, "removing the volume record: %v", err)
	}
	return nil
}

// forget drops target's child once it is reaped.
func (d *Driver) forget(target string) {
	d.mu.Lock()
	delete(d.children, target)
	d.mu.Unlock()
}

// waitExit waits, up to within and ctx, for the process rec names to end.
// For a child of this plugin the exit status is known.
func (d *Driver) waitExit(ctx context.Context, rec record, within time.Duration) (code int, known, exited bool) {
	d.mu.Lock()
	c := d.children[rec.Target]
	d.mu.Unlock()
	timer := time.NewTimer(within)
	defer timer.Stop()
	if c != nil && c.pid == rec.PID {
		select {
		case <-c.done:
			return c.code, true, true
		case <-timer.C:
		case <-ctx.Done():
		}
		return 0, false, false
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for rec.alive() {
		select {
		case <-tick.C:
		case <-timer.C:
			return 0, false, false
		case <-ctx.Done():
			return 0, false, false
		}
	}
	return 0, false, true
}

// NodeUnpublishVolume unmounts the target, waits until the mount's process
// has closed its session and exited, and removes the target.
func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csipb.NodeUnpublishVolumeRequest) (*csipb.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if err := checkTarget(id, target); err != nil {
		return nil, err
	}
	target = filepath.Clean(target)
	release, ok := d.claim(target)
	if !ok {
		return nil, status.Errorf(codes.Aborted, "another call on %s is in progress", target)
	}
	defer release()
	if err := d.unpublish(ctx, id, target); err != nil {
		return nil, err
	}
	return &csipb.NodeUnpublishVolumeResponse{}, nil
}

func (d *Driver) unpublish(ctx context.Context, id, target string) error {
	st, err := inspectTarget(target)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	rec, hasRec, err := d.recs.read(target)
	if err != nil {
		// Not acted on: its pid could name any process.
		d.log.Warn("volume record ignored", "target", target, "err", err)
		hasRec = false
	}
	if hasRec && rec.VolumeID != id {
		d.log.Warn("unpublishing a target recorded for another volume", "target", target, "volume_id", id, "recorded", rec.VolumeID)
	}
	if st.mounted {
		if !st.dmfs {
			return status.Errorf(codes.FailedPrecondition, "%s is a mount point, but not of dmfs: not unmounted", target)
		}
		d.stopping(target)
		lazy, err := unmountTarget(target)
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		if lazy {
			d.log.Warn("files were still open under the target: detached; the mount ends, and its session closes, when they are closed",
				"target", target)
		}
	}
	code, known := 0, false
	if hasRec && rec.PID > 0 {
		wait := readOnlyExitWait
		if rec.Write {
			wait = writeExitWait
		}
		var exited bool
		code, known, exited = d.waitExit(ctx, rec, wait)
		if !exited {
			what := "closing its session"
			if rec.Write {
				what = "finishing its uploads"
			}
			return status.Errorf(codes.Unavailable, "unmounted %s, but its process (pid %d) is still %s; retry", target, rec.PID, what)
		}
	}
	d.forget(target)
	if err := d.recs.remove(target); err != nil {
		return status.Errorf(codes.Internal, "removing the volume record: %v", err)
	}
	if !known || code == 0 {
		d.dir.Remove(logName(target))
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		if errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
			return status.Errorf(codes.FailedPrecondition, "%s is unmounted but not empty: not removed", target)
		}
		return status.Errorf(codes.Internal, "removing %s: %v", target, err)
	}
	return nil
}
