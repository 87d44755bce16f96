package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/graylane/graylane/portal"
	"github.com/graylane/graylane/registrar"
)

// portalOpts holds the flags of graylane portal.
type portalOpts struct {
	listen, passwords, hashFor string
	tlsCert, tlsKey            string
	hosts                      string
	readOnly, open             bool
}

func portalFlags(fs *pflag.FlagSet, o *opts) {
	p := &o.portal
	fs.StringVar(&p.listen, "listen", "127.0.0.1:8089", "`address` to serve on (loopback unless told otherwise)")
	fs.StringVar(&p.passwords, "passwords", "", "password `file` of the operators who may sign in (made with --hash-password)")
	fs.BoolVar(&p.readOnly, "read-only", false, "show everything, change nothing (for a dashboard on a wall)")
	fs.BoolVar(&p.open, "no-sign-in", false, "serve without sign-in; only with --read-only")
	fs.StringVar(&p.hashFor, "hash-password", "", "print a password file line for this `operator`, reading the password from stdin, and exit")
	fs.StringVar(&p.tlsCert, "tls-cert", "", "serve HTTPS with this certificate `file` (PEM)")
	fs.StringVar(&p.tlsKey, "tls-key", "", "the certificate's key `file` (PEM)")
	fs.StringVar(&p.hosts, "host", "", "with --no-sign-in: further host `names` the portal answers to, comma-separated "+
		"(default: the listen address's own names; others get 421, against DNS rebinding)")
}

func runPortal(ctx context.Context, e *env, _ []string) error {
	p := &e.o.portal
	if p.hashFor != "" {
		password, err := readPassword(os.Stdin, e.stderr, p.hashFor)
		if err != nil {
			return err
		}
		entry, err := portal.HashPassword(p.hashFor, password)
		if err != nil {
			return &usageError{"--hash-password: " + err.Error()}
		}
		fmt.Fprintln(e.stdout, entry)
		return nil
	}
	cfg := portal.Config{Consul: registrar.NewConfig(e.o.consul), KVPrefix: e.o.prefix, ReadOnly: p.readOnly, Open: p.open}
	switch {
	case p.open && !p.readOnly:
		return &usageError{"--no-sign-in needs --read-only: a portal that can change traffic needs sign-in"}
	case p.open && p.passwords != "":
		return &usageError{"give --passwords or --no-sign-in, not both"}
	case !p.open && p.passwords == "":
		return &usageError{"--passwords FILE is required (make lines with graylane portal --hash-password NAME), or --read-only --no-sign-in"}
	case (p.tlsCert == "") != (p.tlsKey == ""):
		return &usageError{"give both --tls-cert and --tls-key"}
	}
	if !p.open {
		var err error
		if cfg.Passwords, err = portal.LoadPasswords(p.passwords); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", p.listen)
	if err != nil {
		return err
	}
	if p.open {
		cfg.Hosts = append(listenHostNames(ln.Addr().(*net.TCPAddr)), splitList(p.hosts)...)
	}
	srvPortal, err := portal.New(cfg)
	if err != nil {
		ln.Close()
		return err
	}
	defer srvPortal.Close()
	srv := srvPortal.HTTPServer()
	scheme := "http"
	if p.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(p.tlsCert, p.tlsKey)
		if err != nil {
			ln.Close()
			return err
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		ln = tls.NewListener(ln, srv.TLSConfig)
		scheme = "https"
	}
	addr := ln.Addr().(*net.TCPAddr)
	if !addr.IP.IsLoopback() && scheme == "http" {
		fmt.Fprintf(e.stderr, "graylane portal: warning: serving plain HTTP beyond loopback on %s: passwords and sessions cross the network unencrypted; use --tls-cert/--tls-key or a TLS proxy\n", addr)
	}
	mode := "sign-in required"
	switch {
	case p.open:
		mode = "read-only, no sign-in"
	case p.readOnly:
		mode = "read-only, sign-in required"
	}
	fmt.Fprintf(e.stdout, "graylane portal: serving %s://%s (%s)\n", scheme, addr, mode)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err = <-served:
	case <-ctx.Done():
	}
	srvPortal.Close() // ends the event streams, so that Shutdown need not wait for them
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if serr := srv.Shutdown(shutCtx); err == nil || errors.Is(err, http.ErrServerClosed) {
		err = serr
	}
	return err
}

// listenHostNames returns the names a browser on this machine or the network may use for a
// listener: for loopback, localhost and the loopback addresses; for every address, the machine's
// name and the addresses of its interfaces too; else the address itself.
func listenHostNames(addr *net.TCPAddr) []string {
	names := []string{addr.IP.String()}
	if addr.IP.IsLoopback() || addr.IP.IsUnspecified() {
		names = append(names, "localhost", "127.0.0.1", "::1")
	}
	if addr.IP.IsUnspecified() {
		if h, err := os.Hostname(); err == nil {
			names = append(names, h)
		}
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, a := range addrs {
				if n, ok := a.(*net.IPNet); ok {
					names = append(names, n.IP.String())
				}
			}
		}
	}
	return names
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// readPassword reads one line from in: at a terminal after a prompt on prompt, without echo; from
// a pipe or a file as it is.
func readPassword(in *os.File, prompt io.Writer, operator string) (string, error) {
	if fd := int(in.Fd()); term.IsTerminal(fd) {
		fmt.Fprintf(prompt, "password for %s (not shown): ", operator)
		b, err := term.ReadPassword(fd)
		fmt.Fprintln(prompt)
		if err != nil {
			return "", fmt.Errorf("--hash-password: reading the password: %w", err)
		}
		return string(b), nil
	}
	line, _ := bufio.NewReader(in).ReadString('\n')
	return strings.TrimRight(line, "\r\n"), nil
}
