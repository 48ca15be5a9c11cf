// Package session is the Datamesh HTTP client: configuration, auth headers,
// retries, the datasource catalog, the session lifecycle (acquire, renew,
// close, finalise), read and write access to the Zarr keys of a
// datasource, staged queries (Stage, QueryStore) and streamed tables
// (OpenTable, OpenQueryTable).
//
// It knows nothing of Zarr trees or FUSE. Errors are *Error values that match
// io/fs sentinels through errors.Is, so callers map them without string
// matching. The token never appears in errors, logs or formatted values, and
// never leaves for another origin: redirects are followed only within the
// origin asked. Every answer is bounded by what it can legitimately be.
package session

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/oceanum-dmfs/dmfs/flow"
)

// Defaults, as the official clients use them.
const (
	DefaultService          = "https://datamesh.oceanum.io"
	DefaultConnectTimeout   = 3050 * time.Millisecond
	DefaultReadTimeout      = 10 * time.Second
	DefaultChunkReadTimeout = 60 * time.Second
	DefaultStageReadTimeout = 900 * time.Second
	DefaultDownloadTimeout  = 900 * time.Second
	// DefaultChunkWriteTimeout bounds each stall of a zarr write: while
	// its body is sent, then between bytes of its answer.
	DefaultChunkWriteTimeout = 600 * time.Second
	DefaultMaxRetries        = 8
	DefaultRetryBase         = 100 * time.Millisecond
	// DefaultRetryMaxElapsed is long enough to wait out a gateway restart,
	// as the Python client does (it pauses 30 s per 502, minutes in all).
	DefaultRetryMaxElapsed = 5 * time.Minute
	// DefaultMaxObjectSize bounds one zarr value (a chunk) read by Get.
	DefaultMaxObjectSize int64 = 1 << 30
)

// DefaultCloseBackoff is the wait before each retry of a failed session close.
var DefaultCloseBackoff = []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}

// Environment variable names, the same as the official clients.
const (
	EnvToken             = "DATAMESH_TOKEN"
	EnvService           = "DATAMESH_SERVICE"
	EnvGateway           = "DATAMESH_GATEWAY"
	EnvConnectTimeout    = "DATAMESH_CONNECT_TIMEOUT"
	EnvReadTimeout       = "DATAMESH_READ_TIMEOUT"
	EnvChunkReadTimeout  = "DATAMESH_CHUNK_READ_TIMEOUT"
	EnvStageReadTimeout  = "DATAMESH_STAGE_READ_TIMEOUT"
	EnvDownloadTimeout   = "DATAMESH_DOWNLOAD_TIMEOUT"
	EnvChunkWriteTimeout = "DATAMESH_CHUNK_WRITE_TIMEOUT"
)

// NoTimeout, as a Config timeout, means no limit (the environment's "None",
// as in the Python client): the request is then bounded by its caller's
// context only. Any negative duration means the same.
const NoTimeout time.Duration = -1

// ErrNoToken means no Datamesh token was configured.
var ErrNoToken = errors.New("no Datamesh token: set " + EnvToken + " or pass a token file")

// Config configures a Client. Zero fields take the defaults above.
//
// Config formats (fmt, slog) with the token redacted; marshalled to JSON it
// leaves the token out.
type Config struct {
	Token            string `json:"-"` // never printed
	Service, Gateway string // base URLs without trailing slash; Gateway "" = Service

	// Timeouts; zero takes the default, NoTimeout (negative) is no limit.
	// A read timeout bounds the wait for an answer's headers and then each
	// gap between bytes of its body, never the whole transfer (the Python
	// client's, i.e. requests', semantics): a large chunk on a slow link that
	// keeps arriving is not an error.
	ConnectTimeout    time.Duration // TCP connect (and TLS handshake)
	ReadTimeout       time.Duration // API calls: catalog, datasource, session
	ChunkReadTimeout  time.Duration // every zarr key (.zmetadata included) and listing
	StageReadTimeout  time.Duration // staging a query
	DownloadTimeout   time.Duration // downloading a table or query result
	ChunkWriteTimeout time.Duration // writing a zarr key

	// MaxRetries bounds the retries of timeouts, 429 and transport errors;
	// default 8, negative = none. A restarting gateway (502, 503, 504, or a
	// refused connection after the first answer) is waited out for up to
	// RetryMaxElapsed whatever the count.
	MaxRetries      int
	RetryBase       time.Duration   // first backoff, doubled each retry up to 30s; default 100ms
	RetryMaxElapsed time.Duration   // no retry starts after this long; default 5m
	CloseBackoff    []time.Duration // waits between session close tries; default 1s,2s,4s

	// MaxObjectSize bounds the body of one zarr value read by Store.Get: a
	// larger one is refused (ErrTooLarge) before it is read, or as soon as it
	// passes the bound when its length is not announced. Default 1 GiB.
	MaxObjectSize int64

	// Limiter bounds the zarr key reads in flight (Store.Get, Head and
	// List): each attempt, retries included, holds one of its permits from
	// just before it is sent until its answer is read, and releases it with
	// how the attempt ended (429, 503: overload; timeouts, connection
	// errors, 502, 504: failure; any other answer: success). Reads marked
	// zarr.WithReadahead wait behind every other. Writes, sessions, staging
	// and tables are outside it. nil: no limit but the transport's.
	Limiter *flow.Limiter `json:"-"`

	// Write enables Store.Put, Delete and Clear, and makes a planned
	// session renewal a checkpoint that finalises the writes of the old
	// session (DESIGN §4).
	Write bool
	// AllowMultiwrite is sent when acquiring a session: whether other
	// sessions may write to a datasource this one writes to (both must
	// allow it).
	AllowMultiwrite bool

	Logger *slog.Logger // nil = discard

	// OnSession, when set, is called with each session once it is acquired
	// or renewed (and so in use), for instance to record its id where a
	// later run can close it should this process be killed.
	OnSession func(Info) `json:"-"`

	// OnRequest, when set, is called as each HTTP request is sent (each
	// try of a retried call), with its op ("get", "head", "list", "put",
	// "delete", "clear", "catalog", "datasource", "acquire session", "close
	// session", "stage", "download table", "download query") and, for zarr
	// ops, its key; the func it returns, when not nil, is called once the
	// answer is read (for a download, once its headers are), with the
	// status (0 when there was none) and the error. For figures (`dmfs
	// status`, metrics): both must be quick.
	OnRequest func(op, key string) (done func(status int, err error)) `json:"-"`
}

// ConfigFromEnv reads the DATAMESH_* variables through getenv and fills the
// defaults. Timeouts are seconds as floats, like the Python client. A missing
// token is not an error here (New reports it), so a token file can still
// supply it.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	cfg := Config{
		Token:   strings.TrimSpace(getenv(EnvToken)),
		Service: strings.TrimSpace(getenv(EnvService)),
		Gateway: strings.TrimSpace(getenv(EnvGateway)),
	}
	for _, v := range []struct {
		name string
		dst  *time.Duration
	}{
		{EnvConnectTimeout, &cfg.ConnectTimeout},
		{EnvReadTimeout, &cfg.ReadTimeout},
		{EnvChunkReadTimeout, &cfg.ChunkReadTimeout},
		{EnvStageReadTimeout, &cfg.StageReadTimeout},
		{EnvDownloadTimeout, &cfg.DownloadTimeout},
		{EnvChunkWriteTimeout, &cfg.ChunkWriteTimeout},
	} {
		raw := strings.TrimSpace(getenv(v.name))
		if raw == "" {
			continue
		}
		d, err := parseSeconds(raw)
		if err != nil {
			return Config{}, fmt.Errorf("%s=%q: %w", v.name, raw, err)
		}
		*v.dst = d
	}
	cfg.fillDefaults()
	return cfg, nil
}

// parseSeconds reads seconds as a float, or "None" (any case) for no limit.
func parseSeconds(s string) (time.Duration, error) {
	if strings.EqualFold(s, "none") {
		return NoTimeout, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, errors.New("want a number of seconds, like 10 or 3.05, or None")
	}
	if f <= 0 || f > 24*3600 {
		return 0, errors.New("want seconds greater than 0 and at most 86400")
	}
	return time.Duration(f * float64(time.Second)), nil
}

// ReadTokenFile returns the token stored in path, surrounding whitespace
// trimmed. Its errors never quote the file's content.
func ReadTokenFile(path string) (string, error) {
	const maxTokenFile = 64 << 10
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	if !st.Mode().IsRegular() && st.Mode()&os.ModeNamedPipe == 0 {
		return "", fmt.Errorf("token file %s: not a regular file", path)
	}
	if st.Size() > maxTokenFile {
		return "", fmt.Errorf("token file %s: %d bytes, too large for a token", path, st.Size())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	if err := checkToken(tok); err != nil {
		return "", fmt.Errorf("token file %s: %w", path, err)
	}
	return tok, nil
}

// checkToken rejects tokens that cannot go in an HTTP header. The message
// never includes the token.
func checkToken(tok string) error {
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c < 0x20 || c == 0x7f {
			return fmt.Errorf("token contains a control character at byte %d", i)
		}
	}
	return nil
}

func (c *Config) fillDefaults() {
	c.Service = strings.TrimRight(c.Service, "/")
	c.Gateway = strings.TrimRight(c.Gateway, "/")
	if c.Service == "" {
		c.Service = DefaultService
	}
	if c.Gateway == "" {
		c.Gateway = c.Service
	}
	for _, t := range []struct {
		dst *time.Duration
		def time.Duration
	}{
		{&c.ConnectTimeout, DefaultConnectTimeout},
		{&c.ReadTimeout, DefaultReadTimeout},
		{&c.ChunkReadTimeout, DefaultChunkReadTimeout},
		{&c.StageReadTimeout, DefaultStageReadTimeout},
		{&c.DownloadTimeout, DefaultDownloadTimeout},
		{&c.ChunkWriteTimeout, DefaultChunkWriteTimeout},
	} {
		switch {
		case *t.dst == 0:
			*t.dst = t.def
		case *t.dst < 0:
			*t.dst = NoTimeout
		}
	}
	switch {
	case c.MaxRetries == 0:
		c.MaxRetries = DefaultMaxRetries
	case c.MaxRetries < 0:
		c.MaxRetries = 0
	}
	if c.RetryBase <= 0 {
		c.RetryBase = DefaultRetryBase
	}
	if c.RetryMaxElapsed <= 0 {
		c.RetryMaxElapsed = DefaultRetryMaxElapsed
	}
	if c.MaxObjectSize <= 0 {
		c.MaxObjectSize = DefaultMaxObjectSize
	}
	if c.CloseBackoff == nil {
		c.CloseBackoff = append([]time.Duration(nil), DefaultCloseBackoff...)
	}
}

func (c *Config) validate() error {
	if c.Token == "" {
		return ErrNoToken
	}
	if err := checkToken(c.Token); err != nil {
		return err
	}
	for _, b := range []struct{ name, url string }{{"service", c.Service}, {"gateway", c.Gateway}} {
		u, err := url.Parse(b.url)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%s URL %q: want http(s)://host[/path]", b.name, redactURL(b.url))
		}
		if u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("%s URL %q: must not have a query or fragment", b.name, redactURL(b.url))
		}
	}
	return nil
}

const redacted = "REDACTED"

func (c Config) tokenMark() string {
	if c.Token == "" {
		return ""
	}
	return redacted
}

// String describes c with the token redacted.
func (c Config) String() string {
	return fmt.Sprintf("session.Config{Token:%s Service:%s Gateway:%s ConnectTimeout:%s ReadTimeout:%s ChunkReadTimeout:%s StageReadTimeout:%s DownloadTimeout:%s ChunkWriteTimeout:%s MaxRetries:%d RetryBase:%s RetryMaxElapsed:%s CloseBackoff:%v MaxObjectSize:%d Write:%t AllowMultiwrite:%t}",
		c.tokenMark(), redactURL(c.Service), redactURL(c.Gateway), fmtTimeout(c.ConnectTimeout), fmtTimeout(c.ReadTimeout),
		fmtTimeout(c.ChunkReadTimeout), fmtTimeout(c.StageReadTimeout), fmtTimeout(c.DownloadTimeout), fmtTimeout(c.ChunkWriteTimeout),
		c.MaxRetries, c.RetryBase, c.RetryMaxElapsed, c.CloseBackoff, c.MaxObjectSize, c.Write, c.AllowMultiwrite)
}

// fmtTimeout prints a timeout, NoTimeout as "None" (the environment's word).
func fmtTimeout(d time.Duration) string {
	if d < 0 {
		return "None"
	}
	return d.String()
}

// GoString is String: %#v must not print the token either.
func (c Config) GoString() string { return c.String() }

// Format makes every verb (%v, %+v, %#v, %s, %d, ...) print String.
func (c Config) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(c.String())) }

// LogValue logs c without the token.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("token", c.tokenMark()),
		slog.String("service", redactURL(c.Service)),
		slog.String("gateway", redactURL(c.Gateway)),
		slog.String("connect_timeout", fmtTimeout(c.ConnectTimeout)),
		slog.String("read_timeout", fmtTimeout(c.ReadTimeout)),
		slog.String("chunk_read_timeout", fmtTimeout(c.ChunkReadTimeout)),
		slog.String("stage_read_timeout", fmtTimeout(c.StageReadTimeout)),
		slog.String("download_timeout", fmtTimeout(c.DownloadTimeout)),
		slog.String("chunk_write_timeout", fmtTimeout(c.ChunkWriteTimeout)),
		slog.Int64("max_object_size", c.MaxObjectSize),
		slog.Bool("write", c.Write),
		slog.Bool("allow_multiwrite", c.AllowMultiwrite),
	)
}

// redactURL drops user info, query and fragment: only scheme, host and path
// may appear in messages.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	u.User = nil
	u.RawQuery = ""
	u.ForceQuery = false
	u.Fragment = ""
	u.RawFragment = ""
	return u.String()
}
