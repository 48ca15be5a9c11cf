package zarr

import (
	"context"
	"fmt"
)

// loadV3 reads a v3 hierarchy from its root zarr.json: from the consolidated
// metadata inline in it when present, else by listing groups.
func (b *builder) loadV3(ctx context.Context, s Store, raw []byte) error {
	root, err := parseJSON(raw)
	if err != nil {
		return b.errorf(zarrJSONName, "%v", err)
	}
	isGroup, err := b.addV3Node("", &root, raw)
	if err != nil {
		return err
	}
	if !isGroup {
		return nil
	}
	if consolidated, ok := root.get("consolidated_metadata"); ok && consolidated.kind != jsonNull {
		return b.loadV3Consolidated(consolidated)
	}
	return b.walkV3(ctx, s)
}

// loadV3Consolidated adds the nodes of consolidated_metadata.metadata, whose
// keys are node paths relative to the root. Each node's zarr.json is the
// canonical JSON of its entry.
func (b *builder) loadV3Consolidated(consolidated *jsonValue) error {
	const where = zarrJSONName + " consolidated_metadata"
	if consolidated.kind != jsonObject {
		return b.errorf(where, "not a JSON object")
	}
	meta, ok := consolidated.get("metadata")
	if !ok || meta.kind != jsonObject {
		return b.errorf(where, "metadata is missing or not an object")
	}
	for i := range meta.members {
		path, value := meta.members[i].key, &meta.members[i].value
		if err := b.validNodeKey(where+" entry", path); err != nil {
			return err
		}
		if _, err := b.addV3Node(path, value, canonicalJSON(value)); err != nil {
			return err
		}
	}
	return nil
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
	key := joinKey(path, zarrJSONName)
	if v.kind != jsonObject {
		return false, b.errorf(key, "not a JSON object")
	}
	if err := checkFormat(v, 3); err != nil {
		return false, b.errorf(key, "%v", err)
	}
	nodeType, _ := v.get("node_type")
	if nodeType == nil {
		return false, b.errorf(key, "no node_type")
	}
	switch t, _ := nodeType.asString(); t {
	case "group":
		return true, b.addNode(path, groupNode, zarrJSONName, data, nil)
	case "array":
		array, err := parseV3Array(path, v)
		if err != nil {
			return false, b.errorf(key, "%v", err)
		}
		return false, b.addNode(path, arrayNode, zarrJSONName, data, array)
	default:
		return false, b.errorf(key, "node_type is %s, want \"group\" or \"array\"", nodeType.describe())
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
