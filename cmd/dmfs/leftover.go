package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/oceanum-dmfs/dmfs/session"
)

// sessionRecord is what a mount keeps beside its pid file while it holds a
// session, so that a session left open by a mount that was killed (SIGKILL,
// the OOM killer) is closed by the next `dmfs mount` or `dmfs unmount` of the
// same mount point instead of lingering until it expires. It holds no token.
type sessionRecord struct {
	Gateway string    `json:"gateway"`
	ID      string    `json:"id"`
	EndTime time.Time `json:"end_time"`
	PID     int       `json:"pid"`
}

func sessionRecordPath(mountpoint string) string { return stateFile(mountpoint, ".session") }

// writeSessionRecord replaces the mount point's record atomically.
func writeSessionRecord(mountpoint string, rec sessionRecord) error {
	if err := os.MkdirAll(stateDir(), 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	p := sessionRecordPath(mountpoint)
	tmp := fmt.Sprintf("%s.%d.tmp", p, os.Getpid())
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// leftoverSession returns the record of a session left open at mountpoint by
// a process that is gone. A record of a live process, or an unreadable one,
// is not a leftover; one whose session has expired is removed.
func leftoverSession(mountpoint string) (sessionRecord, bool) {
	b, err := os.ReadFile(sessionRecordPath(mountpoint))
	if err != nil {
		return sessionRecord{}, false
	}
	var rec sessionRecord
	if json.Unmarshal(b, &rec) != nil || rec.ID == "" || rec.PID <= 0 || processAlive(rec.PID) {
		return sessionRecord{}, false
	}
	if !rec.EndTime.IsZero() && time.Now().After(rec.EndTime) {
		os.Remove(sessionRecordPath(mountpoint))
		return sessionRecord{}, false
	}
	return rec, true
}

// closeLeftoverSession closes rec, the session a killed mount left at
// mountpoint (see leftoverSession), with client, which talks to gateway, and
// forgets the record unless the close failed.
func closeLeftoverSession(ctx context.Context, client *session.Client, gateway, mountpoint string, rec sessionRecord, log *slog.Logger) {
	if rec.Gateway != gateway {
		log.Warn("a previous mount here was killed with its session open; that session is on another gateway "+
			"and will expire on its own", "session", rec.ID, "gateway", rec.Gateway, "end_time", rec.EndTime)
	} else {
		cctx, cancel := context.WithTimeout(ctx, sessionCloseTimeout)
		err := client.CloseSession(cctx, rec.ID)
		cancel()
		if err != nil {
			log.Warn("a previous mount here was killed with its session open; closing it failed, it will expire",
				"session", rec.ID, "end_time", rec.EndTime, "err", err)
			return // kept: the next run tries again
		}
		log.Info("closed the session a killed mount left open", "session", rec.ID, "pid", rec.PID)
	}
	if err := os.Remove(sessionRecordPath(mountpoint)); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("removing the session record", "err", err)
	}
}
