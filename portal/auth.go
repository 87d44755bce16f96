package portal

import (
	"bufio"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/graylane/graylane/registrar"
)

// Sign-in. The portal can move production traffic, so every page but the sign-in page needs a
// session. Operators sign in with their name and password, checked against a password file given at
// start: one line per operator, "name:pbkdf2-sha256:ITERATIONS:SALT:HASH" (base64), made with
// `graylane portal --hash-password NAME`. A password file, rather than one shared token, names each
// operator, and that name is what the history records for every change made from the page; an
// operator is added or removed by editing the file and restarting, with no secret shared between
// people.

// DefaultIterations is the PBKDF2-SHA256 cost of new password hashes.
const DefaultIterations = 600_000

// SessionTTL is how long a sign-in lasts.
const SessionTTL = 12 * time.Hour

const sessionCookie = "graylane_session"

// Passwords holds the operators allowed to sign in. It is immutable once loaded.
type Passwords struct {
	users  map[string]passwordHash
	checks atomic.Int64 // password checks run, for the throttle's tests
}

type passwordHash struct {
	iter       int
	salt, hash []byte
}

// LoadPasswords reads a password file. It refuses a file that others may read (mode must not grant
// group or world access) and names the line of any entry it cannot parse.
func LoadPasswords(path string) (*Passwords, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("password file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("password file %s: mode %v lets other users read the hashes; chmod 600 it", path, fi.Mode().Perm())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("password file: %w", err)
	}
	defer f.Close()
	p := &Passwords{users: map[string]passwordHash{}}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, h, err := parseHashLine(line)
		if err != nil {
			return nil, fmt.Errorf("password file %s line %d: %v", path, n, err)
		}
		if _, dup := p.users[name]; dup {
			return nil, fmt.Errorf("password file %s line %d: operator %q appears twice", path, n, name)
		}
		p.users[name] = h
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("password file %s: %w", path, err)
	}
	if len(p.users) == 0 {
		return nil, fmt.Errorf("password file %s names no operator; add one with graylane portal --hash-password NAME", path)
	}
	return p, nil
}

func parseHashLine(line string) (string, passwordHash, error) {
	parts := strings.Split(line, ":")
	if len(parts) != 5 || parts[1] != "pbkdf2-sha256" {
		return "", passwordHash{}, errors.New("expected name:pbkdf2-sha256:iterations:salt:hash")
	}
	if err := validOperator(parts[0]); err != nil {
		return "", passwordHash{}, err
	}
	iter, err := strconv.Atoi(parts[2])
	if err != nil || iter < 1000 {
		return "", passwordHash{}, fmt.Errorf("iterations %q: want a number of at least 1000", parts[2])
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[3])
	hash, err2 := base64.RawStdEncoding.DecodeString(parts[4])
	if err1 != nil || err2 != nil || len(salt) < 8 || len(hash) != 32 {
		return "", passwordHash{}, errors.New("salt or hash is not valid base64 of the right length")
	}
	return parts[0], passwordHash{iter: iter, salt: salt, hash: hash}, nil
}

func validOperator(name string) error {
	if name == "" || len(name) > 64 || strings.ContainsAny(name, ": \t\r\n<>&\"'") {
		return fmt.Errorf("operator name %q: use 1-64 characters without spaces, colons or markup", name)
	}
	return nil
}

// HashPassword returns a password file line for an operator.
func HashPassword(name, password string) (string, error) {
	return hashPassword(name, password, DefaultIterations)
}

func hashPassword(name, password string, iter int) (string, error) {
	if err := validOperator(name); err != nil {
		return "", err
	}
	if len(password) < 8 {
		return "", errors.New("the password must have at least 8 characters")
	}
	salt := make([]byte, 16)
	rand.Read(salt)
	key, err := pbkdf2.Key(sha256.New, password, salt, iter, 32)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s:pbkdf2-sha256:%d:%s:%s", name, iter, base64.RawStdEncoding.EncodeToString(salt),
		base64.RawStdEncoding.EncodeToString(key)), nil
}

// check reports whether the password is the operator's. It costs the same for unknown names.
func (p *Passwords) check(name, password string) bool {
	p.checks.Add(1)
	h, ok := p.users[name]
	if !ok {
		h = passwordHash{iter: DefaultIterations, salt: make([]byte, 16), hash: make([]byte, 32)}
	}
	key, err := pbkdf2.Key(sha256.New, password, h.salt, h.iter, 32)
	return ok && err == nil && subtle.ConstantTimeCompare(key, h.hash) == 1
}

// session is one signed-in browser.
type session struct {
	id       string
	operator string
	csrf     string
	expires  time.Time

	mu    sync.Mutex
	plans map[string]*pending // planned changes awaiting confirmation, by ID
	flash *flash              // the outcome of the last action, shown once
}

// pending is a change shown for confirmation: a service's (plan, drain or rollout) or a segment's.
type pending struct {
	id      string
	service string          // empty for a segment's change
	plan    *registrar.Plan // nil for a drain, a rollout control or a segment's change
	drain   *drainPlan
	rollout *rolloutPlan
	segment *segmentPlan
	made    time.Time
}

type drainPlan struct {
	instance      string
	keep          bool
	grace         time.Duration
	before, after string // described for the confirmation
	meta          string // the instance's gray meta keys when planned, to detect a change since
}

type rolloutPlan struct {
	action, lane        string
	before, after, note string
}

// flash is a message for the next page.
type flash struct {
	Kind string // ok, conflict, error, info
	Text string
}

type sessions struct {
	mu   sync.Mutex
	byID map[string]*session
}

func randomID() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (ss *sessions) create(operator string) *session {
	s := &session{id: randomID(), operator: operator, csrf: randomID(), expires: time.Now().Add(SessionTTL), plans: map[string]*pending{}}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	now := time.Now()
	for id, old := range ss.byID {
		if now.After(old.expires) {
			delete(ss.byID, id)
		}
	}
	ss.byID[s.id] = s
	return s
}

func (ss *sessions) get(r *http.Request) *session {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s := ss.byID[c.Value]
	if s == nil || time.Now().After(s.expires) {
		delete(ss.byID, c.Value)
		return nil
	}
	return s
}

func (ss *sessions) drop(id string) {
	ss.mu.Lock()
	delete(ss.byID, id)
	ss.mu.Unlock()
}

func setSessionCookie(w http.ResponseWriter, r *http.Request, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: value, Path: "/", MaxAge: maxAge,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode})
}

// sameOrigin refuses requests that a browser marks as coming from another site: the Origin header,
// when present, must name this host, and Sec-Fetch-Site must not be cross-site.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" || site == "same-site" {
		return false
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	return err == nil && u.Host == r.Host
}

// checkCSRF reports whether a state-changing request carries the session's token and comes from the
// portal's own pages.
func checkCSRF(r *http.Request, s *session) bool {
	token := r.PostFormValue("csrf")
	return sameOrigin(r) && token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(s.csrf)) == 1
}
