package gateway

import (
	"context"
	"net/http/httptest"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/oceanum-dmfs/dmfs/internal/testenv"
)

// TestRcloneWalksListing checks that rclone's http backend walks the HTML
// listings into sub-folders and sees exact sizes.
func TestRcloneWalksListing(t *testing.T) {
	rclone := testenv.RequireCommand(t, "rclone")
	s := newServer(t, Config{Token: testToken})
	ts := httptest.NewServer(s)
	defer ts.Close()
	sess := acquire(t, s, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, rclone, "lsf", "-R", "--format", "ps", "--config", "/dev/null",
		"--http-url", ts.URL+"/zarr/demo_sparse/",
		"--http-headers", "X-DATAMESH-TOKEN,"+testToken+",X-DATAMESH-SESSIONID,"+sess.ID,
		":http:")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, string(out))
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	sort.Strings(lines)
	got := map[string]string{}
	for _, l := range lines {
		name, size, _ := strings.Cut(l, ";")
		got[name] = size
	}
	ds := s.lookup("demo_sparse")
	for key, size := range ds.files {
		assert.Equal(t, strconv.FormatInt(size, 10), got[key], key)
	}
	assert.Contains(t, got, "field/0/")
	assert.Contains(t, got, "field/3/3")
	assert.NotContains(t, got, "field/0/1")
}
