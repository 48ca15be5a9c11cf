package mountstat

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// WriteText writes mounts for people: one block each, blank-line
// separated. now dates the session's remaining time.
func WriteText(w io.Writer, mounts []Mount, now time.Time) {
	if len(mounts) == 0 {
		fmt.Fprintln(w, "no dmfs mounts")
		return
	}
	for i, m := range mounts {
		if i > 0 {
			fmt.Fprintln(w)
		}
		writeMount(w, m, now)
	}
}

func writeMount(w io.Writer, m Mount, now time.Time) {
	head := clean(m.Mountpoint) + "  " + m.State
	var about []string
	if m.PID > 0 {
		about = append(about, fmt.Sprintf("pid %d", m.PID))
	}
	if m.State == StateRunning {
		if m.Write {
			about = append(about, "read-write")
		} else {
			about = append(about, "read-only")
		}
		if m.PassthroughMinBytes > 0 {
			about = append(about, "passthrough from "+humanBytes(m.PassthroughMinBytes))
		}
	}
	if len(about) > 0 {
		head += " (" + strings.Join(about, ", ") + ")"
	}
	if m.Problem != "" {
		head += ": " + clean(m.Problem)
	}
	fmt.Fprintln(w, head)
	line := func(label, format string, args ...any) {
		fmt.Fprintf(w, "  %-9s %s\n", label, fmt.Sprintf(format, args...))
	}
	switch {
	case m.Service != "" && m.Gateway != "" && m.Gateway != m.Service:
		line("service", "%s (gateway %s)", clean(m.Service), clean(m.Gateway))
	case m.Service != "":
		line("service", "%s", clean(m.Service))
	case m.Gateway != "":
		line("gateway", "%s", clean(m.Gateway))
	}
	if m.Session.ID != "" {
		s := clean(m.Session.ID)
		if !m.Session.EndTime.IsZero() {
			s += " until " + m.Session.EndTime.UTC().Format("2006-01-02 15:04:05 UTC")
			if left := m.Session.EndTime.Sub(now); left > 0 {
				s += fmt.Sprintf(" (in %s)", left.Round(time.Second))
			} else {
				s += " (ended)"
			}
		}
		line("session", "%s", s)
	}
	if m.Log != "" {
		line("log", "%s", clean(m.Log))
	}
	if c := m.Cache; c != nil {
		line("cache", "%s of %s in %d entries; %d hits, %d misses, %d fetch errors",
			humanBytes(c.Bytes), humanBytes(c.MaxBytes), c.Entries, c.Hits, c.Misses, c.FetchErrors)
		if d := c.Disk; d != nil {
			line("disk", "%s of %s; %d hits, %d writes, %d evictions, %d damaged entries dropped",
				humanBytes(d.Bytes), humanBytes(d.MaxBytes), d.Hits, d.Writes, d.Evictions, d.Corrupt)
		}
	}
	if m.Requests != nil {
		var kinds []string
		var errs, inFlight int64
		var errKinds []string
		for _, k := range Kinds {
			r := m.Requests[k]
			if r.Total > 0 {
				kinds = append(kinds, fmt.Sprintf("%s %d", k, r.Total))
			}
			if r.Errors > 0 {
				errKinds = append(errKinds, fmt.Sprintf("%s %d", k, r.Errors))
			}
			errs += r.Errors
			inFlight += r.InFlight
		}
		if len(kinds) == 0 {
			kinds = []string{"none"}
		}
		s := strings.Join(kinds, ", ") + fmt.Sprintf("; %d in flight; %d errors", inFlight, errs)
		if len(errKinds) > 0 {
			s += " (" + strings.Join(errKinds, ", ") + ")"
		}
		line("requests", "%s", s)
	}
	if u := m.Uploads; u != nil {
		line("uploads", "%d pending (%d sending), %d uploaded, %d failed; %s of %s spooled",
			u.Pending, u.InFlight, u.Uploaded, u.Failed, humanBytes(u.SpoolBytes), humanBytes(u.SpoolMaxBytes))
	}
	if m.Metrics != "" {
		line("metrics", "%s", clean(m.Metrics))
	}
}

// humanBytes is n in the largest binary unit it reaches, one decimal.
func humanBytes(n int64) string {
	const units = "KMGTPE"
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n)/1024, 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, units[i])
}

// clean quotes s when it holds what a terminal should not print as is (a
// path may hold any byte but NUL).
func clean(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
