// Package mountstat is what a running mount says about itself: one
// Snapshot of its identity and live figures (cache, requests to Datamesh,
// uploads), taken by one function of the mount's, and served two ways from
// that same snapshot so that they never disagree: as JSON on a private unix
// socket for `dmfs status` (Serve, Fetch), and as Prometheus text for
// --metrics-addr (NewMetricsHandler). RequestCounter counts the HTTP
// requests the session client sends, by kind.
//
// It imports no other dmfs package: the mount fills a Snapshot from its
// parts.
package mountstat

import (
	"time"
)

// Version is the version of the `dmfs status --json` document; fields are
// only ever added within a version.
const Version = 1

// Snapshot is a mount at one moment. Counters only grow for the life of
// the mount; the others are what is now.
type Snapshot struct {
	Mountpoint string `json:"mountpoint"`
	PID        int    `json:"pid,omitempty"`
	Service    string `json:"service,omitempty"`
	Gateway    string `json:"gateway,omitempty"`
	Write      bool   `json:"write,omitempty"` // a --write mount
	// PassthroughMinBytes: chunks of at least this size are read by the
	// kernel straight from dmfs's memory (FUSE passthrough); 0: none is.
	PassthroughMinBytes int64     `json:"passthrough_min_bytes,omitempty"`
	Log                 string    `json:"log,omitempty"`     // where the mount logs; "" for a terminal
	Metrics             string    `json:"metrics,omitempty"` // the Prometheus endpoint's URL, when served
	Started             time.Time `json:"started,omitzero"`
	Session             Session   `json:"session,omitzero"`

	Cache    *Cache              `json:"cache,omitempty"`
	Requests map[string]Requests `json:"requests,omitempty"` // by kind: every kind of Kinds
	Uploads  *Uploads            `json:"uploads,omitempty"`  // --write mounts only
}

// Session is the Datamesh session the mount uses now (it changes at each
// renewal).
type Session struct {
	ID      string    `json:"id,omitempty"`
	EndTime time.Time `json:"end_time,omitzero"`
}

// Cache is the chunk cache.
type Cache struct {
	Bytes    int64 `json:"bytes"`     // held now
	MaxBytes int64 `json:"max_bytes"` // --cache-size
	Entries  int64 `json:"entries"`   // values held now
	// Counters. A hit is a read answered from memory (bytes, or a key known
	// missing); a miss had to fetch or wait for a fetch.
	Hits            int64 `json:"hits"`
	Misses          int64 `json:"misses"`
	Fetches         int64 `json:"fetches"`      // body fetches started, prefetches included
	FetchErrors     int64 `json:"fetch_errors"` // fetches that failed (not-found is not a failure)
	Heads           int64 `json:"heads"`        // size lookups (HEAD) started
	Prefetches      int64 `json:"prefetches"`   // readahead fetches started
	PrefetchDropped int64 `json:"prefetch_dropped"`
	Evictions       int64 `json:"evictions"`
	// MemoryFileBytes is what the cache's memory file holds now, and
	// MemoryFilePeakBytes the most it ever held: values are kept there, out
	// of the process's heap, and not counted in its RSS.
	MemoryFileBytes     int64 `json:"memory_file_bytes"`
	MemoryFilePeakBytes int64 `json:"memory_file_peak_bytes"`
	// Disk is the disk tier, on a mount with --cache-dir.
	Disk *DiskCache `json:"disk,omitempty"`
}

// DiskCache is the chunk cache's disk tier (--cache-dir). Its folder may be
// shared by several mounts: Bytes counts all of theirs, the counters this
// mount's.
type DiskCache struct {
	Bytes     int64 `json:"bytes"`     // the folder's size when this mount last counted it
	MaxBytes  int64 `json:"max_bytes"` // --cache-dir-size
	Hits      int64 `json:"hits"`      // chunks and sizes read from the disk instead of the gateway
	Writes    int64 `json:"writes"`    // chunks written to the disk
	Dropped   int64 `json:"dropped"`   // chunks not written (queue full, no room, an error)
	Evictions int64 `json:"evictions"` // entries removed to keep within the cap
	Corrupt   int64 `json:"corrupt"`   // damaged entries found, removed and fetched again
}

// Requests counts the HTTP requests of one kind sent to the Datamesh
// service and gateway, each retry included.
type Requests struct {
	Total    int64 `json:"total"`
	Errors   int64 `json:"errors"`    // no answer, or an error status other than 404
	InFlight int64 `json:"in_flight"` // sent, answer not yet read
}

// Uploads are a --write mount's uploads.
type Uploads struct {
	Pending       int64 `json:"pending"`   // queued or being sent
	InFlight      int64 `json:"in_flight"` // being sent
	Uploaded      int64 `json:"uploaded"`  // counter
	Failed        int64 `json:"failed"`    // counter: keys that failed for good
	SpoolBytes    int64 `json:"spool_bytes"`
	SpoolMaxBytes int64 `json:"spool_max_bytes"`
}

// Status is the `dmfs status --json` document.
type Status struct {
	Version int     `json:"version"`
	Mounts  []Mount `json:"mounts"`
}

// The states of a Mount.
const (
	StateRunning     = "running"     // its process answered: the figures are live
	StateDead        = "dead"        // its process is gone: the mount point is stale
	StateUnreachable = "unreachable" // its process lives but did not answer
)

// Mount is one dmfs mount as `dmfs status` found it: the snapshot its
// process sent when running, else what the state folder says.
type Mount struct {
	State   string `json:"state"`
	Problem string `json:"problem,omitempty"` // why there are no live figures
	Snapshot
}
