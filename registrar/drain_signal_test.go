package registrar_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/registrar"
)

// TestMain lets the test binary double as a registered process for TestDrainOnSIGTERM.
func TestMain(m *testing.M) {
	if os.Getenv("GRAYLANE_SIGTERM_HELPER") != "" {
		os.Exit(signalHelper())
	}
	os.Exit(m.Run())
}

// signalHelper registers an instance that drains itself on SIGTERM, says so, and exits once drained.
func signalHelper() int {
	r, err := registrar.New(registrar.NewConfig(os.Getenv("GRAYLANE_SIGTERM_HELPER")), registrar.WithOperator("helper"))
	if err != nil {
		fmt.Println(err)
		return 2
	}
	specs, err := registrar.ParseSpecs("helper", []byte("name: sig\nid: sig-canary-1\nport: 1\nmeta: {canary: true, weight: 5}\n"))
	if err != nil {
		fmt.Println(err)
		return 2
	}
	reg, err := r.Register(context.Background(), specs[0], registrar.DrainOnSignal(700*time.Millisecond, syscall.SIGTERM))
	if err != nil {
		fmt.Println(err)
		return 2
	}
	fmt.Println("registered")
	<-reg.Done()
	if err := reg.DrainError(); err != nil {
		fmt.Println(err)
		return 1
	}
	return 0
}

// TestDrainOnSIGTERM: a registered process that gets SIGTERM marks itself draining with weight 0,
// waits its grace period, deregisters and exits 0.
func TestDrainOnSIGTERM(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "GRAYLANE_SIGTERM_HELPER="+a.HTTPAddr)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "registered" {
		t.Fatalf("helper said %q", lines.Text())
	}
	if w := grayOf(t, r, "sig")["sig-canary-1"].Weight; w != 500 {
		t.Fatalf("registered with weight %s", w)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sawDrain := false
	deadline := time.Now().Add(15 * time.Second)
	for {
		instances, _, err := r.Instances(context.Background(), "sig")
		if err != nil {
			t.Fatal(err)
		}
		if len(instances) == 0 {
			break
		}
		if g := instances[0].Gray; g.Drain && g.Weight == 0 {
			sawDrain = true
		}
		if time.Now().After(deadline) {
			t.Fatal("the instance was not deregistered after SIGTERM")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var rest strings.Builder
	for lines.Scan() {
		rest.WriteString(lines.Text() + "\n")
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper exited with %v: %s", err, rest.String())
	}
	if !sawDrain {
		t.Fatal("the instance was never seen draining with weight 0 before it left")
	}
}
