// Package record is the form of graylane's record of a service in Consul KV, which the registrar
// writes and the watcher reads: the key that holds a service's recorded state, that state's JSON,
// and the key that holds a copy of the service's decision options for the watchers.
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
	// OptionsKeyed is set once the registrar has written the service's options key (OptionsKey)
	// beside this state, defaults included. A state without it was recorded before the options
	// folder existed, and its options may live here only.
	OptionsKeyed bool `json:"options_keyed,omitempty"`
}

// Clone returns a copy of st whose Instances map may be changed (the meta maps it holds are shared,
// and are replaced, never modified). Its Instances is never nil.
func (st State) Clone() State {
	c := State{Instances: maps.Clone(st.Instances), Options: st.Options, OptionsKeyed: st.OptionsKeyed}
	if c.Instances == nil {
		c.Instances = map[string]map[string]string{}
	}
	return c
}

// StateKey returns the KV key of a service's recorded state under the KV folder prefix.
func StateKey(prefix, service string) string {
	return ServicesFolder(prefix) + service + "/state"
}

// ServicesFolder returns the KV folder that holds a folder per service: its state and its history.
func ServicesFolder(prefix string) string { return prefix + "/services/" }

// OptionsFolder returns the KV folder that holds the decision options of every service the registrar
// has recorded, one key per service (OptionsKey), and nothing else: a watcher follows all of them
// with one recursive blocking query, which never reads a service's history.
func OptionsFolder(prefix string) string { return prefix + "/options/" }

// OptionsKey returns the KV key of a service's decision options (JSON gray.Options; "{}" for the
// defaults). The registrar writes it in the same transaction as the state whose Options it copies:
// with the service's first state, whenever the options change, and with the first change to a state
// recorded before the key existed (State.OptionsKeyed). Such a state may hold options with no key
// until then; a reader that finds no key takes the state's Options.
func OptionsKey(prefix, service string) string { return OptionsFolder(prefix) + service }
