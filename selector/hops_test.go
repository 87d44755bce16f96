package selector_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/go-kratos/kratos/v2/transport"
	"google.golang.org/grpc"

	"github.com/graylane/graylane/gray"
)

// nextHop calls conn the way the incoming request came: a stream for a stream, else unary.
func nextHop(conn **grpc.ClientConn) func(ctx context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		if tr, ok := transport.FromServerContext(ctx); ok && tr.Operation() == watchMethod {
			return watchStream(ctx, *conn)
		}
		return who(ctx, *conn)
	}
}

// TestThreeHops: client -> A -> B -> C over Kratos gRPC, every client with the option and Kratos'
// metadata middleware. A and C have canaries, B has none. The lane chosen at A holds at C; B serves
// from stable and still passes the tag on; a stream carries it as well as a unary call, and an HTTP
// Invoke into A as well.
func TestThreeHops(t *testing.T) {
	e := newEnv(t)
	tagOnly := gray.Meta{Canary: true} // reached only by a tag
	e.start("cservice", "c-stable", gray.Meta{}, nil)
	e.start("cservice", "c-canary", tagOnly, nil)
	toC := e.dial("cservice")
	bStable := e.start("bservice", "b-stable", gray.Meta{}, nextHop(&toC))
	toB := e.dial("bservice")
	e.start("aservice", "a-stable", gray.Meta{}, nextHop(&toB))
	e.start("aservice", "a-canary", gray.Meta{Canary: true, Match: matchUser123}, nextHop(&toB))
	toA := e.dial("aservice")
	httpA := e.httpClient("aservice")
	ctx := context.Background()
	waitFor(t, 10*time.Second, "the chain", func() bool {
		s, err := who(ctx, toA, "userid", "123")
		return err == nil && strings.HasPrefix(s, "a-canary") && strings.HasSuffix(s, "c-canary")
	})
	for len(bStable.inst.tags) > 0 { // what the calls above left
		<-bStable.inst.tags
	}

	for _, tc := range []struct {
		name string
		call func(ctx context.Context, headers ...string) (string, error)
	}{
		{"unary", func(ctx context.Context, h ...string) (string, error) { return who(ctx, toA, h...) }},
		{"stream", func(ctx context.Context, h ...string) (string, error) { return watchStream(ctx, toA, h...) }},
		// An HTTP Invoke to A's HTTP server, whose handler calls B over gRPC.
		{"http", func(ctx context.Context, h ...string) (string, error) { return getWho(ctx, httpA, h...) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := 0; i < 50; i++ {
				got, err := tc.call(ctx, "userid", "123")
				if err != nil || got != "a-canary>b-stable>c-canary" {
					t.Fatalf("matched call %d: %q, %v; want a-canary>b-stable>c-canary", i, got, err)
				}
				select {
				case tag := <-bStable.inst.tags:
					if tag != "canary" {
						t.Fatalf("b-stable received tag %q, want canary", tag)
					}
				default:
					t.Fatal("b-stable recorded no request")
				}
				got, err = tc.call(ctx, "userid", "7")
				if err != nil || got != "a-stable>b-stable>c-stable" {
					t.Fatalf("unmatched call %d: %q, %v; want a-stable>b-stable>c-stable", i, got, err)
				}
				<-bStable.inst.tags
			}
		})
	}
}
