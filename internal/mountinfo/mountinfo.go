// Package mountinfo reads the kernel's mount table (/proc/self/mountinfo).
package mountinfo

import (
	"bufio"
	"io"
	"os"
	"strconv"
	"strings"
)

// Entry is one line of /proc/self/mountinfo, the fields dmfs needs.
type Entry struct {
	Mountpoint string
	FSType     string
	Source     string
	Device     string // "major:minor" of the mounted filesystem
}

// Parse reads mountinfo: "id parent maj:min root mountpoint opts ... - fstype source superopts".
func Parse(r io.Reader) ([]Entry, error) {
	var out []Entry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+2 >= len(fields) {
			continue
		}
		out = append(out, Entry{
			Device:     fields[2],
			Mountpoint: unescape(fields[4]),
			FSType:     fields[sep+1],
			Source:     unescape(fields[sep+2]),
		})
	}
	return out, sc.Err()
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Find returns the entry of this process's mount table at path, if any.
func Find(path string) (Entry, bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return Entry{}, false, err
	}
	defer f.Close()
	mounts, err := Parse(f)
	if err != nil {
		return Entry{}, false, err
	}
	for i := len(mounts) - 1; i >= 0; i-- { // the last mount on a path is the visible one
		if mounts[i].Mountpoint == path {
			return mounts[i], true, nil
		}
	}
	return Entry{}, false, nil
}
