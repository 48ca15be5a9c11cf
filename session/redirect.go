package session

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// maxRedirects bounds the redirects followed within one origin: a loop ends
// after maxRedirects+1 requests.
const maxRedirects = 3

// checkRedirect is the client's redirect policy. Every request carries the
// token and the session id, and net/http copies custom headers such as
// X-DATAMESH-TOKEN to any redirect target (it strips only Authorization and
// cookies, and only for another host), so a redirect is followed only
// within the origin (scheme, host and port) of the first request, without a
// change of method, at most maxRedirects times. Anything else is refused
// before a request is sent, as a permanent error naming both origins.
func checkRedirect(req *http.Request, via []*http.Request) error {
	first := via[0]
	from, to := origin(first.URL), origin(req.URL)
	if from != to {
		return permanentError{fmt.Errorf("%w from %s to %s: another origin", ErrRedirect, from, to)}
	}
	if req.Method != first.Method {
		return permanentError{fmt.Errorf("%w within %s: it turns %s into %s", ErrRedirect, from, first.Method, req.Method)}
	}
	if len(via) > maxRedirects {
		return permanentError{fmt.Errorf("%w: more than %d redirects within %s", ErrRedirect, maxRedirects, from)}
	}
	return nil
}

// origin is scheme://host:port with the scheme's default port made
// explicit, so that http://h and http://h:80 compare equal. It has no path,
// query or user info: it may appear in messages.
func origin(u *url.URL) string {
	scheme := strings.ToLower(u.Scheme)
	port := u.Port()
	if port == "" {
		switch scheme {
		case "http":
			port = "80"
		case "https":
			port = "443"
		}
	}
	return scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}
