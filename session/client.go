package session

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/oceanum-dmfs/dmfs/flow"
)

const (
	// renewLead is how long before end_time a session is renewed.
	renewLead = 60 * time.Second
	// minRenewInterval is the least time between two requests for a session
	// made by renewal, scheduled or after a 401: whatever a gateway answers,
	// dmfs never acquires and closes sessions faster than this, except for
	// sessions shorter than twice this: those are renewed halfway through
	// their life (see renewSpacing), never sooner than
	// minShortRenewInterval.
	minRenewInterval      = 10 * time.Second
	minShortRenewInterval = 2 * time.Second
	// maxRenewBackoff caps the wait before retrying a failed scheduled
	// renewal; the waits double from minRenewInterval.
	maxRenewBackoff = 5 * time.Minute
	// maxSessionID bounds the length of a session id.
	maxSessionID = 128
	// finaliseBudget bounds a checkpoint's finalise, which Close waits for
	// and which must outlive the client's cancellation (a finalise cut
	// short would lose the writes it was making final).
	finaliseBudget = 2 * time.Minute
	// reasonUnauthorized is the renewal of a session the gateway refused.
	reasonUnauthorized = "renewed after 401"
)

// Info is a Datamesh session as the gateway describes it.
type Info struct {
	ID, User               string
	CreationTime, EndTime  time.Time
	Write, AllowMultiwrite bool
	Verified               bool
}

// current is the session in use and when it was acquired (local clock).
type current struct {
	info     Info
	acquired time.Time
}

// Client talks to one Datamesh service and gateway and owns at most one
// session at a time. Its methods are safe for concurrent use.
type Client struct {
	cfg     Config
	token   secret
	service string
	gateway string
	http    *http.Client
	limiter *flow.Limiter // Config.Limiter: zarr reads in flight
	log     *slog.Logger
	clock   clock // the session lifecycle's time; tests replace it
	// retryClock times retry waits and their budget, jitter spreads the
	// waits; tests replace both to check minutes of retries at once.
	retryClock clock
	jitter     func(time.Duration) time.Duration

	onSession func(Info) // Config.OnSession
	writes    *writes    // what was written, per session; gates writes at checkpoints

	// answered is set once any HTTP answer arrives: from then on a refused
	// connection is a restart worth waiting out, not a wrong address.
	answered atomic.Bool

	// life is cancelled by Close: it stops the renewal loop and renewals.
	life       context.Context
	endLife    context.CancelFunc
	renewals   singleflight.Group // 401 renewals, keyed by the rejected session id
	swapped    chan struct{}      // a new session was swapped in: reschedule
	loopDone   chan struct{}
	background sync.WaitGroup // best-effort closes of replaced sessions

	// renewMu serialises acquire/renew/close so that only one new session is
	// requested at a time and Close sees a settled state.
	renewMu     sync.Mutex
	duration    time.Duration // guarded by renewMu
	loopStarted bool          // guarded by renewMu

	mu      sync.RWMutex
	cur     *current  // nil before Acquire and after Close
	lastAsk time.Time // when a session was last requested (clock time)
	closed  bool

	closeOnce sync.Once
	closeDone chan struct{}
	closeErr  error
}

// New checks cfg, fills its defaults and returns a Client. It sends nothing:
// call Acquire before reading zarr keys.
func New(cfg Config) (*Client, error) {
	cfg.fillDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	life, endLife := context.WithCancel(context.Background())
	onSurplus := func(n int) {
		// Not the bytes: they are the gateway's, and could be anything.
		log.Debug("datamesh answer followed by bytes past its end; dropped, connection closed", "bytes", n)
	}
	c := &Client{
		cfg:     cfg,
		token:   secret(cfg.Token),
		service: cfg.Service,
		gateway: cfg.Gateway,
		http: &http.Client{
			Transport:     newTransport(cfg.ConnectTimeout, connsPerHost(cfg.Limiter), onSurplus),
			CheckRedirect: checkRedirect,
		},
		limiter:    cfg.Limiter,
		log:        log,
		clock:      realClock{},
		retryClock: realClock{},
		jitter:     halfJitter,
		life:       life,
		endLife:    endLife,
		swapped:    make(chan struct{}, 1),
		loopDone:   make(chan struct{}),
		closeDone:  make(chan struct{}),
		writes:     newWrites(),
	}
	c.cfg.Token = "" // kept only as c.token
	c.cfg.Logger = nil
	c.cfg.Limiter = nil
	c.onSession, c.cfg.OnSession = cfg.OnSession, nil
	return c, nil
}

// String describes c without its token.
func (c *Client) String() string {
	return fmt.Sprintf("session.Client{service:%s gateway:%s session:%s}",
		redactURL(c.service), redactURL(c.gateway), c.Info().ID)
}

// Format makes every verb print String, so no formatting reaches the token.
func (c *Client) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(c.String())) }

// LogValue logs c without its token.
func (c *Client) LogValue() slog.Value {
	return slog.GroupValue(slog.String("service", redactURL(c.service)),
		slog.String("gateway", redactURL(c.gateway)), slog.String("session", c.Info().ID))
}

// Info returns the current session; zero before Acquire and after Close.
func (c *Client) Info() Info {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.cur == nil {
		return Info{}
	}
	return c.cur.info
}

// sessionID is the id to send with a zarr request.
func (c *Client) sessionID() (string, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	switch {
	case c.closed:
		return "", ErrClosed
	case c.cur == nil:
		return "", ErrNoSession
	}
	return c.cur.info.ID, nil
}

func (c *Client) isClosed() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.closed
}

// Acquire requests a session of the given duration, makes it current (a
// session already held is closed in the background) and starts its renewal
// in the background.
func (c *Client) Acquire(ctx context.Context, duration time.Duration) (Info, error) {
	if duration < time.Second {
		return Info{}, fmt.Errorf("session duration %s: want at least 1s", duration)
	}
	c.renewMu.Lock()
	defer c.renewMu.Unlock()
	c.duration = duration
	info, err := c.renewLocked(ctx, "acquired")
	if err != nil {
		return Info{}, err
	}
	if !c.loopStarted {
		c.loopStarted = true
		// The loop schedules this session when it starts.
		select {
		case <-c.swapped:
		default:
		}
		go c.renewLoop()
	}
	return info, nil
}

// Renew acquires a fresh session of the same duration, swaps it in and closes
// the old one in the background (best effort).
func (c *Client) Renew(ctx context.Context) (Info, error) {
	c.renewMu.Lock()
	defer c.renewMu.Unlock()
	if c.duration == 0 {
		if c.isClosed() {
			return Info{}, &Error{Op: "renew session", Err: ErrClosed}
		}
		return Info{}, &Error{Op: "renew session", Err: ErrNoSession}
	}
	return c.renewLocked(ctx, "renewed")
}

// renewLocked acquires a new session and swaps it in. renewMu is held. The
// request stops when ctx is cancelled or the client is closed.
func (c *Client) renewLocked(ctx context.Context, reason string) (Info, error) {
	if c.isClosed() {
		return Info{}, &Error{Op: "acquire session", Err: ErrClosed}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(c.life, cancel)
	defer stop()

	// A planned renewal of a write session is a checkpoint: uploads are
	// held and those in flight finish first, so the old session's writes
	// are settled when it is finalised and none starts in the new one
	// while the old still holds the datasource.
	checkpoint := c.cfg.Write && reason != reasonUnauthorized && c.Info().ID != ""
	if checkpoint {
		defer c.writes.release()
		if err := c.writes.holdAndDrain(ctx); err != nil {
			if c.isClosed() {
				err = ErrClosed
			}
			return Info{}, &Error{Op: "renew session", Err: err}
		}
	}

	c.mu.Lock()
	c.lastAsk = c.clock.Now()
	c.mu.Unlock()
	info, err := c.acquire(ctx, c.duration)
	if err != nil {
		if c.isClosed() {
			return Info{}, &Error{Op: "acquire session", Err: ErrClosed}
		}
		return Info{}, err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		// Closed while we asked: the new session must not outlive the client.
		c.closeBestEffort(info.ID)
		return Info{}, &Error{Op: "acquire session", Err: ErrClosed}
	}
	old := c.cur
	c.cur = &current{info: info, acquired: c.clock.Now()}
	c.mu.Unlock()
	select {
	case c.swapped <- struct{}{}:
	default:
	}
	attrs := []any{"session", info.ID, "end_time", info.EndTime}
	if old != nil {
		oldID := old.info.ID
		attrs = append(attrs, "previous", oldID)
		if reason == reasonUnauthorized {
			// Whoever saw the 401, what the old session staged is lost.
			if n := c.writes.lose(oldID); n > 0 {
				c.log.Error("datamesh session lost with writes staged in it; they fail", "session", oldID, "keys", n)
			}
		}
		if checkpoint && c.writes.hasStaged(oldID) {
			// Synchronous, writes held: they resume once it is final.
			c.checkpoint(oldID, info.ID)
		} else {
			// Added under renewMu before Close can take it, so Close's Wait sees it.
			c.background.Add(1)
			go func() {
				defer c.background.Done()
				c.closeBestEffort(oldID)
			}()
		}
	}
	c.log.Info("datamesh session "+reason, attrs...)
	if c.onSession != nil {
		c.onSession(info)
	}
	return info, nil
}

// acquire asks the gateway for a session.
func (c *Client) acquire(ctx context.Context, duration time.Duration) (Info, error) {
	secs := int64(math.Ceil(duration.Seconds()))
	r := request{
		op:     "acquire session",
		method: http.MethodGet,
		url: c.gateway + "/session/?duration=" + strconv.FormatInt(secs, 10) +
			"&allow_multiwrite=" + strconv.FormatBool(c.cfg.AllowMultiwrite),
		header:   http.Header{"Cache-Control": {"no-store"}},
		timeout:  c.cfg.ReadTimeout,
		readBody: true,
		maxBody:  maxSessionBody,
	}
	resp, err := c.do(ctx, r)
	if err != nil {
		return Info{}, err
	}
	if resp.status != http.StatusOK {
		return Info{}, c.statusError(r, resp)
	}
	info, err := c.parseInfo(resp.body)
	if err != nil {
		return Info{}, c.errorFor(r, resp.status, "", err)
	}
	return info, nil
}

// parseInfo reads the session JSON leniently (unknown fields and odd types
// of "user" are tolerated, an unreadable time is logged and left zero) but
// refuses a session dmfs cannot use safely: an id that is not a plain token
// (it goes in a header and a URL path), or an end_time not after its
// creation_time or not in the future (it would be renewed at once, for
// ever). Its errors quote no more of the id than describeID.
func (c *Client) parseInfo(body []byte) (Info, error) {
	var doc struct {
		ID              json.RawMessage `json:"id"`
		User            json.RawMessage `json:"user"`
		CreationTime    string          `json:"creation_time"`
		EndTime         string          `json:"end_time"`
		Write           bool            `json:"write"`
		AllowMultiwrite bool            `json:"allow_multiwrite"`
		Verified        bool            `json:"verified"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return Info{}, fmt.Errorf("session answer is not the expected JSON: %w", err)
	}
	info := Info{
		ID:              jsonText(doc.ID),
		User:            jsonText(doc.User),
		Write:           doc.Write,
		AllowMultiwrite: doc.AllowMultiwrite,
		Verified:        doc.Verified,
	}
	if info.ID == "" {
		return Info{}, errors.New("session answer has no id")
	}
	if err := checkSessionID(info.ID); err != nil {
		return Info{}, fmt.Errorf("session answer: %w", err)
	}
	for _, f := range []struct {
		name, raw string
		dst       *time.Time
	}{{"creation_time", doc.CreationTime, &info.CreationTime}, {"end_time", doc.EndTime, &info.EndTime}} {
		if f.raw == "" {
			continue
		}
		t, err := parseTime(f.raw)
		if err != nil {
			c.log.Warn("datamesh session time unreadable", "session", info.ID, "field", f.name, "value", truncate(f.raw, 64))
			continue
		}
		*f.dst = t
	}
	if !info.EndTime.IsZero() {
		if !info.CreationTime.IsZero() && !info.EndTime.After(info.CreationTime) {
			return Info{}, fmt.Errorf("session answer ends (end_time %s) no later than it begins (creation_time %s)",
				info.EndTime.Format(time.RFC3339Nano), info.CreationTime.Format(time.RFC3339Nano))
		}
		if now := c.clock.Now(); !info.EndTime.After(now) {
			return Info{}, fmt.Errorf("session answer ends (end_time %s) before now by this machine's clock (%s): check the clock",
				info.EndTime.Format(time.RFC3339Nano), now.UTC().Format(time.RFC3339Nano))
		}
	}
	return info, nil
}

// checkSessionID accepts 1 to maxSessionID letters, digits, '-', '_' and
// '.': safe in a header, a URL path, a log line and a file.
func checkSessionID(id string) error {
	ok := id != "" && len(id) <= maxSessionID
	for i := 0; ok && i < len(id); i++ {
		b := id[i]
		ok = 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '-' || b == '_' || b == '.'
	}
	if !ok {
		return fmt.Errorf("invalid session id %s: want 1 to %d letters, digits, '-', '_' or '.'", describeID(id), maxSessionID)
	}
	return nil
}

// describeID shows an id that failed checkSessionID: quoted (control
// characters escaped) and cut short, with its length.
func describeID(id string) string {
	return fmt.Sprintf("%q (%d bytes)", truncate(id, 16), len(id))
}

// truncate cuts s to at most n bytes, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// jsonText is a JSON string's value, or any other JSON value's text.
func jsonText(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

// timeLayouts are the ISO-8601 forms servers send; fractional seconds are
// accepted after the seconds by time.Parse. A time without a zone is UTC.
var timeLayouts = []string{
	time.RFC3339,
	"2006-01-02T15:04:05Z0700",
	"2006-01-02T15:04:05",
	"2006-01-02 15:04:05Z07:00",
	"2006-01-02 15:04:05Z0700",
	"2006-01-02 15:04:05",
	"2006-01-02T15:04Z07:00",
	"2006-01-02T15:04",
	"2006-01-02",
}

func parseTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	for _, layout := range timeLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("time %q is not ISO-8601", s)
}

// renewLoop renews the session ahead of its end until the client closes.
// A failed renewal is retried after minRenewInterval, doubling per failure
// up to maxRenewBackoff.
func (c *Client) renewLoop() {
	defer close(c.loopDone)
	failures := 0
	for {
		var fire <-chan time.Time
		stop := func() bool { return false }
		if wait, ok := c.untilRenewal(failures); ok {
			fire, stop = c.clock.NewTimer(wait)
		}
		select {
		case <-c.life.Done():
			stop()
			return
		case <-c.swapped:
			failures = 0
			stop()
			continue
		case <-fire:
		}
		c.renewMu.Lock()
		_, err := c.renewLocked(c.life, "renewed before expiry")
		c.renewMu.Unlock()
		if err != nil {
			if c.life.Err() != nil {
				return
			}
			failures++
			c.log.Warn("datamesh session renewal failed; will retry", "error", err.Error(), "failures", failures,
				"retry_in", renewBackoff(failures))
			continue
		}
		// Our own swap: already rescheduled by this loop.
		failures = 0
		select {
		case <-c.swapped:
		default:
		}
	}
}

// untilRenewal is the wait before the next scheduled renewal, or false when
// the session has no known end. After failures it is renewBackoff. It is
// never less than what keeps requests for a session minRenewInterval apart.
func (c *Client) untilRenewal(failures int) (time.Duration, bool) {
	c.mu.RLock()
	cur, lastAsk := c.cur, c.lastAsk
	c.mu.RUnlock()
	if cur == nil || cur.info.EndTime.IsZero() {
		return 0, false
	}
	now := c.clock.Now()
	wait := renewalWait(cur.info, cur.acquired, now)
	if failures > 0 {
		wait = renewBackoff(failures)
	}
	return max(wait, spacingWait(cur.acquired, lastAsk, now, renewSpacing(cur.info, cur.acquired))), true
}

// renewBackoff is the wait after the given number of failed renewals in a
// row: minRenewInterval doubled per failure, capped at maxRenewBackoff.
func renewBackoff(failures int) time.Duration {
	d := minRenewInterval
	for i := 1; i < failures && d < maxRenewBackoff; i++ {
		d *= 2
	}
	return min(d, maxRenewBackoff)
}

// spacingWait is how long until a new session may be requested: not before
// minRenewInterval after the one in use was acquired or the last request.
func spacingWait(acquired, lastAsk, now time.Time, interval time.Duration) time.Duration {
	last := acquired
	if lastAsk.After(last) {
		last = lastAsk
	}
	return last.Add(interval).Sub(now)
}

// renewSpacing is the least time between two requests for sessions:
// minRenewInterval, or half the lifetime of a shorter session (at least
// minShortRenewInterval), so that a short session is renewed (and its
// writes made final at the checkpoint) before it ends.
func renewSpacing(info Info, acquired time.Time) time.Duration {
	lifetime := info.EndTime.Sub(info.CreationTime)
	if info.CreationTime.IsZero() || lifetime <= 0 {
		lifetime = info.EndTime.Sub(acquired)
	}
	if info.EndTime.IsZero() || lifetime >= 2*minRenewInterval {
		return minRenewInterval
	}
	return max(lifetime/2, minShortRenewInterval)
}

// renewalWait is when to renew a session acquired at acquired: renewLead
// before its end, or at half its lifetime when it is too short for that.
// The lifetime comes from the gateway's own times when it has both, so a
// skewed local clock does not matter. A session already due gives 0.
func renewalWait(info Info, acquired, now time.Time) time.Duration {
	lifetime := info.EndTime.Sub(info.CreationTime)
	if info.CreationTime.IsZero() || lifetime <= 0 {
		lifetime = info.EndTime.Sub(acquired)
	}
	var after time.Duration
	if lifetime >= 2*renewLead {
		after = lifetime - renewLead
	} else {
		after = lifetime / 2
	}
	return max(acquired.Add(after).Sub(now), 0)
}

// recoverUnauthorized renews the session once for every caller whose request
// with session id rejected got a 401. A caller whose id was already replaced
// returns at once and retries with the current one. A session refused soon
// after it was acquired is renewed only minRenewInterval after it was, so
// that a gateway refusing every session gets one request a minRenewInterval.
func (c *Client) recoverUnauthorized(ctx context.Context, rejected string) error {
	ch := c.renewals.DoChan(rejected, func() (any, error) {
		c.renewMu.Lock()
		defer c.renewMu.Unlock()
		id, err := c.sessionID()
		if err != nil {
			return nil, err
		}
		if id != rejected {
			return nil, nil
		}
		if err := c.waitSpacing(rejected); err != nil {
			return nil, err
		}
		c.log.Info("datamesh session refused by the gateway; renewing", "session", rejected)
		_, err = c.renewLocked(c.life, reasonUnauthorized)
		return nil, err
	})
	select {
	case res := <-ch:
		return res.Err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// waitSpacing waits until a new session may be requested, or the client
// closes. renewMu is held, so the session in use stays.
func (c *Client) waitSpacing(id string) error {
	c.mu.RLock()
	wait := spacingWait(c.cur.acquired, c.lastAsk, c.clock.Now(), renewSpacing(c.cur.info, c.cur.acquired))
	c.mu.RUnlock()
	if wait <= 0 {
		return nil
	}
	c.log.Info("datamesh session refused soon after it was acquired; waiting before renewing", "session", id, "wait", wait)
	fire, stop := c.clock.NewTimer(wait)
	select {
	case <-fire:
		return nil
	case <-c.life.Done():
		stop()
		return &Error{Op: "renew session", Err: ErrClosed}
	}
}

// Close ends the session on the gateway and stops renewal. It is idempotent
// and safe to call concurrently (a signal handler and a normal shutdown):
// every caller gets the first Close's result. 404 and 410 mean the session
// was already closed. After Close, zarr requests fail with ErrClosed.
//
// The DELETE follows ctx: on shutdown pass a fresh bounded context (not the
// one a signal just cancelled), or the session is left to expire at its
// end_time.
func (c *Client) Close(ctx context.Context) error { return c.CloseFinal(ctx, false) }

// CloseFinal is Close, with finalise_write=finalise: true makes the writes
// staged in the session final, false discards them. It first waits (within
// ctx) for writes in flight; new ones fail with ErrClosed. A finalise that
// fails, or finds the session already gone while it had writes staged
// (ErrNotFinalised), is an error, and those keys are reported failed by
// WriteReport. Only the first call's finalise counts: later calls get its
// result. The caller decides: finalise only when WriteReport().OK().
func (c *Client) CloseFinal(ctx context.Context, finalise bool) error {
	c.closeOnce.Do(func() {
		go func() {
			c.closeErr = c.close(ctx, finalise)
			close(c.closeDone)
		}()
	})
	select {
	case <-c.closeDone:
		return c.closeErr
	case <-ctx.Done():
		return &Error{Op: "close session", Err: context.Cause(ctx)}
	}
}

// close does the work of Close; the DELETE tries follow the first caller's
// ctx.
func (c *Client) close(ctx context.Context, finalise bool) error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.endLife() // stops the loop and aborts in-flight acquires

	c.renewMu.Lock() // waits for an in-flight renewal to give up
	started := c.loopStarted
	c.mu.Lock()
	cur := c.cur
	c.cur = nil
	c.mu.Unlock()
	c.renewMu.Unlock()
	if started {
		<-c.loopDone
	}

	var err error
	// Writes in flight belong to the session: let them land before it
	// closes. The hold is never released: the client is closed.
	if derr := c.writes.holdAndDrain(ctx); derr != nil {
		err = &Error{Op: "close session", Err: fmt.Errorf("writes still in flight: %w", derr)}
		if cur != nil {
			// Not closed, so not final: the gateway expires it. Its writes
			// must still show in WriteReport.
			if finalise {
				c.writes.settle(cur.info.ID, false, err)
			} else {
				c.writes.settle(cur.info.ID, false, nil)
			}
		}
	}
	if cur != nil && err == nil {
		id := cur.info.ID
		staged := c.writes.hasStaged(id)
		err = c.closeSession(ctx, id, finalise, finalise && staged)
		switch {
		case err != nil:
			c.log.Warn("datamesh session close failed", "session", id, "finalise_write", finalise, "error", err.Error())
			if finalise {
				keys, _ := c.writes.settle(id, false, err)
				if keys > 0 {
					c.log.Error("datamesh writes not finalised", "session", id, "keys", keys)
				}
			}
		case finalise:
			keys, deletes := c.writes.settle(id, true, nil)
			c.log.Info("datamesh session closed, writes finalised", "session", id, "keys", keys, "deletes", deletes)
		default:
			keys, _ := c.writes.settle(id, false, nil)
			if keys > 0 {
				c.log.Warn("datamesh session closed without finalising; its writes are discarded", "session", id, "keys", keys)
			} else {
				c.log.Info("datamesh session closed", "session", id)
			}
		}
	}
	waited := make(chan struct{})
	go func() {
		c.background.Wait()
		close(waited)
	}()
	select {
	case <-waited:
	case <-ctx.Done():
	}
	c.http.CloseIdleConnections()
	return err
}

// CloseSession closes a session this client does not hold: one left open by
// a process that was killed before it could close its own. 404 and 410 mean
// it was already closed or has expired. Failures are retried on the
// CloseBackoff schedule, within ctx.
func (c *Client) CloseSession(ctx context.Context, id string) error {
	if id == "" {
		return &Error{Op: "close session", Err: errors.New("empty session id")}
	}
	// The id may come from a file: nothing that is not one leaves.
	if err := checkSessionID(id); err != nil {
		return &Error{Op: "close session", Err: err}
	}
	return c.closeSession(ctx, id, false, false)
}

// closeSession deletes session id, retrying failures on the CloseBackoff
// schedule. 404 and 410 mean already closed; but when mustFinalise (writes
// are staged) they mean the writes were not made final, unless an earlier
// try went unanswered: that try may have finalised it.
func (c *Client) closeSession(ctx context.Context, id string, finalise, mustFinalise bool) error {
	var err error
	unanswered := false
	for i := 0; ; i++ {
		var status int
		status, err = c.deleteSession(ctx, id, finalise)
		if err == nil && mustFinalise && !unanswered && (status == http.StatusNotFound || status == http.StatusGone) {
			return &Error{Op: "finalise session", Method: http.MethodDelete, URL: redactURL(c.gateway + "/session/" + pathEscape(id)),
				Status: status, Err: ErrNotFinalised}
		}
		var e *Error
		if err != nil && errors.As(err, &e) && e.Status == 0 {
			unanswered = true
		}
		if err == nil || isPermanent(err) || ctx.Err() != nil || i >= len(c.cfg.CloseBackoff) {
			return err
		}
		t := time.NewTimer(c.cfg.CloseBackoff[i])
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// closeBestEffort deletes a replaced session with one try under its own
// deadline; the gateway expires it anyway.
func (c *Client) closeBestEffort(id string) {
	// Bounded even when ReadTimeout is None: nobody waits for this.
	d := c.cfg.ReadTimeout
	if d < 0 {
		d = DefaultReadTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if _, err := c.deleteSession(ctx, id, false); err != nil {
		c.log.Warn("datamesh previous session not closed; it will expire", "session", id, "error", err.Error())
		return
	}
	c.log.Info("datamesh previous session closed", "session", id)
}

// deleteSession sends one DELETE for session id and returns the status;
// the error is nil for 204, 200, 404 and 410.
func (c *Client) deleteSession(ctx context.Context, id string, finalise bool) (int, error) {
	r := request{
		op:        "close session",
		method:    http.MethodDelete,
		url:       c.gateway + "/session/" + pathEscape(id) + "?finalise_write=" + strconv.FormatBool(finalise),
		sessionID: id,
		timeout:   c.cfg.ReadTimeout,
		noRetry:   true,
	}
	if finalise {
		r.op = "finalise session"
	}
	resp, err := c.do(ctx, r)
	if err != nil {
		return 0, err
	}
	switch resp.status {
	case http.StatusNoContent, http.StatusOK, http.StatusNotFound, http.StatusGone:
		return resp.status, nil
	}
	return resp.status, c.statusError(r, resp)
}

// checkpoint finalises old, the session just replaced at a planned renewal,
// with writes held. Its own deadline, not the client's life: Close waits
// for it rather than cut a finalise short.
func (c *Client) checkpoint(old, next string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.life), finaliseBudget)
	defer cancel()
	if err := c.closeSession(ctx, old, true, true); err != nil {
		keys, _ := c.writes.settle(old, false, err)
		c.log.Error("datamesh write checkpoint failed: writes of the previous session not finalised",
			"session", old, "next", next, "keys", keys, "error", err.Error())
		return
	}
	keys, deletes := c.writes.settle(old, true, nil)
	c.log.Info("datamesh write checkpoint: previous session finalised", "session", old, "next", next,
		"keys", keys, "deletes", deletes)
}
