package main

import (
	"errors"
	"fmt"
	"math"
	"os/user"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
)

// ownerID is a --uid or --gid flag: a number, or a user or group name
// looked up at once (so that a typo is a usage error, not a surprise).
type ownerID struct {
	id    uint32
	set   bool
	group bool
}

func (v *ownerID) Type() string {
	if v.group {
		return "gid"
	}
	return "uid"
}

func (v *ownerID) String() string {
	if !v.set {
		return ""
	}
	return strconv.FormatUint(uint64(v.id), 10)
}

func (v *ownerID) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err == nil {
		if n == math.MaxUint32 { // (uid_t)-1 means "no change" to the kernel
			return fmt.Errorf("%d is not a usable id", n)
		}
		v.id, v.set = uint32(n), true
		return nil
	}
	if s == "" || strings.HasPrefix(s, "-") || strings.HasPrefix(s, "+") {
		return errors.New("want a number or a name")
	}
	var idText string
	if v.group {
		g, err := user.LookupGroup(s)
		if err != nil {
			return fmt.Errorf("no group %q", s)
		}
		idText = g.Gid
	} else {
		u, err := user.Lookup(s)
		if err != nil {
			return fmt.Errorf("no user %q", s)
		}
		idText = u.Uid
	}
	n, err = strconv.ParseUint(idText, 10, 32)
	if err != nil {
		return fmt.Errorf("%q has id %q, not a number", s, idText)
	}
	v.id, v.set = uint32(n), true
	return nil
}

// or returns the id given, else def.
func (v *ownerID) or(def int) uint32 {
	if v.set {
		return v.id
	}
	return uint32(def)
}

// permBits is a --file-mode or --dir-mode flag: permission bits in octal,
// at most 0777 (a setuid, setgid or sticky bit means nothing here).
type permBits uint32

func (p *permBits) Type() string { return "mode" }

func (p *permBits) String() string {
	if *p == 0 {
		return ""
	}
	return fmt.Sprintf("%04o", uint32(*p))
}

func (p *permBits) Set(s string) error {
	n, err := strconv.ParseUint(strings.TrimPrefix(s, "0o"), 8, 32)
	switch {
	case err != nil:
		return fmt.Errorf("%q is not an octal mode such as 0444 or 640", s)
	case n > 0o777:
		return fmt.Errorf("%q: only permission bits (at most 0777)", s)
	case n == 0:
		return errors.New("mode 0 would let nobody in")
	}
	*p = permBits(n)
	return nil
}

// ignoredOptions are mount options dmfs accepts that change nothing.
var ignoredOptions = []string{
	// mount(8) and fstab bookkeeping. mount(8) adds "rw" to every helper
	// call that does not say "ro", so "rw" cannot mean --write ("write" does).
	"defaults", "rw", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev", "nofail", "async",
	// dmfs serves no setuid or device files, and keeps fixed times.
	"suid", "dev", "atime", "noatime", "relatime", "norelatime", "strictatime", "diratime", "nodiratime",
	"lazytime", "nolazytime",
	// Always on: the kernel checks permissions against the modes shown.
	"default_permissions",
}

// kernelOptions go to the kernel (or fusermount3) as they are.
var kernelOptions = []string{"exec", "noexec", "nosuid", "nodev"}

// notOptions are flags that make no sense in an -o list (a mount helper
// must return once mounted).
var notOptions = []string{"foreground", "options", "help"}

// applyOptions applies the -o lists: NAME=VALUE or NAME for each flag NAME
// in underscore form (cache_size=2GiB, allow_other), write and ro, the
// kernel options passed through, and fstab's options that change nothing.
// A flag also given on the command line (other than a repeatable one) is
// an error, as is any option it does not know.
func (o *mountOptions) applyOptions(flags *pflag.FlagSet) error {
	if len(o.Options) == 0 {
		return nil
	}
	given := map[string]bool{}
	flags.Visit(func(f *pflag.Flag) { given[f.Name] = true })
	ro := false
	for _, list := range o.Options {
		for _, opt := range strings.Split(list, ",") {
			name, value, hasValue := strings.Cut(opt, "=")
			switch {
			case name == "":
				continue
			case strings.HasPrefix(name, "x-") || name == "comment":
				continue // for other programs (systemd's x-systemd.*)
			case name == "user" && hasValue:
				continue // mount(8) notes who mounted
			case !hasValue && name == "ro":
				ro = true
				continue
			case !hasValue && slices.Contains(kernelOptions, name):
				if !slices.Contains(o.fuseOpts, name) {
					o.fuseOpts = append(o.fuseOpts, name)
				}
				continue
			}
			if !hasValue && slices.Contains(ignoredOptions, name) {
				continue
			}
			flagName := strings.ReplaceAll(name, "_", "-")
			f := flags.Lookup(flagName)
			if f == nil || strings.Contains(name, "-") || slices.Contains(notOptions, flagName) {
				if o.sloppy {
					continue // mount -s: tolerate what is not ours
				}
				return fmt.Errorf("unknown mount option %q", opt)
			}
			_, repeatable := f.Value.(pflag.SliceValue)
			if given[flagName] && !repeatable {
				return fmt.Errorf("mount option %q repeats --%s", name, flagName)
			}
			if !hasValue {
				if f.NoOptDefVal == "" {
					return fmt.Errorf("mount option %q needs a value: %s=VALUE", name, name)
				}
				value = f.NoOptDefVal
			}
			if err := flags.Set(flagName, value); err != nil {
				return fmt.Errorf("mount option %q: %v", opt, err)
			}
			given[flagName] = true
		}
	}
	if ro && o.Write {
		return errors.New("mount options ro and write exclude each other")
	}
	return nil
}
