package zarr

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Zarr metadata is written by Python's json module, which differs from
// encoding/json in ways that matter here: it writes NaN and ±Infinity as bare
// tokens, integers of any size, and re-serialising must reproduce Python's
// canonical form (sorted keys, 4-space indent, ASCII escapes). So metadata is
// parsed into jsonValue, which keeps every number as its literal text.

type jsonKind uint8

const (
	jsonNull jsonKind = iota
	jsonBool
	jsonNumber
	jsonString
	jsonArray
	jsonObject
)

// jsonValue is one parsed JSON value. text holds a string's decoded value
// (UTF-8, lone surrogates kept as their 3-byte encoding so they survive a
// round trip), a number's literal, or "true"/"false".
type jsonValue struct {
	kind    jsonKind
	text    string
	items   []jsonValue  // jsonArray
	members []jsonMember // jsonObject, in first-seen order, duplicate keys resolved last-wins
}

type jsonMember struct {
	key   string
	value jsonValue
}

// get returns the member key of an object.
func (v *jsonValue) get(key string) (*jsonValue, bool) {
	if v.kind != jsonObject {
		return nil, false
	}
	for i := range v.members {
		if v.members[i].key == key {
			return &v.members[i].value, true
		}
	}
	return nil, false
}

// maxJSONDepth bounds nesting so hostile input cannot exhaust the stack;
// Python's own decoder gives up near 1000.
const maxJSONDepth = 512

var errJSONDepth = errors.New("nested too deeply")

// parseJSON parses one JSON document as Python's json.loads would accept it.
func parseJSON(data []byte) (jsonValue, error) {
	p := jsonParser{data: data}
	p.skipSpace()
	v, err := p.value(0)
	if err != nil {
		return jsonValue{}, err
	}
	if err := p.end(); err != nil {
		return jsonValue{}, err
	}
	return v, nil
}

type jsonParser struct {
	data []byte
	pos  int
}

func (p *jsonParser) errorf(format string, args ...any) error {
	return fmt.Errorf("invalid JSON at byte %d: %s", p.pos, fmt.Sprintf(format, args...))
}

func (p *jsonParser) skipSpace() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *jsonParser) literal(word string) bool {
	if len(p.data)-p.pos >= len(word) && string(p.data[p.pos:p.pos+len(word)]) == word {
		p.pos += len(word)
		return true
	}
	return false
}

func (p *jsonParser) value(depth int) (jsonValue, error) {
	if depth > maxJSONDepth {
		return jsonValue{}, p.errorf("%v", errJSONDepth)
	}
	if p.pos >= len(p.data) {
		return jsonValue{}, p.errorf("unexpected end of input")
	}
	switch c := p.data[p.pos]; {
	case c == '{':
		return p.object(depth)
	case c == '[':
		return p.array(depth)
	case c == '"':
		s, err := p.str()
		return jsonValue{kind: jsonString, text: s}, err
	case c == 'n' && p.literal("null"):
		return jsonValue{kind: jsonNull}, nil
	case c == 't' && p.literal("true"):
		return jsonValue{kind: jsonBool, text: "true"}, nil
	case c == 'f' && p.literal("false"):
		return jsonValue{kind: jsonBool, text: "false"}, nil
	case c == 'N' && p.literal("NaN"):
		return jsonValue{kind: jsonNumber, text: "NaN"}, nil
	case c == 'I' && p.literal("Infinity"):
		return jsonValue{kind: jsonNumber, text: "Infinity"}, nil
	case c == '-' || c >= '0' && c <= '9':
		return p.number()
	default:
		return jsonValue{}, p.errorf("unexpected character %q", c)
	}
}

func (p *jsonParser) object(depth int) (jsonValue, error) {
	o := objectBuilder{v: jsonValue{kind: jsonObject}}
	err := p.members(depth, func(key string) error {
		member, err := p.value(depth + 1)
		if err != nil {
			return err
		}
		o.set(key, member)
		return nil
	})
	if err != nil {
		return jsonValue{}, err
	}
	return o.v, nil
}

// objectBuilder collects the members of an object. Duplicate keys: the last
// value wins, in the place of the first, as in a Python dict.
type objectBuilder struct {
	v     jsonValue
	index map[string]int // only built for large objects
}

func (o *objectBuilder) set(key string, value jsonValue) {
	if o.index == nil && len(o.v.members) >= 16 {
		o.index = make(map[string]int, 2*len(o.v.members))
		for i, m := range o.v.members {
			o.index[m.key] = i
		}
	}
	dup := -1
	if o.index != nil {
		if i, ok := o.index[key]; ok {
			dup = i
		}
	} else {
		dup = slices.IndexFunc(o.v.members, func(m jsonMember) bool { return m.key == key })
	}
	if dup >= 0 {
		o.v.members[dup].value = value
		return
	}
	if o.index != nil {
		o.index[key] = len(o.v.members)
	}
	o.v.members = append(o.v.members, jsonMember{key: key, value: value})
}

// atObject skips white space and reports whether an object starts there.
func (p *jsonParser) atObject() bool {
	p.skipSpace()
	return p.pos < len(p.data) && p.data[p.pos] == '{'
}

// members parses the object that starts at p (see atObject), at nesting
// depth, calling member for each member in document order with p at the
// member's value, which member must consume (with value, or members for a
// nested object). This lets a caller handle a big document one member at a
// time instead of building it whole; duplicate keys are the caller's to
// resolve.
func (p *jsonParser) members(depth int, member func(key string) error) error {
	if depth > maxJSONDepth {
		return p.errorf("%v", errJSONDepth)
	}
	p.pos++ // '{'
	p.skipSpace()
	if p.pos < len(p.data) && p.data[p.pos] == '}' {
		p.pos++
		return nil
	}
	for {
		p.skipSpace()
		if p.pos >= len(p.data) || p.data[p.pos] != '"' {
			return p.errorf("expected a string key")
		}
		key, err := p.str()
		if err != nil {
			return err
		}
		p.skipSpace()
		if p.pos >= len(p.data) || p.data[p.pos] != ':' {
			return p.errorf("expected ':'")
		}
		p.pos++
		p.skipSpace()
		if err := member(key); err != nil {
			return err
		}
		p.skipSpace()
		if p.pos >= len(p.data) {
			return p.errorf("unexpected end of input in object")
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
		case '}':
			p.pos++
			return nil
		default:
			return p.errorf("expected ',' or '}'")
		}
	}
}

// end checks that only white space follows the document.
func (p *jsonParser) end() error {
	p.skipSpace()
	if p.pos != len(p.data) {
		return p.errorf("unexpected data after the JSON value")
	}
	return nil
}

func (p *jsonParser) array(depth int) (jsonValue, error) {
	p.pos++ // '['
	v := jsonValue{kind: jsonArray}
	p.skipSpace()
	if p.pos < len(p.data) && p.data[p.pos] == ']' {
		p.pos++
		return v, nil
	}
	for {
		p.skipSpace()
		item, err := p.value(depth + 1)
		if err != nil {
			return jsonValue{}, err
		}
		v.items = append(v.items, item)
		p.skipSpace()
		if p.pos >= len(p.data) {
			return jsonValue{}, p.errorf("unexpected end of input in array")
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
		case ']':
			p.pos++
			return v, nil
		default:
			return jsonValue{}, p.errorf("expected ',' or ']'")
		}
	}
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func (p *jsonParser) digits() int {
	start := p.pos
	for p.pos < len(p.data) && isDigit(p.data[p.pos]) {
		p.pos++
	}
	return p.pos - start
}

func (p *jsonParser) number() (jsonValue, error) {
	start := p.pos
	if p.data[p.pos] == '-' {
		p.pos++
		if p.literal("Infinity") {
			return jsonValue{kind: jsonNumber, text: "-Infinity"}, nil
		}
	}
	if p.pos < len(p.data) && p.data[p.pos] == '0' {
		p.pos++
	} else if p.digits() == 0 {
		return jsonValue{}, p.errorf("invalid number")
	}
	if p.pos < len(p.data) && p.data[p.pos] == '.' {
		p.pos++
		if p.digits() == 0 {
			return jsonValue{}, p.errorf("invalid number")
		}
	}
	if p.pos < len(p.data) && (p.data[p.pos] == 'e' || p.data[p.pos] == 'E') {
		p.pos++
		if p.pos < len(p.data) && (p.data[p.pos] == '+' || p.data[p.pos] == '-') {
			p.pos++
		}
		if p.digits() == 0 {
			return jsonValue{}, p.errorf("invalid number")
		}
	}
	return jsonValue{kind: jsonNumber, text: string(p.data[start:p.pos])}, nil
}

func hexVal(c byte) (rune, bool) {
	switch {
	case c >= '0' && c <= '9':
		return rune(c - '0'), true
	case c >= 'a' && c <= 'f':
		return rune(c-'a') + 10, true
	case c >= 'A' && c <= 'F':
		return rune(c-'A') + 10, true
	}
	return 0, false
}

func (p *jsonParser) hex4() (rune, error) {
	if p.pos+4 > len(p.data) {
		return 0, p.errorf("truncated \\u escape")
	}
	var r rune
	for i := range 4 {
		h, ok := hexVal(p.data[p.pos+i])
		if !ok {
			return 0, p.errorf("invalid \\u escape")
		}
		r = r<<4 | h
	}
	p.pos += 4
	return r, nil
}

// appendSurrogate appends a lone UTF-16 surrogate in its 3-byte form
// (as WTF-8 does): Python strings can hold one, Go's UTF-8 encoder cannot.
func appendSurrogate(b []byte, r rune) []byte {
	return append(b, 0xE0|byte(r>>12), 0x80|byte(r>>6)&0x3F, 0x80|byte(r)&0x3F)
}

func (p *jsonParser) str() (string, error) {
	p.pos++ // opening quote
	start := p.pos
	// Fast path: no escapes.
	for p.pos < len(p.data) {
		c := p.data[p.pos]
		if c == '"' {
			s := p.data[start:p.pos]
			if !utf8.Valid(s) {
				return "", p.errorf("invalid UTF-8 in string")
			}
			p.pos++
			return string(s), nil
		}
		if c == '\\' || c < 0x20 {
			break
		}
		p.pos++
	}
	buf := append([]byte(nil), p.data[start:p.pos]...)
	for {
		if p.pos >= len(p.data) {
			return "", p.errorf("unterminated string")
		}
		c := p.data[p.pos]
		switch {
		case c == '"':
			p.pos++
			if !validWTF8(buf) {
				return "", p.errorf("invalid UTF-8 in string")
			}
			return string(buf), nil
		case c < 0x20:
			return "", p.errorf("control character in string")
		case c != '\\':
			buf = append(buf, c)
			p.pos++
			continue
		}
		p.pos++ // backslash
		if p.pos >= len(p.data) {
			return "", p.errorf("unterminated string")
		}
		esc := p.data[p.pos]
		p.pos++
		switch esc {
		case '"', '\\', '/':
			buf = append(buf, esc)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			r, err := p.hex4()
			if err != nil {
				return "", err
			}
			if r >= 0xD800 && r < 0xDC00 && p.pos+6 <= len(p.data) && p.data[p.pos] == '\\' && p.data[p.pos+1] == 'u' {
				save := p.pos
				p.pos += 2
				lo, err := p.hex4()
				if err == nil && lo >= 0xDC00 && lo < 0xE000 {
					buf = utf8.AppendRune(buf, 0x10000+(r-0xD800)<<10+(lo-0xDC00))
					continue
				}
				p.pos = save
			}
			if r >= 0xD800 && r < 0xE000 {
				buf = appendSurrogate(buf, r)
			} else {
				buf = utf8.AppendRune(buf, r)
			}
		default:
			return "", p.errorf("invalid escape \\%c", esc)
		}
	}
}

// surrogateAt reports whether s starts with a 3-byte encoded surrogate.
func surrogateAt(s string) (rune, bool) {
	if len(s) >= 3 && s[0] == 0xED && s[1] >= 0xA0 && s[1] <= 0xBF && s[2] >= 0x80 && s[2] <= 0xBF {
		return rune(s[0]&0x0F)<<12 | rune(s[1]&0x3F)<<6 | rune(s[2]&0x3F), true
	}
	return 0, false
}

func validWTF8(b []byte) bool {
	s := string(b)
	for len(s) > 0 {
		if _, ok := surrogateAt(s); ok {
			s = s[3:]
			continue
		}
		r, size := utf8.DecodeRuneInString(s)
		if r == utf8.RuneError && size == 1 {
			return false
		}
		s = s[size:]
	}
	return true
}

// canonicalJSON serialises v as zarr (Python json.dumps with indent=4,
// sort_keys=True, ensure_ascii=True) writes its metadata files.
func canonicalJSON(v *jsonValue) []byte {
	return appendCanonical(nil, v, 0, noLimit)
}

// appendCanonicalLimited appends the canonical form of v to b, or reports
// false, having stopped early, when b would grow past limit bytes.
// Re-indenting can multiply a document's size (each level of a deeply
// nested value indents every line below it), so output is bounded as it is
// made, not after.
func appendCanonicalLimited(b []byte, v *jsonValue, limit int) ([]byte, bool) {
	b = appendCanonical(b, v, 0, limit)
	return b, len(b) <= limit
}

// compactJSON serialises v on one line, keys sorted, for short descriptions.
func compactJSON(v *jsonValue) []byte {
	return appendCanonical(nil, v, -1, noLimit)
}

// noLimit is the limit of appendCanonical for output that is not bounded.
const noLimit = -1

// appendIndent starts a new line at depth; a negative depth means compact.
func appendIndent(b []byte, depth int) []byte {
	if depth < 0 {
		return b
	}
	b = append(b, '\n')
	for depth > maxIndentDepth {
		b = append(b, indentSpaces...)
		depth -= maxIndentDepth
	}
	return append(b, indentSpaces[:4*depth]...)
}

// indentSpaces indents maxIndentDepth levels at once.
const maxIndentDepth = 64

var indentSpaces = strings.Repeat(" ", 4*maxIndentDepth)

// appendCanonical appends v at indentation depth (negative: compact). When
// limit >= 0 it stops, leaving b longer than limit, soon after b grows past
// limit: the overshoot is at most one indentation (2 KiB at the deepest)
// and one number literal.
func appendCanonical(b []byte, v *jsonValue, depth, limit int) []byte {
	if limit >= 0 && len(b) > limit {
		return b
	}
	switch v.kind {
	case jsonNull:
		return append(b, "null"...)
	case jsonBool, jsonNumber:
		return append(b, v.text...)
	case jsonString:
		return appendASCIIString(b, v.text, limit)
	case jsonArray:
		if len(v.items) == 0 {
			return append(b, "[]"...)
		}
		b = append(b, '[')
		for i := range v.items {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendIndent(b, nestedDepth(depth))
			b = appendCanonical(b, &v.items[i], nestedDepth(depth), limit)
			if limit >= 0 && len(b) > limit {
				return b
			}
		}
		b = appendIndent(b, depth)
		return append(b, ']')
	default:
		if len(v.members) == 0 {
			return append(b, "{}"...)
		}
		// Byte order of UTF-8 (and of the 3-byte surrogates) is code point
		// order, which is how Python sorts str keys.
		order := make([]int, len(v.members))
		for i := range order {
			order[i] = i
		}
		slices.SortFunc(order, func(x, y int) int { return strings.Compare(v.members[x].key, v.members[y].key) })
		b = append(b, '{')
		for i, m := range order {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendIndent(b, nestedDepth(depth))
			b = appendASCIIString(b, v.members[m].key, limit)
			if limit >= 0 && len(b) > limit {
				return b
			}
			b = append(b, ':')
			if depth >= 0 {
				b = append(b, ' ')
			}
			b = appendCanonical(b, &v.members[m].value, nestedDepth(depth), limit)
			if limit >= 0 && len(b) > limit {
				return b
			}
		}
		b = appendIndent(b, depth)
		return append(b, '}')
	}
}

// nestedDepth is the depth of nested values; compact (negative) stays compact.
func nestedDepth(depth int) int {
	if depth < 0 {
		return depth
	}
	return depth + 1
}

const hexDigits = "0123456789abcdef"

func appendU(b []byte, r rune) []byte {
	return append(b, '\\', 'u', hexDigits[r>>12&0xF], hexDigits[r>>8&0xF], hexDigits[r>>4&0xF], hexDigits[r&0xF])
}

// appendASCIIString quotes s the way Python's json does with ensure_ascii:
// everything outside printable ASCII (and DEL) becomes \uXXXX, lower case,
// characters beyond the BMP as surrogate pairs. Like appendCanonical, it
// stops soon after b grows past limit (>= 0).
func appendASCIIString(b []byte, s string, limit int) []byte {
	b = append(b, '"')
	for len(s) > 0 {
		if limit >= 0 && len(b) > limit {
			return b
		}
		c := s[0]
		if c >= 0x20 && c < 0x7F {
			if c == '"' || c == '\\' {
				b = append(b, '\\')
			}
			b = append(b, c)
			s = s[1:]
			continue
		}
		switch c {
		case '\n':
			b = append(b, `\n`...)
			s = s[1:]
			continue
		case '\r':
			b = append(b, `\r`...)
			s = s[1:]
			continue
		case '\t':
			b = append(b, `\t`...)
			s = s[1:]
			continue
		case '\b':
			b = append(b, `\b`...)
			s = s[1:]
			continue
		case '\f':
			b = append(b, `\f`...)
			s = s[1:]
			continue
		}
		if r, ok := surrogateAt(s); ok {
			b = appendU(b, r)
			s = s[3:]
			continue
		}
		r, size := utf8.DecodeRuneInString(s)
		s = s[size:]
		if r >= 0x10000 {
			r -= 0x10000
			b = appendU(b, 0xD800+(r>>10))
			b = appendU(b, 0xDC00+(r&0x3FF))
			continue
		}
		b = appendU(b, r)
	}
	return append(b, '"')
}

// The helpers below read typed fields out of metadata.

// asInt64 reads an integer literal (no fraction or exponent) that fits int64.
func (v *jsonValue) asInt64() (int64, bool) {
	if v.kind != jsonNumber {
		return 0, false
	}
	n, err := strconv.ParseInt(v.text, 10, 64)
	return n, err == nil
}

func (v *jsonValue) asString() (string, bool) {
	return v.text, v.kind == jsonString
}

// describe renders v briefly for error messages.
func (v *jsonValue) describe() string {
	const maxLen = 40
	var s string
	switch v.kind {
	case jsonNull:
		return "null"
	case jsonBool, jsonNumber:
		s = v.text
	default:
		// Only the start is shown: do not serialise a huge value whole.
		s = string(appendCanonical(nil, v, -1, maxLen))
	}
	if len(s) > maxLen {
		s = s[:maxLen] + "..."
	}
	return s
}
