// Package csi is dmfs's Kubernetes CSI node plugin (`dmfs csi`): the CSI v1
// Identity and Node services on a unix socket, so that a pod declares a
// Datamesh volume (an inline ephemeral volume, or a static
// PersistentVolume) and the kubelet asks this plugin to mount it.
//
// # Decisions
//
// One `dmfs mount` process per volume, not an in-process mount. A FUSE
// server must never touch its own mount (fork, exec or epoll from the
// process that serves it can deadlock), and the plugin unmounts, stats and
// removes targets all day; a process per volume also gives each volume its
// own session, cache budget (debug.SetMemoryLimit is per process), log and
// failure domain, and lets a mount outlive a restart of the plugin. It is
// the same binary (os.Executable) in the background-mount mode `dmfs mount`
// itself uses: every mount flag, state file, leftover-session close and
// readiness report is the one `dmfs mount` has, so this package only maps
// volumeAttributes to mount flags (see attributes.go) and never parses them.
//
// The token comes from the NodePublishVolume secrets (key "token", a
// Kubernetes Secret) and goes to the mount process through a pipe (the
// Launcher), never through its argv, environment or a file; it is never in
// an attribute, a record or a log line. The plugin keeps no token after the
// call: a mount whose process died is remounted at the next
// NodePublishVolume, which carries the secret again (the CSIDriver asks the
// kubelet to republish periodically with requiresRepublish).
//
// State. Each published target has a record in the plugin's private state
// folder (internal/statedir: owned by the plugin's user, mode 0700, files
// opened without following symlinks, records checked for owner and mode):
// the volume id, a fingerprint of its mount flags, and the pid and start
// time of its process. The records and the kernel's mount table are the
// whole truth: a restarted plugin reads them on demand, so mounts made
// before it keep serving and are found again, and a record never decides
// where a token is sent. The mount processes keep their own state
// (pid files, session records, locks) in the same folder, so a remount
// after a crash closes the session the dead process left open.
//
// Idempotence. NodePublishVolume on a target that serves the same volume
// with the same flags succeeds at once; on a dead mount (ENOTCONN after
// the process was killed) it detaches the dead mount and mounts again;
// NodeUnpublishVolume unmounts (lazily when files are still open), waits
// until the mount's process has closed its session and exited, and removes
// the target; on a target already gone it succeeds. Calls on one target
// are serialised: a second one while the first runs gets ABORTED, and the
// kubelet retries.
package csi
