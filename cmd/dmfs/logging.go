package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
)

// hangups delivers SIGHUP (set by main; nil in tests that call run). A
// mount reopens its log file on SIGHUP, as daemons do for logrotate; it
// never unmounts on it.
var hangups <-chan os.Signal

// logOutput is where a mount logs: a file that SIGHUP reopens once
// logrotate has moved it, or a terminal or pipe, which stays.
type logOutput struct {
	mu sync.Mutex
	w  io.Writer
	// open opens the log file again; nil when there is nothing to reopen.
	open func() (*os.File, error)
	// stderr: w is this process's stderr (a background mount's log), so a
	// reopened file replaces file descriptor 2 too, and with it what
	// panics and the programs dmfs starts write.
	stderr bool
	// terminal: w is where the command's own messages go (a foreground
	// mount without --log-file), so a failure is said once, as a message.
	terminal bool
}

func (l *logOutput) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

var errNoLogFile = errors.New("the log goes to a terminal or a pipe, not a file")

// reopen opens the log file again, by name, and writes there from now on.
func (l *logOutput) reopen() error {
	if l.open == nil {
		return errNoLogFile
	}
	f, err := l.open()
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stderr {
		defer f.Close()
		return syscall.Dup3(int(f.Fd()), 2, 0)
	}
	if old, ok := l.w.(io.Closer); ok {
		old.Close()
	}
	l.w = f
	return nil
}

// terminalHandler is a slog handler for messages a person reads on the
// terminal, not a log: "dmfs unmount: message (key value, ...)".
type terminalHandler struct {
	w      io.Writer
	prefix string
	level  slog.Level // the least shown; 0 is info
	attrs  []slog.Attr
}

func (h *terminalHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *terminalHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(h.prefix)
	if r.Level >= slog.LevelWarn {
		b.WriteString("warning: ")
	}
	b.WriteString(r.Message)
	var parts []string
	add := func(a slog.Attr) bool {
		parts = append(parts, a.Key+" "+cleanText(a.Value.Resolve().String()))
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	if len(parts) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(parts, ", "))
	}
	b.WriteByte('\n')
	_, err := io.WriteString(h.w, b.String())
	return err
}

func (h *terminalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return &c
}

func (h *terminalHandler) WithGroup(string) slog.Handler { return h }
