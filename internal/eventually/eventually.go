// Package eventually waits, in tests, for a condition that becomes true asynchronously: a watcher
// that sees a change, a server that comes up. It polls rather than sleeping a fixed time, so that a
// test is as fast as the system and fails with the name of what never happened.
package eventually

import (
	"testing"
	"time"
)

// Interval is how often Wait checks its condition.
const Interval = 20 * time.Millisecond

// Wait checks cond every Interval until it holds, and fails the test after timeout, naming what it
// waited for.
func Wait(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(Interval)
	}
}
