package csi

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/oceanum-dmfs/dmfs/internal/statedir"
)

// record is what the plugin keeps per published target, so that a
// restarted plugin finds the mounts made before it. It holds no token.
type record struct {
	VolumeID    string `json:"volume_id"`
	Target      string `json:"target"`
	Fingerprint string `json:"fingerprint"` // of the volume's mount flags
	Write       bool   `json:"write"`
	// PID and Start name the mount's process (Start as in processStart);
	// 0 while it starts.
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
}

const (
	recordExt = ".volume"
	logExt    = ".log"
)

func recordName(target string) string { return statedir.NameFor(target, recordExt) }
func logName(target string) string    { return statedir.NameFor(target, logExt) }

// records are the plugin's records in its state folder.
type records struct{ dir *statedir.Dir }

// read returns the record of target; ok is false when there is none. A
// record that is not a private file of ours, or not one of our records, is
// an error: it is never acted on.
func (rs records) read(target string) (rec record, ok bool, err error) {
	b, err := rs.dir.ReadRecord(recordName(target))
	if errors.Is(err, os.ErrNotExist) {
		return record{}, false, nil
	}
	if err != nil {
		return record{}, false, err
	}
	if err := json.Unmarshal(b, &rec); err != nil || rec.Target != target || rec.VolumeID == "" {
		return record{}, false, fmt.Errorf("%s: not a dmfs csi volume record for %s; remove it", rs.dir.File(recordName(target)), target)
	}
	return rec, true, nil
}

func (rs records) write(rec record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return rs.dir.WriteRecord(recordName(rec.Target), append(b, '\n'))
}

func (rs records) remove(target string) error {
	err := rs.dir.Remove(recordName(target))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// all returns every record in the folder; those that cannot be read are
// returned as errors, one per file.
func (rs records) all() ([]record, []error) {
	entries, err := os.ReadDir(rs.dir.Path())
	if err != nil {
		return nil, []error{err}
	}
	var out []record
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, recordExt) || strings.HasPrefix(name, ".") {
			continue
		}
		b, err := rs.dir.ReadRecord(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var rec record
		if err := json.Unmarshal(b, &rec); err != nil || rec.Target == "" || recordName(rec.Target) != name {
			errs = append(errs, fmt.Errorf("%s: not a dmfs csi volume record", rs.dir.File(name)))
			continue
		}
		out = append(out, rec)
	}
	return out, errs
}
