package apisixtest

// The APISIX side of the ext-plugin protocol, to drive a plugin runner as APISIX does: start it
// with APISIX_LISTEN_ADDRESS=unix:... and APISIX_CONF_EXPIRE_TIME, dial its socket, and speak the
// wire protocol (internal/runnerclient).

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/graylane/graylane/internal/runnerclient"
	"github.com/graylane/graylane/internal/syncbuf"
)

// Runner is a plugin runner process, started as APISIX starts it.
type Runner struct {
	tb   testing.TB
	cmd  *exec.Cmd
	sock string
	out  *syncbuf.Buffer
	done chan struct{}
	err  error // the process's exit, once done is closed
}

// StartRunner starts argv as APISIX starts its runner, with env added, and waits for the socket.
// The runner is stopped with SIGTERM when the test ends.
func StartRunner(tb testing.TB, sock string, argv []string, env ...string) *Runner {
	tb.Helper()
	r := &Runner{tb: tb, sock: sock, out: &syncbuf.Buffer{}, done: make(chan struct{})}
	r.cmd = exec.Command(argv[0], argv[1:]...)
	r.cmd.Env = append([]string{
		"APISIX_LISTEN_ADDRESS=unix:" + sock,
		"APISIX_CONF_EXPIRE_TIME=3600",
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + os.Getenv("HOME"),
	}, env...)
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		tb.Fatalf("start runner: %v", err)
	}
	go func() { r.err = r.cmd.Wait(); close(r.done) }()
	tb.Cleanup(func() { r.Stop() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			return r
		}
		select {
		case <-r.done:
			tb.Fatalf("runner exited before listening: %v\n%s", r.err, r.out)
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("runner did not listen on %s: %v\n%s", sock, err, r.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop sends SIGTERM and returns the process's exit error; it kills the process after 10 s.
func (r *Runner) Stop() error {
	select {
	case <-r.done:
		return r.err
	default:
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		r.cmd.Process.Kill()
		<-r.done
		return errors.New("runner ignored SIGTERM for 10s")
	}
	return r.err
}

// Socket returns the path of the runner's socket.
func (r *Runner) Socket() string { return r.sock }

// Output returns what the runner has written (its log).
func (r *Runner) Output() string { return r.out.String() }

// Alive reports whether the process is still running.
func (r *Runner) Alive() bool {
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

// Conn, Request, Answer and ErrorAnswer are runnerclient's: the protocol client lives there so that
// code outside tests (the demo) can use it.
type (
	Conn        = runnerclient.Conn
	Request     = runnerclient.Request
	Answer      = runnerclient.Answer
	ErrorAnswer = runnerclient.ErrorAnswer
)

// DialConn connects to a runner's socket. Close the connection when done.
func DialConn(sock string) (*Conn, error) { return runnerclient.DialConn(sock) }

// Dial connects to a runner's socket for the test; the connection closes when the test ends.
func Dial(tb testing.TB, sock string) *Conn {
	tb.Helper()
	c, err := DialConn(sock)
	if err != nil {
		tb.Fatalf("dial runner: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}
