package watch_test

import (
	"fmt"
	"log"
	"time"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/watch"
)

// A data plane follows bservice and decides each request from the view's current snapshot, which
// a request reads without locking. Until Consul has answered there is no decision to make: wait
// for Ready, within a bound. Afterwards, while Consul cannot be reached, the snapshot stays the last
// good one and the view says it is stale.
func ExampleWatcher_Service() {
	w, err := watch.New(nil) // CONSUL_HTTP_ADDR and friends
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()

	v := w.Service("bservice")
	select {
	case <-v.Ready(): // Consul answered for the instances and the options
	case <-time.After(10 * time.Second):
		log.Fatalf("no answer from Consul for bservice: %v", v.State().LastError)
	}

	d := v.Snapshot().Decide(&gray.StaticRequest{Headers: map[string]string{"userid": "123"}, URLPath: "/api/user"})
	for _, ep := range d.Instances {
		fmt.Printf("lane %q: %s:%d\n", d.Lane, ep.Address, ep.Port)
	}
	if v.Stale() {
		log.Printf("bservice: Consul unreachable, deciding from its last answer: %v", v.State().LastError)
	}
}
