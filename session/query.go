package session

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
)

// Containers, as a stage answer names them: what a datasource or a query's
// results are.
const (
	ContainerDataset      = "dataset"      // a Zarr store
	ContainerDataFrame    = "dataframe"    // a table (Parquet)
	ContainerGeoDataFrame = "geodataframe" // a table with geometries (GeoParquet)
)

const (
	// maxStageBody bounds a stage answer: the query, its hash and
	// coordinate maps, a few kilobytes.
	maxStageBody = 1 << 20
	// maxQHash bounds the length of a query hash (the gateway's are 56 hex
	// digits, a SHA-224).
	maxQHash = 128
)

// Stage is the gateway's answer to staging a query.
type Stage struct {
	// QHash names the query's results: QueryStore(QHash) for a dataset,
	// OpenQueryTable(QHash) for a table. 1 to 128 bytes of A-Z, a-z, 0-9,
	// '.', '_' and '-', neither "." nor "..".
	QHash string
	// Container is ContainerDataset, ContainerDataFrame or
	// ContainerGeoDataFrame.
	Container string
	Formats   []string // download formats offered, as the gateway lists them
	Size      int64    // the results' size as the gateway says; 0 if absent
	DLen      int64    // the gateway's domain length (rows of a table); 0 if absent
	// Query is the normalised query the gateway echoes; nil if absent.
	Query json.RawMessage
}

// IsTable reports whether the results are a table (dataframe or
// geodataframe) rather than a Zarr dataset.
func (s Stage) IsTable() bool {
	return s.Container == ContainerDataFrame || s.Container == ContainerGeoDataFrame
}

// Stage stages an OceanQL query (DESIGN.md §5, the Python client's Query as
// JSON, at least {"datasource": ID}): POST {gateway}/oceanql/stage/ with
// query as the body, sent as given, and the session. The wait for the
// answer, and each gap in it, is bounded by Config.StageReadTimeout
// (DATAMESH_STAGE_READ_TIMEOUT). Failures are retried as for other calls
// (transport errors, 429, 502-504 within the retry budget; one session
// renewal on a 401).
//
// A 204 (no data) fails with ErrNoData; 400, 422 and other 4xx without
// their own meaning with ErrBadQuery, the gateway's detail in the *Error;
// 404 matches fs.ErrNotExist (no such datasource), 401/403 after the
// renewal fs.ErrPermission, 410 ErrGone. An answer whose qhash or container
// cannot be used is an error naming it.
func (c *Client) Stage(ctx context.Context, query json.RawMessage) (Stage, error) {
	query = bytes.TrimSpace(query)
	r := request{
		op:       "stage",
		method:   http.MethodPost,
		url:      c.gateway + "/oceanql/stage/",
		header:   http.Header{"Content-Type": {"application/json"}},
		timeout:  c.cfg.StageReadTimeout,
		readBody: true,
		maxBody:  maxStageBody,
		body:     bytes.NewReader(query),
		bodySize: int64(len(query)),
	}
	if len(query) == 0 || query[0] != '{' || !json.Valid(query) {
		return Stage{}, c.errorFor(r, 0, "", fmt.Errorf("%w: not a JSON object", ErrBadQuery))
	}
	resp, err := c.sessionDo(ctx, r)
	if err != nil {
		return Stage{}, err
	}
	switch {
	case resp.status == http.StatusOK:
	case resp.status == http.StatusNoContent:
		return Stage{}, c.errorFor(r, resp.status, "", ErrNoData)
	case badQueryStatus(resp.status):
		return Stage{}, c.errorFor(r, resp.status, c.detail(resp.body), ErrBadQuery)
	default:
		return Stage{}, c.statusError(r, resp)
	}
	st, err := parseStage(resp.body)
	if err != nil {
		return Stage{}, c.errorFor(r, resp.status, "", err)
	}
	return st, nil
}

// badQueryStatus reports whether a stage's status says the query itself is
// at fault: a 4xx other than those that mean something else (auth, not
// found, timeout, lock, gone, rate limit).
func badQueryStatus(status int) bool {
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound, http.StatusRequestTimeout,
		http.StatusConflict, http.StatusGone, http.StatusTooManyRequests:
		return false
	}
	return status/100 == 4
}

// parseStage reads a stage answer leniently (unknown fields, odd formats,
// sizes or query are tolerated) but refuses a qhash or container dmfs cannot
// use safely.
func parseStage(body []byte) (Stage, error) {
	var doc struct {
		Query     json.RawMessage `json:"query"`
		QHash     json.RawMessage `json:"qhash"`
		Formats   json.RawMessage `json:"formats"`
		Size      json.RawMessage `json:"size"`
		DLen      json.RawMessage `json:"dlen"`
		Container json.RawMessage `json:"container"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return Stage{}, fmt.Errorf("stage answer is not the expected JSON: %w", err)
	}
	var qhash, container string
	if json.Unmarshal(doc.QHash, &qhash) != nil {
		return Stage{}, errors.New("stage answer has no qhash string")
	}
	if err := checkQHash(qhash); err != nil {
		return Stage{}, fmt.Errorf("stage answer: %w", err)
	}
	if json.Unmarshal(doc.Container, &container) != nil {
		return Stage{}, errors.New("stage answer has no container string")
	}
	switch container {
	case ContainerDataset, ContainerDataFrame, ContainerGeoDataFrame:
	default:
		return Stage{}, fmt.Errorf("stage answer: unknown container %q (want %s, %s or %s)",
			truncate(container, 64), ContainerDataset, ContainerDataFrame, ContainerGeoDataFrame)
	}
	st := Stage{QHash: qhash, Container: container, Size: jsonInt(doc.Size), DLen: jsonInt(doc.DLen)}
	_ = json.Unmarshal(doc.Formats, &st.Formats) // not a list of strings: none
	if q := bytes.TrimSpace(doc.Query); len(q) > 0 && string(q) != "null" {
		st.Query = q
	}
	return st, nil
}

// jsonInt is a JSON number as an int64 (a float is truncated), or 0 when
// absent, not a number or out of range.
func jsonInt(raw json.RawMessage) int64 {
	var n json.Number
	if json.Unmarshal(raw, &n) != nil {
		return 0
	}
	if i, err := n.Int64(); err == nil {
		return i
	}
	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || f >= math.MaxInt64 || f <= math.MinInt64 {
		return 0
	}
	return int64(f)
}

// checkQHash accepts 1 to maxQHash letters, digits, '.', '_' and '-',
// neither "." nor "..": a single safe URL path segment and file name. The
// error quotes no more than describeID.
func checkQHash(qhash string) error {
	ok := qhash != "" && len(qhash) <= maxQHash && qhash != "." && qhash != ".."
	for i := 0; ok && i < len(qhash); i++ {
		b := qhash[i]
		ok = 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '-' || b == '_' || b == '.'
	}
	if !ok {
		return fmt.Errorf("invalid query hash %s: want 1 to %d letters, digits, '.', '_' or '-'", describeID(qhash), maxQHash)
	}
	return nil
}
