// Package testenv holds the one rule for tests whose prerequisite (a tool,
// FUSE, Debian's python3 with xarray) may be missing on a developer's
// machine: skip there, fail under CI=true, where a skipped suite must not
// read as green.
package testenv

import (
	"os"
	"os/exec"
)

// DebianPython is the interpreter with Debian's python3-xarray and
// python3-zarr; another python3 first on PATH may lack them.
const DebianPython = "/usr/bin/python3"

// TB is the part of testing.TB that Require uses.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
}

// CI reports whether the tests run in CI (CI=true), where every
// prerequisite must be present.
func CI() bool { return os.Getenv("CI") == "true" }

// Require skips t when ok is false, or fails it under CI=true. what names
// the missing prerequisite.
func Require(t TB, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if CI() {
		t.Fatalf("prerequisite missing in CI: %s", what)
		return // for a TB whose Fatalf returns
	}
	t.Skipf("prerequisite missing: %s", what)
}

// RequireCommand requires an executable on PATH and returns its path.
func RequireCommand(t TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	Require(t, err == nil, name+" on PATH")
	return p
}

// RequirePython requires Debian's python3 able to import modules (for
// example "xarray, zarr, numpy").
func RequirePython(t TB, modules string) {
	t.Helper()
	err := exec.Command(DebianPython, "-c", "import "+modules).Run()
	Require(t, err == nil, DebianPython+" with "+modules)
}
