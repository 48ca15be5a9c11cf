//go:build race

package integration

// raceEnabled builds the dmfs under test with the race detector when the
// tests themselves run under it, so races in the daemon fail CI too.
const raceEnabled = true
