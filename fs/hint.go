package fs

import "strings"

// chunkBytes is the uncompressed size of the chunk at key (store path) in
// the tree as loaded, 0 if unknown: a hint that lets the store fetch a large
// chunk in parallel parts. The array is the nearest folder above key that
// holds one (nested keys such as t2m/0/0/0 have folders of chunks between).
func (d *datasource) chunkBytes(key string) int64 {
	d.mu.Lock()
	h := d.cur.h
	d.mu.Unlock()
	if h == nil {
		return 0
	}
	for dir := key; ; {
		i := strings.LastIndexByte(dir, '/')
		if i < 0 {
			dir = ""
		} else {
			dir = dir[:i]
		}
		if f, ok := h.Folder(dir); ok && f.Array != nil {
			return f.Array.ChunkBytes()
		}
		if dir == "" {
			return 0
		}
	}
}
