// Package syncbuf has the buffer that tests give a child process or a goroutine for its output, to
// read while it is still being written.
package syncbuf

import (
	"bytes"
	"sync"
)

// Buffer collects output from concurrent writers. With Max set, it keeps about the most recent Max
// bytes: past Max, the older half goes.
type Buffer struct {
	Max int

	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.Max > 0 && b.buf.Len() > b.Max {
		rest := b.buf.Bytes()[b.buf.Len()-b.Max/2:]
		b.buf = *bytes.NewBuffer(append([]byte(nil), rest...))
	}
	return b.buf.Write(p)
}

// String returns what was written (the most recent part, with Max set).
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Tail returns the last n bytes written, marked with "..." when there was more.
func (b *Buffer) Tail(n int) string {
	s := b.String()
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}
