package csi

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// kubeletPrefix marks the attributes the kubelet adds itself (pod name,
// namespace, "csi.storage.k8s.io/ephemeral", ...): accepted and unused.
const kubeletPrefix = "csi.storage.k8s.io/"

// TokenKey is the key of the Datamesh token in the NodePublishVolume
// secrets (the Kubernetes Secret named by nodePublishSecretRef).
const TokenKey = "token"

// attribute is one volumeAttributes key: the `dmfs mount` flag it sets.
type attribute struct {
	flag string
	kind attrKind
}

type attrKind int

const (
	attrValue attrKind = iota // --flag=VALUE, checked by `dmfs mount`
	attrList                  // comma-separated: --flag=A --flag=B
	attrBool                  // "true" or "false": --flag when true
)

// attributes are the volumeAttributes a volume may set, named like the
// flags (camelCase, as Kubernetes fields are).
var attributes = map[string]attribute{
	"service":     {flag: "service"},
	"gateway":     {flag: "gateway"},
	"datasource":  {flag: "datasource", kind: attrList},
	"cacheSize":   {flag: "cache-size"},
	"metadataTTL": {flag: "metadata-ttl"},
	"write":       {flag: "write", kind: attrBool},
}

// mountSpec is what a volume is mounted with.
type mountSpec struct {
	// flags for `dmfs mount` that the volume decides, in a fixed order
	// (the plugin adds its own, see Driver.publish).
	flags []string
	// write is set when the mount is read-write.
	write bool
}

// fingerprint names the flags, so that a second publish of a target can
// tell the same volume from an incompatible one.
func (s mountSpec) fingerprint() string {
	sum := sha256.Sum256([]byte(strings.Join(s.flags, "\x00")))
	return hex.EncodeToString(sum[:8])
}

// specFromAttributes maps volumeAttributes to `dmfs mount` flags. Values are
// passed as one argument each (--flag=VALUE), so no value can add a flag;
// `dmfs mount` itself checks them. readOnly (the publish request's readonly
// flag, or a reader-only access mode) wins over write=true.
func specFromAttributes(attrs map[string]string, readOnly bool) (mountSpec, error) {
	keys := make([]string, 0, len(attrs))
	for k := range attrs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var spec mountSpec
	for _, k := range keys {
		if strings.HasPrefix(k, kubeletPrefix) {
			continue
		}
		a, ok := attributes[k]
		if !ok {
			return mountSpec{}, fmt.Errorf("unknown volume attribute %q (known: %s)", k, knownAttributes())
		}
		v := strings.TrimSpace(attrs[k])
		switch a.kind {
		case attrValue:
			if v == "" {
				return mountSpec{}, fmt.Errorf("volume attribute %q is empty", k)
			}
			spec.flags = append(spec.flags, "--"+a.flag+"="+v)
		case attrList:
			n := 0
			for _, item := range strings.Split(v, ",") {
				if item = strings.TrimSpace(item); item != "" {
					spec.flags = append(spec.flags, "--"+a.flag+"="+item)
					n++
				}
			}
			if n == 0 {
				return mountSpec{}, fmt.Errorf("volume attribute %q names nothing (a comma-separated list)", k)
			}
		case attrBool:
			b, err := strconv.ParseBool(v)
			if err != nil {
				return mountSpec{}, fmt.Errorf("volume attribute %q must be true or false, not %q", k, v)
			}
			if b && a.flag == "write" {
				spec.write = !readOnly
			}
		}
	}
	if spec.write {
		spec.flags = append(spec.flags, "--write")
	}
	return spec, nil
}

func knownAttributes() string {
	names := make([]string, 0, len(attributes))
	for k := range attributes {
		names = append(names, k)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// CheckAttributes tells whether attrs are volumeAttributes the plugin
// takes, as NodePublishVolume checks them (values that `dmfs mount` checks,
// such as a size, are checked only when mounting). The deployment's test
// checks its examples with it.
func CheckAttributes(attrs map[string]string) error {
	_, err := specFromAttributes(attrs, false)
	return err
}
