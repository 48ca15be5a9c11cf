package zarr

import (
	"context"
	"fmt"
)

// loadV3 reads a v3 hierarchy from its root zarr.json (already reserved):
// from the consolidated metadata inline in it when present, else by listing
// groups.
func (b *builder) loadV3(ctx context.Context, s Store, raw []byte) error {
	p := jsonParser{data: raw}
	if !p.atObject() {
		root, err := parseJSON(raw)
		if err != nil {
			return b.errorf(zarrJSONName, "%v", err)
		}
		_, err = b.addV3Node("", &root, raw) // fails: not an object
		return err
	}
	// The root's own members are kept parsed (they are small); its
	// consolidated metadata, which can be big, is read entry by entry.
	var (
		root         = objectBuilder{v: jsonValue{kind: jsonObject}}
		consolidated *v3Consolidated // nil when absent or null
	)
	err := p.members(0, func(key string) error {
		if key != "consolidated_metadata" {
			v, err := p.value(1)
			root.set(key, v)
			return err
		}
		consolidated.discard(b) // a duplicate key: the last wins
		var err error
		consolidated, err = b.readV3Consolidated(&p)
		return err
	})
	if err == nil {
		err = p.end()
	}
	if err != nil {
		consolidated.discard(b)
		return b.documentError(zarrJSONName, err)
	}
	isGroup, err := b.addV3Node("", &root.v, raw)
	if err != nil || !isGroup {
		consolidated.discard(b)
		return err
	}
	if consolidated != nil {
		return consolidated.add(b)
	}
	return b.walkV3(ctx, s)
}

// v3Consolidated is what a root zarr.json's consolidated_metadata held.
type v3Consolidated struct {
	err   error         // the value is not as the spec says
	nodes *pendingNodes // its entries, when err is nil
}

func (c *v3Consolidated) discard(b *builder) {
	if c != nil {
		c.nodes.discard(b)
	}
}

func (c *v3Consolidated) add(b *builder) error {
	if c.err != nil {
		return c.err
	}
	return c.nodes.add(b)
}

// readV3Consolidated reads the value of consolidated_metadata at p, entry by
// entry: nil for null, else its entries or what is wrong with it. An error
// returned ends the reading of the document (see documentError).
func (b *builder) readV3Consolidated(p *jsonParser) (*v3Consolidated, error) {
	const where = zarrJSONName + " consolidated_metadata"
	if !p.atObject() {
		v, err := p.value(1)
		if err != nil || v.kind == jsonNull {
			return nil, err
		}
		return &v3Consolidated{err: b.errorf(where, "not a JSON object")}, nil
	}
	c := &v3Consolidated{}
	err := p.members(1, func(key string) error {
		if key != "metadata" {
			_, err := p.value(2)
			return err
		}
		c.nodes.discard(b) // a duplicate key: the last wins
		c.nodes = nil
		if !p.atObject() {
			_, err := p.value(2)
			return err
		}
		var err error
		c.nodes, err = streamEntries(p, 2, b, func(path string, v *jsonValue, scratch *[]byte) (pendingNode, error) {
			if err := b.validNodeKey(where+" entry", path); err != nil {
				return pendingNode{key: path, format: 3, err: err}, nil
			}
			return b.v3Entry(path, path, v, scratch)
		})
		return err
	})
	if err != nil {
		c.discard(b)
		return nil, err
	}
	if c.nodes == nil {
		c.err = b.errorf(where, "metadata is missing or not an object")
	}
	return c, nil
}

// v3Entry checks one consolidated v3 node document, the metadata of the node
// at path (already validated) recorded under key, and makes its zarr.json.
// Inline consolidated metadata (keyed by node path) and a .zmetadata holding
// zarr.json entries (keyed NODE/zarr.json, as Datamesh's ingestion writes)
// both come through here, so the two build the same tree.
func (b *builder) v3Entry(key, path string, v *jsonValue, scratch *[]byte) (pendingNode, error) {
	node := pendingNode{key: key, format: 3}
	kind, array, err := b.checkV3Node(path, v)
	if err != nil {
		node.err = err
		return node, nil
	}
	// Each node's zarr.json is the canonical JSON of its entry.
	data, err := b.canonical(joinKey(path, zarrJSONName), v, scratch)
	if err != nil {
		return pendingNode{}, err
	}
	node.path, node.kind, node.file, node.data, node.array = path, kind, zarrJSONName, data, array
	return node, nil
}

// walkV3 finds the nodes below the root group (already added) by listing
// each group and reading the zarr.json of every sub-folder; folders without
// one are not nodes.
func (b *builder) walkV3(ctx context.Context, s Store) error {
	return b.walk(ctx, s, func(ctx context.Context, lim limiter, path string) (bool, error) {
		if path == "" {
			return true, nil
		}
		key := joinKey(path, zarrJSONName)
		raw, missing, err := b.get(ctx, s, lim, key)
		if err != nil || missing {
			return false, err
		}
		value, err := parseJSON(raw)
		if err != nil {
			return false, b.errorf(key, "%v", err)
		}
		return b.addV3Node(path, &value, raw)
	})
}

// addV3Node records the node at path from its metadata v, served as data.
func (b *builder) addV3Node(path string, v *jsonValue, data []byte) (isGroup bool, err error) {
	kind, array, err := b.checkV3Node(path, v)
	if err != nil {
		return false, err
	}
	return kind == groupNode, b.addNode(path, kind, zarrJSONName, data, array)
}

// checkV3Node checks the metadata v of the node at path: a group, or an
// array whose grid it returns.
func (b *builder) checkV3Node(path string, v *jsonValue) (nodeKind, *Array, error) {
	key := joinKey(path, zarrJSONName)
	if v.kind != jsonObject {
		return 0, nil, b.errorf(key, "not a JSON object")
	}
	if err := checkFormat(v, 3); err != nil {
		return 0, nil, b.errorf(key, "%v", err)
	}
	nodeType, _ := v.get("node_type")
	if nodeType == nil {
		return 0, nil, b.errorf(key, "no node_type")
	}
	switch t, _ := nodeType.asString(); t {
	case "group":
		return groupNode, nil, nil
	case "array":
		array, err := parseV3Array(path, v)
		if err != nil {
			return 0, nil, b.errorf(key, "%v", err)
		}
		return arrayNode, array, nil
	default:
		return 0, nil, b.errorf(key, "node_type is %s, want \"group\" or \"array\"", nodeType.describe())
	}
}

// parseV3Array reads the fields of a v3 array's zarr.json that locate chunks.
func parseV3Array(path string, v *jsonValue) (*Array, error) {
	shape, err := intList(v, "shape", 0)
	if err != nil {
		return nil, err
	}
	a := &Array{Path: path, ZarrFormat: 3, Shape: shape}
	dtype, ok := v.get("data_type")
	if !ok {
		return nil, fmt.Errorf("no data_type")
	}
	if name, ok := namedConfig(dtype); ok {
		a.DType = name
	} else {
		return nil, fmt.Errorf("data_type is %s, want a name or an object with a name", dtype.describe())
	}

	grid, ok := v.get("chunk_grid")
	if !ok {
		return nil, fmt.Errorf("no chunk_grid")
	}
	if name, _ := namedConfig(grid); name != "regular" {
		return nil, fmt.Errorf("chunk_grid %s is not supported, only \"regular\"", grid.describe())
	}
	config, _ := grid.get("configuration")
	if config == nil {
		return nil, fmt.Errorf("chunk_grid has no configuration")
	}
	if a.Chunks, err = intList(config, "chunk_shape", 1); err != nil {
		return nil, fmt.Errorf("chunk_grid: %w", err)
	}

	prefix, sep, err := chunkKeyEncoding(v)
	if err != nil {
		return nil, err
	}
	if err := checkSharding(v, a.Chunks); err != nil {
		return nil, err
	}
	if a.grid, err = newChunkGrid(shape, a.Chunks, sep, prefix); err != nil {
		return nil, err
	}
	return a, nil
}

// namedConfig reads the name of a v3 extension point: a bare string or an
// object {"name": ..., "configuration": ...}.
func namedConfig(v *jsonValue) (string, bool) {
	if s, ok := v.asString(); ok {
		return s, true
	}
	name, ok := v.get("name")
	if !ok {
		return "", false
	}
	return name.asString()
}

// chunkKeyEncoding reads chunk_key_encoding: "default" keys are c/0/0 (or
// c.0.0), "v2" keys are 0.0 (or 0/0).
func chunkKeyEncoding(v *jsonValue) (prefix bool, sep byte, err error) {
	enc, ok := v.get("chunk_key_encoding")
	if !ok {
		return true, '/', nil // the spec's default
	}
	name, _ := namedConfig(enc)
	switch name {
	case "default":
		prefix, sep = true, '/'
	case "v2":
		prefix, sep = false, '.'
	default:
		return false, 0, fmt.Errorf("chunk_key_encoding %s is not supported", enc.describe())
	}
	if config, ok := enc.get("configuration"); ok && config.kind != jsonNull {
		if s, ok := config.get("separator"); ok {
			if t, _ := s.asString(); t != "." && t != "/" {
				return false, 0, fmt.Errorf("chunk_key_encoding separator is %s, want \".\" or \"/\"", s.describe())
			}
			sep = s.text[0]
		}
	}
	return prefix, sep, nil
}

// checkSharding checks a sharding_indexed codec against the shard shape. The
// stored objects are the shards, so they, not the inner chunks, are the keys.
func checkSharding(v *jsonValue, shard []int64) error {
	codecs, ok := v.get("codecs")
	if !ok || codecs.kind != jsonArray {
		return nil
	}
	for i := range codecs.items {
		codec := &codecs.items[i]
		if name, _ := namedConfig(codec); name != "sharding_indexed" {
			continue
		}
		config, _ := codec.get("configuration")
		if config == nil {
			return fmt.Errorf("sharding_indexed codec has no configuration")
		}
		inner, err := intList(config, "chunk_shape", 1)
		if err != nil {
			return fmt.Errorf("sharding_indexed: %w", err)
		}
		if len(inner) != len(shard) {
			return fmt.Errorf("sharding_indexed chunk_shape has %d dimensions, the shard shape %d", len(inner), len(shard))
		}
		for d := range inner {
			if shard[d]%inner[d] != 0 {
				return fmt.Errorf("sharding_indexed chunk_shape %v does not divide the shard shape %v", inner, shard)
			}
		}
	}
	return nil
}
