package mountstat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"syscall"
	"time"
)

// statusPath is where the status socket answers.
const statusPath = "/v1/status"

// maxSnapshot bounds a snapshot read by Fetch: a few kilobytes are real.
const maxSnapshot = 1 << 20

// Handler answers GET /v1/status with snapshot() as JSON.
func Handler(snapshot func() Snapshot) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+statusPath, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		json.NewEncoder(w).Encode(snapshot())
	})
	return mux
}

// Server is an HTTP server of this package (status or metrics).
type Server struct {
	srv  *http.Server
	done chan struct{}
}

// serve serves h on l until Close.
func serve(l net.Listener, h http.Handler, log *slog.Logger) *Server {
	s := &Server{
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       time.Minute,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		},
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("status server stopped", "addr", l.Addr().String(), "err", err)
		}
	}()
	return s
}

// Close stops the server and waits for it: a request being answered gets a
// second to finish.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = s.srv.Close()
	}
	<-s.done
	return err
}

// Serve answers `dmfs status` on l, a unix socket in the private state
// folder, with snapshot(). Connections from processes of other users
// (root excepted) are closed unanswered: the folder keeps them out
// already, and the snapshot names the session.
func Serve(l *net.UnixListener, snapshot func() Snapshot, log *slog.Logger) *Server {
	return serve(peerListener{l, log}, Handler(snapshot), log)
}

// peerListener accepts only connections from this user's processes or
// root's, by the peer credentials the kernel gives.
type peerListener struct {
	*net.UnixListener
	log *slog.Logger
}

func (p peerListener) Accept() (net.Conn, error) {
	for {
		c, err := p.AcceptUnix()
		if err != nil {
			return nil, err
		}
		uid, err := peerUID(c)
		if err == nil && (uid == uint32(os.Geteuid()) || uid == 0) {
			return c, nil
		}
		p.log.Warn("status socket: connection refused", "peer_uid", uid, "err", err)
		c.Close()
	}
}

func peerUID(c *net.UnixConn) (uint32, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, credErr
	}
	return cred.Uid, nil
}

// Fetch asks a mount for its snapshot over the connection dial makes (the
// mount's status socket), within ctx.
func Fetch(ctx context.Context, dial func(context.Context) (net.Conn, error)) (Snapshot, error) {
	tr := &http.Transport{
		DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	return fetch(ctx, &http.Client{Transport: tr}, "http://dmfs")
}

func fetch(ctx context.Context, client *http.Client, base string) (Snapshot, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+statusPath, nil)
	if err != nil {
		return Snapshot{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		if ue, ok := err.(*url.Error); ok {
			err = ue.Err // not "Get http://dmfs/...": the socket is the address
		}
		return Snapshot{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Snapshot{}, fmt.Errorf("status socket answered %s", resp.Status)
	}
	if ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); ct != "application/json" {
		return Snapshot{}, fmt.Errorf("status socket answered %q, not JSON", ct)
	}
	var s Snapshot
	dec := json.NewDecoder(io.LimitReader(resp.Body, maxSnapshot))
	if err := dec.Decode(&s); err != nil {
		return Snapshot{}, fmt.Errorf("status socket: reading the answer: %w", err)
	}
	return s, nil
}
