package portal

// The agent's connection limit, on the page. A Consul agent refuses more than
// limits.http_max_conns_per_client connections from one address (default 200) with 429 Too Many
// Requests. To the portal that means pages that stop following Consul without a sign: a watch the
// agent refuses keeps its last answer and retries, and the page built from it still looks live.
// So the portal counts every refusal, its watcher's (watch.Watcher.Refused) and its own requests'
// (the catalog, the records, the segments, the services' models), and every page shows a banner
// that names the agent, the count, when the last one came and the setting to raise. The watcher
// counts its refusals but tells no one, so followRefusals reads its counter, and the services'
// states, every refusalPoll.

import (
	"errors"
	"strings"
	"time"

	"github.com/graylane/graylane/internal/consulclient"
	"github.com/graylane/graylane/watch"
)

const (
	// refusalPoll is how often the portal reads its watcher's count of refusals: one atomic load,
	// and a look at each service's state once the agent has refused anything.
	refusalPoll = time.Second
	// refusalRecent is how long after the last refusal the banner stays red; after that it says
	// that none came since.
	refusalRecent = 2 * time.Minute
)

// refusalState is what the banner shows: the Consul agent's refusals of the portal's requests for
// its connection limit. It is a value, replaced as a whole; the zero value means none so far.
type refusalState struct {
	// Agent is the agent as the portal reaches it, with its scheme.
	Agent string
	// HTTPS is set when the portal reaches the agent over HTTPS: its watches share HTTP/2
	// connections already, and only raising the limit helps.
	HTTPS bool
	// Count is the number of requests the agent refused since the portal started.
	Count uint64
	// Last is when the portal saw the count grow last (within refusalPoll of the refusal).
	Last time.Time
	// Unfollowed is how many services' watches the agent refuses now: their pages miss changes
	// until a retry gets a connection.
	Unfollowed int
	// Active is set while a watch is refused, and for refusalRecent after the last refusal.
	Active bool
}

// noteRefusal counts err when it is the agent refusing one of the portal's own requests for its
// connection limit; the banner shows it at the next poll.
func (s *Server) noteRefusal(err error) {
	if consulclient.IsConnLimit(err) {
		s.ownRefused.Add(1)
	}
}

// followRefusals updates the banner's state every refusalPoll until the portal closes.
func (s *Server) followRefusals() {
	defer s.wg.Done()
	tick := time.NewTicker(refusalPoll)
	defer tick.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-tick.C:
			s.checkRefusals(time.Now())
		}
	}
}

// checkRefusals reads the refusals counted so far and the services whose watch the agent refuses,
// stores what the banner shows at now, and wakes the open pages when that changed. It is safe for
// concurrent use (it holds s.mu while it looks at the services).
func (s *Server) checkRefusals(now time.Time) {
	count := s.watcher.Refused() + s.ownRefused.Load()
	if count == 0 {
		return // the common case: nothing refused, nothing to look at
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.refusals
	if count > st.Count {
		st.Count, st.Last = count, now
	}
	st.Unfollowed = 0
	for _, ws := range s.services {
		var refused *watch.ConnLimitError
		if errors.As(ws.view.State().LastError, &refused) {
			st.Unfollowed++
		}
	}
	st.Active = st.Unfollowed > 0 || now.Sub(st.Last) < refusalRecent
	if st != s.refusals {
		s.refusals = st
		s.broadcast()
	}
}

// agentURL returns the agent's address as the portal reaches it, with its scheme.
func agentURL(address, scheme string) string {
	if strings.Contains(address, "://") {
		return address
	}
	return scheme + "://" + address
}
