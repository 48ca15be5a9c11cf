package session

import (
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/oceanum-dmfs/dmfs/zarr"
)

var (
	// ErrClosed is the cause of every request made after Close.
	ErrClosed = errors.New("datamesh session closed")
	// ErrNoSession is the cause of a zarr request made before Acquire.
	ErrNoSession = errors.New("no datamesh session: Acquire one first")
	// ErrGone matches a 410 answer: the datasource no longer exists.
	ErrGone = errors.New("datamesh datasource gone")
	// ErrTooLarge is the cause of an answer larger than it may be (a chunk
	// above Config.MaxObjectSize, or above the limit its caller set); it is
	// not retried.
	ErrTooLarge = errors.New("datamesh answer too large")
	// ErrRedirect is the cause of a redirect that was not followed: to
	// another origin, one that changes the method, or too many. It is not
	// retried.
	ErrRedirect = errors.New("datamesh redirect refused")
	// ErrLocked matches a 409 answer to a write: another session holds the
	// datasource for writing (unless both allow multiwrite). The *Error
	// carries the gateway's detail.
	ErrLocked = zarr.ErrLocked
	// ErrReadOnly is the cause of a write through a Client without
	// Config.Write.
	ErrReadOnly = zarr.ErrReadOnly
	// ErrSessionLost is the cause of a write that can never be final: its
	// session was dropped by the gateway (401) with writes staged in it.
	ErrSessionLost = errors.New("datamesh session lost with writes staged in it; they cannot be finalised")
	// ErrNotFinalised is the cause of a finalise that found the session
	// already gone: its staged writes were discarded by the gateway.
	ErrNotFinalised = errors.New("datamesh session already closed or expired; its writes were not finalised")
	// ErrNoData is the cause of a Stage answered 204: the query matched no
	// data.
	ErrNoData = errors.New("datamesh query matched no data")
	// ErrBadQuery is the cause of a Stage the gateway refused as a bad
	// query: 400, 422, or another 4xx that has its own meaning nowhere else
	// (not 401, 403, 404, 408, 409, 410 or 429). The *Error carries the
	// gateway's detail.
	ErrBadQuery = errors.New("datamesh query refused")
)

// Error is every failure of a Datamesh request.
//
// errors.Is(err, fs.ErrNotExist) is true for 404, ErrLocked for 409,
// errors.Is(err, fs.ErrPermission) for 401 and 403 (after the session renewal
// retry), errors.Is(err, ErrGone) for 410 only: a deleted datasource must
// fail reads (EIO), not read as missing keys (a silent fill value). Timeouts, 5xx and transport errors
// match none of them; their cause is in Err (context.DeadlineExceeded,
// context.Canceled, a net error, ...).
type Error struct {
	Op     string // what the client was doing: "get", "head", "list", "acquire session", ...
	Method string
	URL    string // scheme, host and path only: no query, no credentials
	Status int    // HTTP status of the last answer; 0 if none
	Detail string // the server's {"detail": ...}, if any
	Err    error  // underlying cause when there was no answer or it was unusable
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("datamesh ")
	b.WriteString(e.Op)
	if e.Method != "" {
		b.WriteString(" ")
		b.WriteString(e.Method)
	}
	if e.URL != "" {
		b.WriteString(" ")
		b.WriteString(e.URL)
	}
	if e.Status != 0 {
		b.WriteString(": ")
		b.WriteString(strconv.Itoa(e.Status))
		if text := http.StatusText(e.Status); text != "" {
			b.WriteString(" ")
			b.WriteString(text)
		}
	}
	if e.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Is maps HTTP statuses to the io/fs sentinels and ErrGone.
func (e *Error) Is(target error) bool {
	switch target {
	case fs.ErrNotExist:
		return e.Status == http.StatusNotFound
	case fs.ErrPermission:
		return e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden
	case ErrGone:
		return e.Status == http.StatusGone
	case ErrLocked:
		return e.Status == http.StatusConflict
	}
	return false
}

// maxDetail bounds a detail, so that a huge body cannot flood a log line.
const maxDetail = 512

// parseDetail returns the "detail" of a JSON error body: a string as is,
// anything else (FastAPI validation lists) as compact JSON; cleaned (see
// detailText) and bounded.
func parseDetail(body []byte) string { return truncateDetail(detailText(body)) }

// detail is parseDetail with the client's token, should the gateway quote
// it, replaced by REDACTED before the detail is cut.
func (c *Client) detail(body []byte) string {
	s := detailText(body)
	if tok := string(c.token); tok != "" && s != "" {
		s = strings.ReplaceAll(s, tok, redacted)
		if cred, ok := strings.CutPrefix(tok, "Bearer "); ok && cred != "" {
			s = strings.ReplaceAll(s, cred, redacted)
		}
	}
	return truncateDetail(s)
}

// detailText is the whole detail of a JSON error body, on one line: runs of
// white space become one space, other control characters and invalid UTF-8
// are replaced, so that it reads safely in a terminal and a log line.
func detailText(body []byte) string {
	var doc struct {
		Detail json.RawMessage `json:"detail"`
	}
	if json.Unmarshal(body, &doc) != nil || len(doc.Detail) == 0 || string(doc.Detail) == "null" {
		return ""
	}
	var s string
	if json.Unmarshal(doc.Detail, &s) != nil {
		s = string(doc.Detail)
	}
	s = strings.Map(func(r rune) rune {
		if unicode.IsSpace(r) || unicode.IsPrint(r) {
			return r
		}
		return unicode.ReplacementChar
	}, strings.ToValidUTF8(s, string(unicode.ReplacementChar)))
	return strings.Join(strings.Fields(s), " ")
}

// truncateDetail cuts s to maxDetail bytes, on a rune boundary, marking the
// cut.
func truncateDetail(s string) string {
	if len(s) <= maxDetail {
		return s
	}
	n := maxDetail
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}
