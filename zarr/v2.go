package zarr

import (
	"context"
	"fmt"
)

// loadZmetadata reads a .zmetadata document (already reserved). Its entries
// become files holding their canonical JSON, the form zarr itself writes; the
// document itself is served as fetched. The entries are those of a v2
// hierarchy (.zgroup, .zarray, .zattrs) or those of a v3 one (zarr.json,
// NODE/zarr.json: what Datamesh's ingestion writes and its JS client reads),
// never both.
func (b *builder) loadZmetadata(raw []byte) error {
	p := jsonParser{data: raw}
	if !p.atObject() {
		if _, err := parseJSON(raw); err != nil {
			return b.errorf(zmetadataKey, "%v", err)
		}
		return b.errorf(zmetadataKey, "not a JSON object")
	}
	var (
		format  *jsonValue
		entries *pendingNodes // nil while "metadata" is missing or not an object
	)
	err := p.members(0, func(key string) error {
		if key == "metadata" {
			entries.discard(b) // a duplicate key: the last wins
			entries = nil
			if !p.atObject() {
				_, err := p.value(1)
				return err
			}
			var err error
			entries, err = streamEntries(&p, 1, b, b.zmetadataEntry)
			return err
		}
		v, err := p.value(1)
		if key == "zarr_consolidated_format" {
			format = &v
		}
		return err
	})
	if err == nil {
		err = p.end()
	}
	if err != nil {
		return b.documentError(zmetadataKey, err)
	}
	if format == nil {
		return b.errorf(zmetadataKey, "no zarr_consolidated_format")
	} else if n, ok := format.asInt64(); !ok || n != 1 {
		return b.errorf(zmetadataKey, "unsupported zarr_consolidated_format %s", format.describe())
	}
	if entries == nil {
		return b.errorf(zmetadataKey, "metadata is missing or not an object")
	}
	if err := b.checkZmetadataFormats(entries); err != nil {
		entries.discard(b)
		return err
	}
	if err := b.addNode("", implicitNode, zmetadataKey, raw, nil); err != nil {
		return err
	}
	return entries.add(b)
}

// checkZmetadataFormats refuses a .zmetadata whose entries (after duplicate
// keys are resolved) mix v2 and v3 metadata, which no reader can take as one
// hierarchy, or that has entries but none this package can serve: either
// would otherwise open as a wrong or silently empty tree.
func (b *builder) checkZmetadataFormats(entries *pendingNodes) error {
	first := map[int]string{} // format -> key of its first entry
	for _, node := range entries.list {
		if _, seen := first[node.format]; !seen {
			first[node.format] = node.key
		}
	}
	v2, hasV2 := first[2]
	v3, hasV3 := first[3]
	switch {
	case hasV2 && hasV3:
		return b.errorf(zmetadataKey, "mixes Zarr v2 entries (%q) and v3 entries (%q)", v2, v3)
	case !hasV2 && !hasV3 && len(entries.list) > 0:
		return b.errorf(zmetadataKey, "none of its %d metadata entries is a .zgroup, .zarray, .zattrs or zarr.json (first %q)",
			len(entries.list), entries.list[0].key)
	}
	return nil
}

// zmetadataEntry checks one entry of .zmetadata and makes its file; a zarr.json
// entry is a v3 node (see v3Entry).
func (b *builder) zmetadataEntry(key string, value *jsonValue, scratch *[]byte) (pendingNode, error) {
	dir, name := splitKey(key)
	format := 0
	switch name {
	case zarrayName, zgroupName, zattrsName:
		format = 2
	case zarrJSONName:
		format = 3
	}
	if err := b.validNodeKey(zmetadataKey+" entry", key); err != nil {
		return pendingNode{key: key, format: format, err: err}, nil
	}
	if format == 3 {
		return b.v3Entry(key, dir, value, scratch)
	}
	node := pendingNode{key: key, format: format, path: dir, kind: implicitNode, file: name}
	var err error
	switch name {
	case zarrayName:
		if node.array, err = parseV2Array(dir, value); err != nil {
			return pendingNode{key: key, format: 2, err: b.errorf(zmetadataKey+" entry "+key, "%v", err)}, nil
		}
		node.kind = arrayNode
	case zgroupName:
		if err := checkV2Group(value); err != nil {
			return pendingNode{key: key, format: 2, err: b.errorf(zmetadataKey+" entry "+key, "%v", err)}, nil
		}
		node.kind = groupNode
	case zattrsName:
		if value.kind != jsonObject {
			return pendingNode{key: key, format: 2, err: b.errorf(zmetadataKey+" entry "+key, "attributes are not a JSON object")}, nil
		}
	default:
		// Consolidation only records the metadata documents; anything
		// else is not metadata this package can serve.
		return pendingNode{key: key}, nil
	}
	if node.data, err = b.canonical(key, value, scratch); err != nil {
		return pendingNode{}, err
	}
	return node, nil
}

// loadV2 reads a v2 hierarchy without consolidated metadata: the root
// .zgroup (or .zarray), then the folders found by listing each group, with a
// bounded number of requests in flight.
func (b *builder) loadV2(ctx context.Context, s Store) error {
	return b.walk(ctx, s, func(ctx context.Context, lim limiter, path string) (bool, error) {
		return b.loadV2Node(ctx, s, lim, path, path == "")
	})
}

// loadV2Node reads the metadata files of one folder. A folder with neither
// .zarray nor .zgroup is not part of the hierarchy (an error at the root).
func (b *builder) loadV2Node(ctx context.Context, s Store, lim limiter, path string, root bool) (isGroup bool, err error) {
	arrayKey := joinKey(path, zarrayName)
	groupKey := joinKey(path, zgroupName)
	attrsKey := joinKey(path, zattrsName)
	kind, file, key := arrayNode, zarrayName, arrayKey
	data, missing, err := b.get(ctx, s, lim, arrayKey)
	if err != nil {
		return false, err
	}
	if missing {
		kind, file, key = groupNode, zgroupName, groupKey
		if data, missing, err = b.get(ctx, s, lim, groupKey); err != nil {
			return false, err
		}
		if missing {
			if root {
				return false, fmt.Errorf("zarr store %q: %w", b.name, ErrNotZarr)
			}
			return false, nil
		}
	}
	value, err := parseJSON(data)
	if err != nil {
		return false, b.errorf(key, "%v", err)
	}
	var array *Array
	if kind == arrayNode {
		if array, err = parseV2Array(path, &value); err != nil {
			return false, b.errorf(key, "%v", err)
		}
	} else if err := checkV2Group(&value); err != nil {
		return false, b.errorf(key, "%v", err)
	}
	if err := b.addNode(path, kind, file, data, array); err != nil {
		return false, err
	}
	attrs, missing, err := b.get(ctx, s, lim, attrsKey)
	if err != nil || missing {
		return kind == groupNode, err
	}
	if value, err := parseJSON(attrs); err != nil {
		return false, b.errorf(attrsKey, "%v", err)
	} else if value.kind != jsonObject {
		return false, b.errorf(attrsKey, "attributes are not a JSON object")
	}
	if err := b.addNode(path, implicitNode, zattrsName, attrs, nil); err != nil {
		return false, err
	}
	return kind == groupNode, nil
}

func checkV2Group(v *jsonValue) error {
	if v.kind != jsonObject {
		return fmt.Errorf("group metadata is not a JSON object")
	}
	return checkFormat(v, 2)
}

func checkFormat(v *jsonValue, want int64) error {
	format, ok := v.get("zarr_format")
	if !ok {
		return fmt.Errorf("no zarr_format")
	}
	if n, ok := format.asInt64(); !ok || n != want {
		return fmt.Errorf("unsupported zarr_format %s, want %d", format.describe(), want)
	}
	return nil
}

// parseV2Array reads the fields of a .zarray document that locate chunks.
func parseV2Array(path string, v *jsonValue) (*Array, error) {
	if v.kind != jsonObject {
		return nil, fmt.Errorf("array metadata is not a JSON object")
	}
	if err := checkFormat(v, 2); err != nil {
		return nil, err
	}
	shape, err := intList(v, "shape", 0)
	if err != nil {
		return nil, err
	}
	chunks, err := intList(v, "chunks", 1)
	if err != nil {
		return nil, err
	}
	dtype, ok := v.get("dtype")
	if !ok {
		return nil, fmt.Errorf("no dtype")
	}
	a := &Array{Path: path, ZarrFormat: 2, Shape: shape, Chunks: chunks}
	switch dtype.kind {
	case jsonString:
		a.DType = dtype.text
	case jsonArray: // structured dtype
		a.DType = string(compactJSON(dtype))
	default:
		return nil, fmt.Errorf("dtype is %s, want a string or a list", dtype.describe())
	}
	sep := byte('.')
	if s, ok := v.get("dimension_separator"); ok && s.kind != jsonNull {
		if s.kind != jsonString || (s.text != "." && s.text != "/") {
			return nil, fmt.Errorf("dimension_separator is %s, want \".\" or \"/\"", s.describe())
		}
		sep = s.text[0]
	}
	if a.grid, err = newChunkGrid(shape, chunks, sep, false); err != nil {
		return nil, err
	}
	return a, nil
}

// intList reads member key of v as a list of integers >= least.
func intList(v *jsonValue, key string, least int64) ([]int64, error) {
	list, ok := v.get(key)
	if !ok {
		return nil, fmt.Errorf("no %s", key)
	}
	if list.kind != jsonArray {
		return nil, fmt.Errorf("%s is %s, want a list of integers", key, list.describe())
	}
	if len(list.items) > maxRank {
		return nil, fmt.Errorf("%s has %d dimensions, more than the %d supported", key, len(list.items), maxRank)
	}
	out := make([]int64, len(list.items))
	for i := range list.items {
		n, ok := list.items[i].asInt64()
		if !ok {
			return nil, fmt.Errorf("%s[%d] is %s, want an integer", key, i, list.items[i].describe())
		}
		if n < least {
			return nil, fmt.Errorf("%s[%d] is %d, want at least %d", key, i, n, least)
		}
		out[i] = n
	}
	return out, nil
}
