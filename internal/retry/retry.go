// Package retry holds the waiting that graylane's long-lived loops share (the watcher, the keeper,
// the APISIX sync, the portal): exponential backoff with full jitter, and a sleep that ends with its
// context.
package retry

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff returns the delay before retry n (1 for the first): first doubled n-1 times, capped at
// max, with full jitter (uniform in (0, delay]).
func Backoff(first, max time.Duration, n int) time.Duration {
	d := first << min(n-1, 20)
	if d <= 0 || d > max {
		d = max
	}
	return time.Duration(rand.Int64N(int64(d))) + 1
}

// Sleep waits d, or until ctx ends; it reports whether the whole d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
