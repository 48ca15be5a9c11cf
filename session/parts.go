package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/oceanum-dmfs/dmfs/zarr"
)

// A value whose size is hinted (zarr.WithSizeHint) at rangeThreshold or
// more is fetched in parts of rangePart bytes, in parallel, where the
// gateway honours Range: one large chunk or shard then arrives at the speed
// of many connections, not one. Smaller values cost one plain GET, as
// before.
const (
	rangeThreshold = 16 << 20
	rangePart      = 8 << 20
)

// errPartsChanged says the value changed between its parts (or the gateway
// stopped honouring Range): it is fetched again whole.
var errPartsChanged = errors.New("value changed between its parts")

// getParts fetches key's value in parts: the first part tells the total
// size (and whether Range is honoured at all: a 200 is the whole value, for
// the cost of one request), the others are fetched in parallel into one
// buffer, or with a sink into the writer it returns for the total, each at
// its offset. A value that changes meanwhile is fetched again whole (and
// sink asked again, for its new size).
func (s *Store) getParts(ctx context.Context, key string, limit int64, sink zarr.Sink) ([]byte, error) {
	// A 200 is the whole value (Range not honoured), so the bound is
	// the value's, not the part's; a sink takes it if it has a length.
	first, err := s.requestPart(ctx, "get", http.MethodGet, key, limit, rangeHeader(0, rangePart), nil, sink)
	var e *Error
	if errors.As(err, &e) && e.Status == http.StatusRequestedRangeNotSatisfiable {
		return s.getWhole(ctx, key, limit, sink, err) // an empty value has no byte 0
	}
	if err != nil {
		return nil, err
	}
	if first.status == http.StatusOK {
		return first.body, nil // nil if it went to sink
	}
	partLen := int64(len(first.body))
	if first.sunk != nil {
		partLen = first.partLen // in the sink already
	}
	from, to, total, ok := parseContentRange(first.header.Get("Content-Range"))
	switch {
	case !ok || from != 0 || to+1 != partLen:
		return s.getWhole(ctx, key, limit, sink, fmt.Errorf("first part answered %q for %d bytes", first.header.Get("Content-Range"), partLen))
	case total > limit:
		return nil, s.partsError(key, first.status, fmt.Errorf("%w: %d bytes, more than the %d allowed", ErrTooLarge, total, limit))
	case total <= partLen && sink == nil:
		return first.body, nil
	}
	var buf []byte
	var dst io.WriterAt
	switch {
	case first.sunk != nil:
		dst = first.sunk
	case sink == nil:
		buf = make([]byte, total)
		dst = bytesAt(buf)
	default:
		w, err := sinkWriter(sink, total)
		if err != nil {
			return nil, s.partsError(key, 0, err)
		}
		dst = w
	}
	if first.sunk == nil {
		if _, err := dst.WriteAt(first.body, 0); err != nil {
			return nil, s.partsError(key, 0, fmt.Errorf("write %d body bytes at offset 0: %w", len(first.body), err))
		}
	}
	validator := partValidator(first.header)
	g, gctx := errgroup.WithContext(ctx)
	for off := partLen; off < total; off += rangePart {
		end := min(off+rangePart, total)
		g.Go(func() error {
			resp, err := s.requestPart(gctx, "get", http.MethodGet, key, limit, rangeHeader(off, end-off),
				&span{w: dst, off: off, n: end - off}, nil)
			if err != nil {
				return err
			}
			f, t, n, ok := parseContentRange(resp.header.Get("Content-Range"))
			if resp.status != http.StatusPartialContent || !ok || f != off || t+1 != end || n != total || partValidator(resp.header) != validator {
				return errPartsChanged
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		if errors.Is(err, errPartsChanged) {
			return s.getWhole(ctx, key, limit, sink, err)
		}
		return nil, err
	}
	return buf, nil // nil with a sink
}

// partsError is the error of a value fetched in parts that fails between
// its requests (status: the answer that told why, 0 if none did).
func (s *Store) partsError(key string, status int, err error) *Error {
	return &Error{Op: "get", Method: http.MethodGet, URL: redactURL(s.keyURL(key, false)), Status: status, Err: err}
}

// getWhole is the fallback of getParts: one plain GET of the whole value.
func (s *Store) getWhole(ctx context.Context, key string, limit int64, sink zarr.Sink, why error) ([]byte, error) {
	s.c.log.Debug("fetching the whole value instead of parts", "key", key, "why", why)
	resp, err := s.requestPart(ctx, "get", http.MethodGet, key, limit, nil, nil, sink)
	if err != nil {
		return nil, err
	}
	return resp.body, nil
}

// rangeHeader asks for n bytes from off.
func rangeHeader(off, n int64) http.Header {
	return http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", off, off+n-1)}}
}

// partValidator is what must stay the same across the parts of one value.
func partValidator(h http.Header) string {
	if etag := h.Get("ETag"); etag != "" {
		return etag
	}
	return h.Get("Last-Modified")
}

// parseContentRange reads "bytes FROM-TO/TOTAL".
func parseContentRange(v string) (from, to, total int64, ok bool) {
	rest, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	span, size, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, 0, false
	}
	a, b, found := strings.Cut(span, "-")
	if !found {
		return 0, 0, 0, false
	}
	var err error
	if from, err = strconv.ParseInt(a, 10, 64); err != nil {
		return 0, 0, 0, false
	}
	if to, err = strconv.ParseInt(b, 10, 64); err != nil {
		return 0, 0, 0, false
	}
	if total, err = strconv.ParseInt(size, 10, 64); err != nil {
		return 0, 0, 0, false
	}
	return from, to, total, from >= 0 && to >= from && total > to
}
