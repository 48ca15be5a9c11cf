package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseBusySkipsIdleAndIOWait(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice
	got, err := parseBusy(strings.NewReader("cpu  100 5 50 9000 40 3 2 10 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"))
	require.NoError(t, err)
	assert.InDelta(t, 1.70, got, 1e-9, "(100+5+50+3+2+10) ticks of 1/100 s")

	for _, bad := range []string{"", "intr 1 2 3\n", "cpu 1 2 3\n", "cpu 1 2 x 4 5 6 7 8\n"} {
		_, err := parseBusy(strings.NewReader(bad))
		assert.Error(t, err, "%q", bad)
	}
}

func TestMachineBusyGrowsWithWork(t *testing.T) {
	start := machineBusy()
	require.GreaterOrEqual(t, start, 0.0, "/proc/stat is readable here")
	x := 0
	for i := range 300_000_000 {
		x ^= i
	}
	_ = x
	assert.Greater(t, busySince(start), 0.0)
	assert.Equal(t, -1.0, busySince(-1))
}
