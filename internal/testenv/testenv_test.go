package testenv

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
)

type recorder struct{ fatal, skip string }

func (r *recorder) Helper()                   {}
func (r *recorder) Fatalf(f string, a ...any) { r.fatal = fmt.Sprintf(f, a...) }
func (r *recorder) Skipf(f string, a ...any)  { r.skip = fmt.Sprintf(f, a...) }

func TestRequire(t *testing.T) {
	for _, tt := range []struct {
		name      string
		ci        string
		ok        bool
		wantFatal bool
		wantSkip  bool
	}{
		{"present", "true", true, false, false},
		{"missing in CI fails", "true", false, true, false},
		{"missing locally skips", "", false, false, true},
		{"CI not exactly true skips", "1", false, false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("CI", tt.ci)
			var r recorder
			Require(&r, tt.ok, "thing")
			assert.Equal(t, tt.wantFatal, r.fatal != "", "fatal: %q", r.fatal)
			assert.Equal(t, tt.wantSkip, r.skip != "", "skip: %q", r.skip)
		})
	}
}
