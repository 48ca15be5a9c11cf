package mountinfo

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	info := strings.Join([]string{
		"22 1 0:21 / /proc rw,nosuid - proc proc rw",
		`95 22 0:50 / /home/me/data\040mesh rw,nosuid,nodev - fuse.dmfs dmfs rw,user_id=0`,
		"96 22 0:51 / /mnt/other rw - fuse.rclone remote: rw",
		"garbage",
	}, "\n")
	mounts, err := Parse(strings.NewReader(info))
	require.NoError(t, err)
	require.Len(t, mounts, 3)
	assert.Equal(t, "/home/me/data mesh", mounts[1].Mountpoint)
	assert.Equal(t, "fuse.dmfs", mounts[1].FSType)
	assert.Equal(t, "dmfs", mounts[1].Source)
	assert.Equal(t, "0:50", mounts[1].Device)
	assert.Equal(t, "/proc", mounts[0].Mountpoint)
}
