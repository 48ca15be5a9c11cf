package mountstat

import (
	"net/http"
	"path"
	"sync/atomic"
)

// Kinds are the kinds of request counted, in display order.
var Kinds = [...]string{
	"chunk",    // GET of a zarr key that is not metadata
	"metadata", // GET of .zmetadata, .zgroup, .zarray, .zattrs, zarr.json
	"head",     // HEAD of a zarr key (its size)
	"listing",  // GET of a zarr folder listing
	"catalog",  // the catalog, and one datasource's description
	"stage",    // staging a query
	"download", // a table or a table query's results
	"upload",   // POST of a written key
	"delete",   // DELETE of a key or a whole datasource
	"session",  // acquire, renew, close
	"other",
}

// kindOf maps the session client's op (see session.Config.OnRequest) to a
// kind's index in Kinds.
func kindOf(op, key string) int {
	var kind string
	switch op {
	case "get":
		kind = "chunk"
		switch path.Base(key) {
		case ".zmetadata", ".zgroup", ".zarray", ".zattrs", "zarr.json":
			kind = "metadata"
		}
	case "head":
		kind = "head"
	case "list":
		kind = "listing"
	case "catalog", "datasource":
		kind = "catalog"
	case "stage":
		kind = "stage"
	case "download table", "download query":
		kind = "download"
	case "put":
		kind = "upload"
	case "delete", "clear":
		kind = "delete"
	case "acquire session", "close session":
		kind = "session"
	}
	for i, k := range Kinds {
		if k == kind {
			return i
		}
	}
	return len(Kinds) - 1 // other
}

// RequestCounter counts requests by kind. The zero value is ready; it is
// safe for concurrent use and never blocks.
type RequestCounter struct {
	kinds [len(Kinds)]requestCounts
}

type requestCounts struct{ total, errors, inFlight atomic.Int64 }

// Start counts a request being sent, with the session client's op and key,
// and returns what to call with its outcome: an error is no answer (err),
// or a status of 400 or more other than 404 (a key that does not exist is
// an answer). It fits session.Config.OnRequest.
func (c *RequestCounter) Start(op, key string) func(status int, err error) {
	n := &c.kinds[kindOf(op, key)]
	n.total.Add(1)
	n.inFlight.Add(1)
	return func(status int, err error) {
		n.inFlight.Add(-1)
		if err != nil || (status >= 400 && status != http.StatusNotFound) {
			n.errors.Add(1)
		}
	}
}

// Figures returns the counts of every kind.
func (c *RequestCounter) Figures() map[string]Requests {
	out := make(map[string]Requests, len(Kinds))
	for i, k := range Kinds {
		n := &c.kinds[i]
		out[k] = Requests{Total: n.total.Load(), Errors: n.errors.Load(), InFlight: n.inFlight.Load()}
	}
	return out
}
