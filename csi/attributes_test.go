package csi

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSpecFromAttributes(t *testing.T) {
	tests := []struct {
		name     string
		attrs    map[string]string
		readOnly bool
		want     []string
		write    bool
		err      string
	}{
		{name: "none", attrs: nil, want: nil},
		{name: "every attribute", attrs: map[string]string{
			"service": "http://127.0.0.1:8765", "gateway": "http://gw:1", "datasource": "a, b,,c ",
			"cacheSize": "512MiB", "metadataTTL": "1m", "write": "true",
		}, want: []string{"--cache-size=512MiB", "--datasource=a", "--datasource=b", "--datasource=c",
			"--gateway=http://gw:1", "--metadata-ttl=1m", "--service=http://127.0.0.1:8765", "--write"}, write: true},
		{name: "read-only wins over write", attrs: map[string]string{"write": "true"}, readOnly: true, want: nil},
		{name: "write false", attrs: map[string]string{"write": "false"}, want: nil},
		{name: "kubelet's own attributes are ignored", attrs: map[string]string{
			"csi.storage.k8s.io/ephemeral": "true", "csi.storage.k8s.io/pod.name": "p", "service": "http://s",
		}, want: []string{"--service=http://s"}},
		{name: "a value is one argument", attrs: map[string]string{"service": "x --write"}, want: []string{"--service=x --write"}},
		{name: "unknown key", attrs: map[string]string{"token": "secret"}, err: `unknown volume attribute "token"`},
		{name: "flag spelling is not an attribute", attrs: map[string]string{"cache-size": "1GiB"}, err: `unknown volume attribute "cache-size"`},
		{name: "empty value", attrs: map[string]string{"service": " "}, err: `"service" is empty`},
		{name: "empty list", attrs: map[string]string{"datasource": " , "}, err: `"datasource" names nothing`},
		{name: "not a bool", attrs: map[string]string{"write": "yes"}, err: `"write" must be true or false`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := specFromAttributes(tt.attrs, tt.readOnly)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				assert.NotContains(t, err.Error(), "secret", "an attribute's value is never in the error")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, spec.flags)
			assert.Equal(t, tt.write, spec.write)
		})
	}
}

func TestFingerprint(t *testing.T) {
	a, err := specFromAttributes(map[string]string{"service": "http://s", "datasource": "x,y"}, false)
	require.NoError(t, err)
	b, err := specFromAttributes(map[string]string{"datasource": "x, y", "service": "http://s", "csi.storage.k8s.io/pod.name": "other"}, false)
	require.NoError(t, err)
	assert.Equal(t, a.fingerprint(), b.fingerprint(), "the same volume, whatever the pod")
	c, err := specFromAttributes(map[string]string{"service": "http://s", "datasource": "x"}, false)
	require.NoError(t, err)
	assert.NotEqual(t, a.fingerprint(), c.fingerprint())
	w, err := specFromAttributes(map[string]string{"service": "http://s", "datasource": "x,y", "write": "true"}, false)
	require.NoError(t, err)
	r, err := specFromAttributes(map[string]string{"service": "http://s", "datasource": "x,y", "write": "true"}, true)
	require.NoError(t, err)
	assert.NotEqual(t, w.fingerprint(), r.fingerprint(), "read-write and read-only are different mounts")
	assert.Equal(t, a.fingerprint(), r.fingerprint())
}
