package zarr

import "errors"

// Consolidated metadata (a .zmetadata document, or consolidated_metadata
// inline in a v3 root zarr.json) can be big. It is read one entry at a time:
// each entry is parsed, checked and turned into the per-node file the
// hierarchy serves, then its parsed form is dropped, so that opening a store
// never holds the whole document as a parsed tree.

// pendingNode is one checked entry of consolidated metadata, not yet added to
// the tree: a later entry with the same key replaces it (the last wins, as in
// a Python dict), so entries are added, or their errors reported, only once
// the whole document has been read.
type pendingNode struct {
	key    string // the entry's key, for errors about the document as a whole
	format int    // Zarr format of a metadata entry (2 or 3); 0 for an ignored one
	path   string // folder of the node
	kind   nodeKind
	file   string // metadata file name; "" for an entry that is ignored
	data   []byte // the file's bytes, reserved toward the hierarchy's total
	array  *Array
	err    error
}

// pendingNodes are the entries of one consolidated "metadata" object, in the
// order of their first appearance.
type pendingNodes struct {
	list  []pendingNode
	index map[string]int // entry key -> position in list
}

func newPendingNodes() *pendingNodes {
	return &pendingNodes{index: map[string]int{}}
}

// set records the entry key, replacing an earlier one of the same key.
func (n *pendingNodes) set(b *builder, key string, node pendingNode) {
	if i, ok := n.index[key]; ok {
		b.release(len(n.list[i].data))
		n.list[i] = node
		return
	}
	n.index[key] = len(n.list)
	n.list = append(n.list, node)
}

// discard releases the entries of a "metadata" member that a later one
// replaces.
func (n *pendingNodes) discard(b *builder) {
	if n == nil {
		return
	}
	for i := range n.list {
		b.release(len(n.list[i].data))
	}
}

// add adds the entries to the tree, or returns the error of the first
// entry found bad.
func (n *pendingNodes) add(b *builder) error {
	for i := range n.list {
		node := &n.list[i]
		if node.err != nil {
			return node.err
		}
		if node.file == "" {
			continue
		}
		if err := b.addNode(node.path, node.kind, node.file, node.data, node.array); err != nil {
			return err
		}
	}
	return nil
}

// canonical returns the canonical JSON of an entry's value, the file zarr
// would have written for it, in a slice of exactly its size, with its bytes
// reserved. scratch is reused between entries.
func (b *builder) canonical(key string, v *jsonValue, scratch *[]byte) ([]byte, error) {
	b.mu.Lock()
	room := b.lim.total - b.held
	b.mu.Unlock()
	out, ok := appendCanonicalLimited((*scratch)[:0], v, room)
	*scratch = out
	if !ok {
		return nil, b.overTotal(key)
	}
	if err := b.reserve(key, len(out)); err != nil {
		return nil, err
	}
	data := make([]byte, len(out)) // exactly: the file is kept for the hierarchy's life
	copy(data, out)
	return data, nil
}

// stopError carries out of the JSON parser an error that ends the reading of
// a document and already names the store and the key at fault (a limit),
// as opposed to a syntax error, which the caller words.
type stopError struct{ err error }

func (e *stopError) Error() string { return e.err.Error() }
func (e *stopError) Unwrap() error { return e.err }

// documentError words an error met while reading the document key.
func (b *builder) documentError(key string, err error) error {
	if stop, ok := errors.AsType[*stopError](err); ok {
		return stop.err
	}
	return b.errorf(key, "%v", err)
}

// streamEntries reads the consolidated "metadata" object at p, at nesting
// depth, handing each entry's key and parsed value to entry.
func streamEntries(p *jsonParser, depth int, b *builder, entry func(key string, v *jsonValue, scratch *[]byte) (pendingNode, error)) (*pendingNodes, error) {
	nodes := newPendingNodes()
	var scratch []byte
	err := p.members(depth, func(key string) error {
		v, err := p.value(depth + 1)
		if err != nil {
			return err
		}
		node, err := entry(key, &v, &scratch)
		if err != nil {
			return &stopError{err}
		}
		nodes.set(b, key, node)
		return nil
	})
	if err != nil {
		nodes.discard(b)
		return nil, err
	}
	return nodes, nil
}
