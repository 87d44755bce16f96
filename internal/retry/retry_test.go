package retry_test

import (
	"context"
	"testing"
	"time"

	"github.com/graylane/graylane/internal/retry"
)

func TestBackoffGrowsAndIsCapped(t *testing.T) {
	for n, ceiling := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 4: 800 * time.Millisecond, 30: time.Second} {
		for range 200 {
			if d := retry.Backoff(100*time.Millisecond, time.Second, n); d <= 0 || d > ceiling {
				t.Fatalf("retry %d: %v, want in (0, %v]", n, d, ceiling)
			}
		}
	}
}

func TestSleepEndsWithItsContext(t *testing.T) {
	if !retry.Sleep(context.Background(), time.Millisecond) {
		t.Fatal("a sleep whose context lives reported an early end")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if retry.Sleep(ctx, time.Hour) || time.Since(start) > time.Second {
		t.Fatal("a sleep did not end with its context")
	}
}
