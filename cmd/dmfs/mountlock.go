package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/oceanum-dmfs/dmfs/internal/mountinfo"
	"github.com/oceanum-dmfs/dmfs/internal/statedir"
)

// mountLockWait bounds how long a mount waits for another dmfs process that
// holds the mount point's lock but has not mounted (yet, or any more): one
// still acquiring its session, or one closing its session after an unmount.
var mountLockWait = 10 * time.Second

// mountLockPoll is how often a waiting mount looks again.
const mountLockPoll = 50 * time.Millisecond

// lockMountpoint makes "is this mount point free?" and "mount it" one step:
// it takes an exclusive lock in the state folder, keyed by the mount point's
// resolved path (so two names of one folder share a lock), which the mount
// holds from its check until it exits. The lock also makes the mount point's
// pid file and session record belong to one process.
//
// When another process holds the lock and mp is mounted, the answer is at
// once "already a mount point"; when it holds the lock without a mount, this
// waits up to mountLockWait for it to mount (then "already a mount point")
// or to let go. Both refusals match errMountPoint. onBusy, if not nil, is
// called after each refused attempt (tests use it to release the lock).
func lockMountpoint(ctx context.Context, dir *statedir.Dir, mp string, onBusy func()) (*statedir.Lock, error) {
	key := mp
	if r, err := filepath.EvalSymlinks(mp); err == nil {
		key = r
	}
	name := stateName(key, ".lock")
	deadline := time.Now().Add(mountLockWait)
	for {
		lock, err := dir.TryLock(name)
		if err == nil {
			return lock, nil
		}
		var held *statedir.LockedError
		if !errors.As(err, &held) {
			return nil, fmt.Errorf("mount point lock: %w", err)
		}
		holder := "another dmfs process"
		if held.PID > 0 {
			holder = fmt.Sprintf("dmfs pid %d", held.PID)
		}
		if m, ok, _ := mountinfo.Find(key); ok {
			return nil, fmt.Errorf("%w: %s is already a mount point (%s, held by %s); unmount it first",
				errMountPoint, mp, m.FSType, holder)
		}
		if onBusy != nil {
			onBusy()
		}
		if !time.Now().Before(deadline) {
			return nil, fmt.Errorf("%w: %s is already being mounted (or unmounted) by %s; wait for it, or unmount it first",
				errMountPoint, mp, holder)
		}
		t := time.NewTimer(mountLockPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}
