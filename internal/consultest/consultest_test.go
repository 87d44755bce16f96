package consultest_test

import (
	"net/http"
	"testing"

	"github.com/graylane/graylane/internal/consultest"
)

func TestStartStop(t *testing.T) {
	a := consultest.Start(t)
	resp, err := http.Get(a.URL() + "/v1/status/leader")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	a.Stop()
	if _, err := http.Get(a.URL() + "/v1/status/leader"); err == nil {
		t.Fatal("agent still answers after Stop")
	}
}
