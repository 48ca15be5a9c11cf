package fs

import (
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestChunkOpenGivesUpPassthroughAfterARunOfSmallChunks(t *testing.T) {
	m := &openMode{passthrough: true, ownMin: 1 << 20, log: slog.New(slog.DiscardHandler)}
	assert.True(t, m.chunkOpen(1<<20), "a large chunk")
	for range smallRunToNoOpen - 2 {
		assert.False(t, m.chunkOpen(1000))
	}
	assert.True(t, m.chunkOpen(4<<20), "a large chunk ends the run")
	for range smallRunToNoOpen - 1 {
		assert.False(t, m.chunkOpen(1000))
	}
	assert.True(t, m.passing(), "one short of the run")
	assert.False(t, m.chunkOpen(1000))
	assert.False(t, m.passing(), "given up")
	assert.False(t, m.chunkOpen(4<<20), "for good")

	assert.False(t, noOpen.chunkOpen(4<<20), "a tree Mount did not mount")
}
