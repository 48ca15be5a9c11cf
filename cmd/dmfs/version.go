package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// versionText is what `dmfs version` prints: the version (-ldflags
// "-X main.version=...", else the module's), the commit it was built from
// (with "-modified" when the tree had changes), and the Go that built it.
func versionText() string {
	v, commit, when, modified := version, "", "", false
	goVersion := runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "dev" && bi.Main.Version != "" {
			v = bi.Main.Version
		}
		goVersion = bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.time":
				when = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	out := fmt.Sprintf("dmfs %s\n", v)
	if commit != "" {
		if modified {
			commit += "-modified"
		}
		if when != "" {
			commit += " (" + when + ")"
		}
		out += "commit " + commit + "\n"
	} else {
		out += "commit unknown (built without version control information)\n"
	}
	return out + fmt.Sprintf("go %s %s/%s\n", goVersion, runtime.GOOS, runtime.GOARCH)
}
