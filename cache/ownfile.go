package cache

import (
	"context"
	"errors"
	"fmt"
)

// ErrNoOwnFile is returned by OwnFile when the cache keeps no memory files (Options.HeapOnly,
// or none on this system).
var ErrNoOwnFile = errors.New("cache: no memory files")

// OwnFileMin is the least size of a value kept in a memory file of its own (see
// Options.OwnFileMin); ok is false when the cache keeps no memory files.
func (c *Cache) OwnFileMin() (n int64, ok bool) {
	if c.mem == nil {
		return 0, false
	}
	return c.mem.ownMin, true
}

// OwnFile returns key's whole value as a piece of a memory file of its own: the value from
// offset 0, the file exactly as long, so that the kernel can be given the file to read from
// directly (FUSE passthrough). The value is found or fetched as by ReadAt, except that one read
// in place from the disk tier, kept in the heap or sharing the memory file is copied into a
// file of its own, which then replaces it in the cache. Release the piece once the file is no
// longer used here (a kernel given the file keeps it open itself).
func (c *Cache) OwnFile(ctx context.Context, key string, fetch FetchFunc, opts ...FetchOption) (Piece, error) {
	if c.mem == nil {
		return Piece{}, ErrNoOwnFile
	}
	for try := 0; ; try++ {
		c.mu.Lock()
		v, ok := c.heldLocked(key)
		c.mu.Unlock()
		if !ok {
			if v, ok, err := c.ownFromDisk(key, opts); ok || err != nil {
				if err != nil {
					return Piece{}, err
				}
				return v.piece(0, int(v.size())), nil
			}
			// A flight that found the value on disk leaves it there; should the entry go
			// before it is copied here, the second try reads it into memory.
			var err error
			v, err = c.get(ctx, key, fetch, opts, try > 0)
			if errors.Is(err, errLeftOnDisk) {
				continue
			}
			if err != nil {
				return Piece{}, err
			}
		} else {
			c.hits.Add(1)
		}
		if v.mem == nil || !v.mem.own {
			var err error
			if v, err = c.toOwnFile(key, v); err != nil {
				return Piece{}, err
			}
		}
		return v.piece(0, int(v.size())), nil
	}
}

// ownFromDisk copies key's value from the disk tier (see inPlace) into a memory file of its
// own, kept in memory as the key's value; ok is false when the disk does not hold it. The copy
// is held for the caller.
func (c *Cache) ownFromDisk(key string, opts []FetchOption) (v value, ok bool, err error) {
	df, ok := c.inPlace(key, opts)
	if !ok {
		return value{}, false, nil
	}
	own, err := c.ownCopy(c.disk.filePiece(df, 0, int(df.size)))
	if err != nil {
		return value{}, false, fmt.Errorf("cache: copying %q from the disk: %w", key, err)
	}
	c.hits.Add(1)
	nv := value{mem: own}
	at := fetchOption(opts).diskAt(df.at)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entryLocked(key, false); !ok {
		c.addLocked(key, dataEntry{value: nv.hold(), at: at}) // its size: see inPlace
	}
	return nv, true, nil
}

// ownCopy copies the whole of p into a new memory file of its own, through a reused buffer,
// and releases p. The copy holds one reference.
func (c *Cache) ownCopy(p Piece) (*memValue, error) {
	defer p.Release()
	own, err := c.mem.allocOwn(int64(p.Len()))
	if err != nil {
		return nil, err
	}
	if err := copyPiece(own, p); err != nil {
		own.release()
		return nil, err
	}
	return own, nil
}

// copyPiece writes the bytes of p to w from offset 0, through a reused buffer.
func copyPiece(w *memValue, p Piece) error {
	if p.file == nil {
		_, err := w.WriteAt(p.data, 0)
		return err
	}
	bp := checkBuffers.Get().(*[]byte)
	defer checkBuffers.Put(bp)
	buf := *bp
	for done := 0; done < p.n; {
		m, err := p.file.ReadAt(buf[:min(len(buf), p.n-done)], p.off+int64(done))
		if m > 0 {
			if _, err := w.WriteAt(buf[:m], int64(done)); err != nil {
				return err
			}
			done += m
		}
		if err != nil && done < p.n {
			return err
		}
	}
	return nil
}

// toOwnFile copies v, held for the caller, into a memory file of its own, and gives v back. The
// copy replaces v as key's cached value if v still is, and is held for the caller.
func (c *Cache) toOwnFile(key string, v value) (value, error) {
	own, err := c.ownCopy(v.hold().piece(0, int(v.size())))
	v.release()
	if err != nil {
		return value{}, fmt.Errorf("cache: copying %q into a memory file: %w", key, err)
	}
	nv := value{mem: own}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch e, ok := c.entryLocked(key, false); {
	case !ok || !e.value.same(v):
	case c.oversizeKey == key:
		c.oversize.value = nv.hold()
		e.release()
	default:
		c.data.Add(key, dataEntry{value: nv.hold(), at: e.at})
		e.release()
	}
	return nv, nil
}

// same says whether v and w are the same bytes (not merely equal ones).
func (v value) same(w value) bool {
	if v.mem != nil || w.mem != nil {
		return v.mem == w.mem
	}
	return len(v.bytes) > 0 && len(v.bytes) == len(w.bytes) && &v.bytes[0] == &w.bytes[0]
}
