package registrar

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consulclient"
	"github.com/graylane/graylane/internal/record"
	"github.com/graylane/graylane/internal/retry"
)

// Keeper keeps one instance's gray meta at its desired state: the state recorded by graylane changes,
// else the instance's spec. Something else may register the instance with other meta: the Kratos
// consul registry re-registers its original meta when a TTL update fails (after an agent lost its
// state, say). The keeper sees that through blocking queries on the instance and on its recorded
// state, and writes the desired gray meta back through the agent. Close stops it.
type Keeper struct {
	r       *Registrar
	service string
	id      string
	spec    gray.Meta

	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	kick    chan struct{}
	repairs atomic.Uint64
	desired atomic.Pointer[gray.Meta]
}

// Keep starts a Keeper for an instance registered through this Registrar's agent.
func (r *Registrar) Keep(service, id string, spec gray.Meta) *Keeper {
	k := &Keeper{r: r, service: service, id: id, spec: spec, kick: make(chan struct{}, 1)}
	k.desired.Store(&spec)
	k.ctx, k.cancel = context.WithCancel(context.Background())
	k.wg.Add(3)
	go k.watchState()
	go k.watchInstance()
	go k.reconcile()
	return k
}

// Repairs counts the times the keeper wrote the desired meta back.
func (k *Keeper) Repairs() uint64 { return k.repairs.Load() }

// Close stops the keeper and waits for its goroutines.
func (k *Keeper) Close() error {
	k.cancel()
	k.wg.Wait()
	return nil
}

func (k *Keeper) poke() {
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

// watchState follows the recorded state with blocking queries.
func (k *Keeper) watchState() {
	defer k.wg.Done()
	var index uint64
	for k.ctx.Err() == nil {
		pair, meta, err := k.r.client.KV().Get(k.r.stateKey(k.service),
			(&api.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Minute}).WithContext(k.ctx))
		if err != nil {
			retry.Sleep(k.ctx, time.Second)
			continue
		}
		if meta.LastIndex < index {
			index = 0
		} else {
			index = max(meta.LastIndex, 1)
		}
		desired := k.spec
		if pair != nil {
			var st record.State
			if json.Unmarshal(pair.Value, &st) == nil {
				if rec, ok := st.Instances[k.id]; ok {
					if m, err := gray.ParseMeta(rec); err == nil {
						desired = m
					}
				}
			}
		}
		k.desired.Store(&desired)
		k.poke()
	}
}

// watchInstance follows the instance's registration on its agent with hash-based blocking queries.
func (k *Keeper) watchInstance() {
	defer k.wg.Done()
	hash := ""
	for k.ctx.Err() == nil {
		_, meta, err := k.r.client.Agent().Service(k.id,
			(&api.QueryOptions{WaitHash: hash, WaitTime: 5 * time.Minute}).WithContext(k.ctx))
		if err != nil {
			hash = ""
			retry.Sleep(k.ctx, 500*time.Millisecond) // not registered (yet, or any more), or the agent is away
			continue
		}
		if meta.LastContentHash != hash {
			hash = meta.LastContentHash
			k.poke()
		}
	}
}

// reconcile writes the desired gray meta back whenever the agent's differs.
func (k *Keeper) reconcile() {
	defer k.wg.Done()
	for {
		select {
		case <-k.ctx.Done():
			return
		case <-k.kick:
		}
		svc, _, err := k.r.client.Agent().Service(k.id, (&api.QueryOptions{}).WithContext(k.ctx))
		if err != nil {
			continue
		}
		desired := *k.desired.Load()
		want, err := desired.Encode()
		if err != nil {
			continue
		}
		have := map[string]string{}
		for key, v := range svc.Meta {
			if gray.IsMetaKey(key) {
				have[key] = v
			}
		}
		if maps.Equal(have, want) || have[gray.KeyDrain] == "true" {
			// A draining instance is on its way out: its record is removed just before it is
			// deregistered, and writing the spec back then would send it traffic again.
			continue
		}
		inst := &Instance{ID: k.id, Service: k.service}
		if wrote, err := k.r.reregisterOn(k.ctx, k.r.client, inst, desired); err == nil && wrote {
			k.repairs.Add(1)
		}
	}
}

// Registration is a process's own registration: the instance, a keeper for its gray meta, and
// optionally a drain on a signal.
type Registration struct {
	r      *Registrar
	spec   Spec
	keeper *Keeper
	grace  time.Duration

	done      chan struct{}
	doneOnce  sync.Once
	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	drainErr  error
}

// RegisterOption configures Register.
type RegisterOption func(*Registration, *[]os.Signal)

// DrainOnSignal makes the registration drain itself when the process gets one of sigs (typically
// SIGTERM): weight 0 and draining, grace for clients to see it, then deregistration; Done is closed
// afterwards so that the process can exit.
func DrainOnSignal(grace time.Duration, sigs ...os.Signal) RegisterOption {
	return func(g *Registration, s *[]os.Signal) {
		g.grace = grace
		*s = append(*s, sigs...)
	}
}

// Register registers a process's own instance from spec, with the gray meta recorded by earlier
// graylane changes winning over the spec's, and keeps that meta in place while the process runs.
func (r *Registrar) Register(ctx context.Context, spec Spec, opts ...RegisterOption) (*Registration, error) {
	g := &Registration{r: r, spec: spec, grace: DefaultDrainGrace, done: make(chan struct{}), stop: make(chan struct{})}
	var sigs []os.Signal
	for _, o := range opts {
		o(g, &sigs)
	}
	desired, err := r.DesiredMeta(ctx, spec.Name, spec.ID, spec.Gray)
	if err != nil {
		return nil, err
	}
	s := spec
	s.Gray = desired
	reg, err := s.Registration()
	if err != nil {
		return nil, err
	}
	if err := r.client.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		return nil, r.wrap(err, "registering %s", spec.ID)
	}
	g.keeper = r.Keep(spec.Name, spec.ID, spec.Gray)
	if len(sigs) > 0 {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, sigs...)
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			defer signal.Stop(ch)
			select {
			case <-ch:
				g.drainErr = g.Drain(context.Background())
				g.doneOnce.Do(func() { close(g.done) })
			case <-g.stop:
			}
		}()
	}
	return g, nil
}

// Lane returns the lane the instance serves in, from its desired gray meta (the recorded state,
// else the spec); it follows promotions while the process runs. Safe for concurrent use; it does
// not allocate.
func (g *Registration) Lane() string { return g.keeper.desired.Load().LaneName() }

// Desired returns the gray meta the keeper holds the instance at.
func (k *Keeper) Desired() gray.Meta { return *k.desired.Load() }

// Done is closed once a drain started by a signal has finished.
func (g *Registration) Done() <-chan struct{} { return g.done }

// DrainError returns the error of a drain started by a signal, after Done is closed.
func (g *Registration) DrainError() error { return g.drainErr }

// Drain drains the instance and deregisters it (see Registrar.Drain). The keeper stops first.
func (g *Registration) Drain(ctx context.Context) error {
	g.keeper.Close()
	_, err := g.r.Drain(ctx, g.spec.ID, DrainOptions{Service: g.spec.Name, Grace: g.grace})
	return err
}

// Close stops the keeper and the signal handler and deregisters the instance (without draining).
func (g *Registration) Close() error {
	var err error
	g.closeOnce.Do(func() {
		close(g.stop)
		g.wg.Wait()
		g.keeper.Close()
		err = g.r.client.Agent().ServiceDeregister(g.spec.ID)
		if consulclient.HTTPStatus(err) == 404 {
			err = nil
		}
		err = consulclient.Redact(err, g.r.cfg.Token)
	})
	return err
}
