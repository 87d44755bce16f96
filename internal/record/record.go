// Package record is the form of graylane's record of a service in Consul KV, which the registrar
// writes and the watcher reads: the key that holds a service's recorded state, and that state's
// JSON.
package record

import (
	"maps"

	"github.com/graylane/graylane/gray"
)

// State is the state graylane keeps in KV for one service: the gray meta of each instance that a
// graylane change touched, which wins over the instance's own spec when it registers again, and the
// service's decision options.
type State struct {
	Instances map[string]map[string]string `json:"instances"`
	Options   *gray.Options                `json:"options,omitempty"`
}

// Clone returns a copy of st whose Instances map may be changed (the meta maps it holds are shared,
// and are replaced, never modified). Its Instances is never nil.
func (st State) Clone() State {
	c := State{Instances: maps.Clone(st.Instances), Options: st.Options}
	if c.Instances == nil {
		c.Instances = map[string]map[string]string{}
	}
	return c
}

// StateKey returns the KV key of a service's recorded state under the KV folder prefix.
func StateKey(prefix, service string) string {
	return prefix + "/services/" + service + "/state"
}
