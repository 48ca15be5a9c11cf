package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/oceanum-dmfs/dmfs/internal/statedir"
	"github.com/oceanum-dmfs/dmfs/session"
)

// sessionRecord is what a mount keeps beside its pid file while it holds a
// session, so that a session left open by a mount that was killed (SIGKILL,
// the OOM killer) is closed by the next `dmfs mount` or `dmfs unmount` of the
// same mount point instead of lingering until it expires. It holds no token,
// and its gateway only says where the session is: the token goes only to the
// gateway configured now (see closeLeftoverSession).
type sessionRecord struct {
	Gateway string    `json:"gateway"`
	ID      string    `json:"id"`
	EndTime time.Time `json:"end_time"`
	PID     int       `json:"pid"`
}

func sessionRecordName(mountpoint string) string { return stateName(mountpoint, ".session") }

// writeSessionRecord replaces the mount point's record atomically.
func writeSessionRecord(dir *statedir.Dir, mountpoint string, rec sessionRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return dir.WriteRecord(sessionRecordName(mountpoint), append(b, '\n'))
}

// leftoverSession returns the record of a session left open at mountpoint by
// a process that is gone. A record of a live process is not a leftover; one
// whose session has expired is removed. A record that cannot be trusted (not
// a private file of ours, too large, not JSON) is ignored with a warning.
func leftoverSession(dir *statedir.Dir, mountpoint string, log *slog.Logger) (sessionRecord, bool) {
	name := sessionRecordName(mountpoint)
	b, err := dir.ReadRecord(name)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log.Warn("session record ignored", "err", err)
		}
		return sessionRecord{}, false
	}
	var rec sessionRecord
	if err := json.Unmarshal(b, &rec); err != nil || rec.ID == "" || rec.PID <= 0 {
		log.Warn("session record ignored: not a dmfs session record", "path", dir.File(name))
		return sessionRecord{}, false
	}
	if processAlive(rec.PID) {
		return sessionRecord{}, false
	}
	if !rec.EndTime.IsZero() && time.Now().After(rec.EndTime) {
		dir.Remove(name)
		return sessionRecord{}, false
	}
	return rec, true
}

// otherGateway says why a leftover session at another gateway than the one
// configured now is not closed: the record's gateway comes from a file, and
// the token goes only where the user points dmfs now.
func otherGateway(rec sessionRecord, gateway string) string {
	return fmt.Sprintf("a mount here was killed and left session %q open at %q, not at the gateway configured now (%q); "+
		"it was not closed, since dmfs sends the token only to the configured gateway; it expires at %s",
		rec.ID, rec.Gateway, gateway, rec.EndTime.Format(time.RFC3339))
}

// closeLeftoverSession closes rec, the session a killed mount left at
// mountpoint (see leftoverSession), with client, which talks to gateway,
// the gateway configured now, and forgets the record unless the close
// failed. A record naming another gateway is not acted on: the record is
// kept (it expires, or the next mount here replaces it).
func closeLeftoverSession(ctx context.Context, client *session.Client, gateway string, dir *statedir.Dir, mountpoint string, rec sessionRecord, log *slog.Logger) {
	if rec.Gateway != gateway {
		log.Warn(otherGateway(rec, gateway))
		return
	}
	cctx, cancel := context.WithTimeout(ctx, sessionCloseTimeout)
	err := client.CloseSession(cctx, rec.ID)
	cancel()
	if err != nil {
		log.Warn("a previous mount here was killed with its session open; closing it failed, it will expire",
			"session", rec.ID, "end_time", rec.EndTime, "err", err)
		return // kept: the next run tries again
	}
	log.Info("closed the session a killed mount left open", "session", rec.ID, "pid", rec.PID)
	if err := dir.Remove(sessionRecordName(mountpoint)); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("removing the session record", "err", err)
	}
}
