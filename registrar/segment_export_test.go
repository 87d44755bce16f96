package registrar

import "time"

// SetAbandonedAfter sets how old a generation no head names must be for a change to delete it, for
// a test, and returns the function that restores it.
func SetAbandonedAfter(d time.Duration) (restore func()) {
	old := abandonedAfter
	abandonedAfter = d
	return func() { abandonedAfter = old }
}

// SetBeforeSegmentCommit makes every change of a segment call f with the segment's name after it
// has read the segment and written its chunks, just before its commit, for a test; it returns the
// function that restores the hook.
func SetBeforeSegmentCommit(f func(name string)) (restore func()) {
	old := beforeSegmentCommit
	beforeSegmentCommit = f
	return func() { beforeSegmentCommit = old }
}
