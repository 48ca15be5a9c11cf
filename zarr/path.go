package zarr

import (
	"errors"
	"strings"
)

// maxKeyLen bounds a key; no filesystem takes longer paths.
const maxKeyLen = 4096

// ValidKey reports whether a store key is a safe relative path: non-empty
// "/"-separated segments, none of them "." or "..", no NUL or backslash, not
// absolute. Every name that reaches the filesystem passes through it, whatever
// the server sent.
func ValidKey(key string) error {
	switch {
	case key == "":
		return errors.New("empty key")
	case len(key) > maxKeyLen:
		return errors.New("key too long")
	case strings.HasPrefix(key, "/"):
		return errors.New("absolute key")
	case strings.ContainsRune(key, 0):
		return errors.New("key contains NUL")
	case strings.ContainsRune(key, '\\'):
		return errors.New("key contains a backslash")
	}
	for seg := range strings.SplitSeq(key, "/") {
		switch seg {
		case "":
			return errors.New("key has an empty segment")
		case ".", "..":
			return errors.New("key has a '.' or '..' segment")
		}
	}
	return nil
}

// joinKey joins a folder path and a name; "" is the root.
func joinKey(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// splitKey splits a key into its folder and last segment.
func splitKey(key string) (dir, name string) {
	i := strings.LastIndexByte(key, '/')
	if i < 0 {
		return "", key
	}
	return key[:i], key[i+1:]
}
