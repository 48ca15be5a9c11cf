package zarr

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The expected outputs were produced by Python 3.11:
// json.dumps(json.loads(in), indent=4, sort_keys=True, ensure_ascii=True).
func TestCanonicalJSON(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{
			name: "nesting and sorting",
			in:   `{"b": 1, "a": [1, 2.5, {"z": null, "y": true}], "c": {}, "d": []}`,
			want: "{\n    \"a\": [\n        1,\n        2.5,\n        {\n            \"y\": true,\n            \"z\": null\n        }\n    ],\n    \"b\": 1,\n    \"c\": {},\n    \"d\": []\n}",
		},
		{
			name: "escapes",
			in:   `"caf\u00e9 \ud83c\udf2c \u007f \u0001 \t\n\r\b\f \"q\" \\ / \/"`,
			want: `"caf\u00e9 \ud83c\udf2c \u007f \u0001 \t\n\r\b\f \"q\" \\ / /"`,
		},
		{name: "raw UTF-8", in: "\"\u00e9\u2028\U0001F32C\"", want: `"\u00e9\u2028\ud83c\udf2c"`},
		{name: "lone surrogate", in: `"\ud800 lone"`, want: `"\ud800 lone"`},
		{name: "lone low surrogate then pair", in: `["\udc00\ud83c\udf2c", "\ud83c\u0041"]`, want: "[\n    \"\\udc00\\ud83c\\udf2c\",\n    \"\\ud83cA\"\n]"},
		{
			name: "non-finite and big numbers",
			in:   `[NaN, Infinity, -Infinity, 0, 1e-300, 12345678901234567890123]`,
			want: "[\n    NaN,\n    Infinity,\n    -Infinity,\n    0,\n    1e-300,\n    12345678901234567890123\n]",
		},
		{
			name: "key order is code point order",
			in:   "{\"\u00e9\": 1, \"z\": 2, \"Z\": 3, \"\U0001F32C\": 4, \"\uff21\": 5}",
			want: "{\n    \"Z\": 3,\n    \"z\": 2,\n    \"\\u00e9\": 1,\n    \"\\uff21\": 5,\n    \"\\ud83c\\udf2c\": 4\n}",
		},
		{name: "duplicate keys: last wins", in: `{"a": 1, "a": 2}`, want: "{\n    \"a\": 2\n}"},
		// Number literals are kept as written: the same value as Python's
		// re-serialisation, not always the same text.
		{name: "number literal kept", in: `[2.50, -0, 1E5]`, want: "[\n    2.50,\n    -0,\n    1E5\n]"},
		{name: "whitespace", in: " \t\r\n{ \"a\" :\n[ ] } \n", want: "{\n    \"a\": []\n}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := parseJSON([]byte(tt.in))
			require.NoError(t, err)
			assert.Equal(t, tt.want, string(canonicalJSON(&v)))
			// Canonical output is a fixed point.
			again, err := parseJSON(canonicalJSON(&v))
			require.NoError(t, err)
			assert.Equal(t, tt.want, string(canonicalJSON(&again)))
		})
	}
}

func TestParseJSONErrors(t *testing.T) {
	tests := []struct{ name, in string }{
		{"empty", ""},
		{"truncated object", `{"a": 1`},
		{"truncated string", `"abc`},
		{"trailing data", `{} {}`},
		{"trailing comma", `[1,]`},
		{"leading zero", `01`},
		{"bare minus", `-`},
		{"bad fraction", `1.`},
		{"bad exponent", `1e`},
		{"single quotes", `'a'`},
		{"unquoted key", `{a: 1}`},
		{"control char", "\"a\x01b\""},
		{"bad escape", `"\x"`},
		{"short unicode escape", `"\u12"`},
		{"invalid UTF-8", "\"\xff\""},
		{"nan lower case", `nan`},
		{"minus NaN", `-NaN`},
		{"too deep", strings.Repeat("[", maxJSONDepth+2) + strings.Repeat("]", maxJSONDepth+2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseJSON([]byte(tt.in))
			require.Error(t, err)
			assert.Contains(t, err.Error(), "invalid JSON")
		})
	}
}
