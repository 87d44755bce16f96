package rollout

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Notification formats (Notification.Format).
const (
	// FormatWebhook posts the event as graylane's JSON (Event).
	FormatWebhook = "webhook"
	// FormatDingTalk posts a text message to a DingTalk group robot (钉钉自定义机器人).
	FormatDingTalk = "dingtalk"
	// FormatFeishu posts a text message to a Feishu/Lark custom bot (飞书自定义机器人).
	FormatFeishu = "feishu"
	// FormatWeCom posts a text message to a WeCom group robot (企业微信群机器人).
	FormatWeCom = "wecom"
	// FormatSlack posts a text message to a Slack incoming webhook.
	FormatSlack = "slack"
)

// Notification kinds (Notification.On, Event.Kind).
const (
	// NotifyBeforeStep: a step's weight is about to be set.
	NotifyBeforeStep = "before_step"
	// NotifyAfterStep: a step's weight has been set.
	NotifyAfterStep = "after_step"
	// NotifyPaused: the rollout waits for an operator (an approval step, or gates unknown for too long).
	NotifyPaused = "paused"
	// NotifyOutcome: the rollout ended: promoted, rolled back or aborted.
	NotifyOutcome = "outcome"
)

var (
	notificationFormats = []string{FormatWebhook, FormatDingTalk, FormatFeishu, FormatWeCom, FormatSlack}
	notificationKinds   = []string{NotifyBeforeStep, NotifyAfterStep, NotifyPaused, NotifyOutcome}
)

// Notification is a plan's webhook: where the events of the rollout are posted, and how.
//
// A notification never holds a rollout up: it is posted after the change it reports is recorded (a
// rollback is committed before anyone is told of it), with a timeout, and a failure is reported and
// counted, not retried.
type Notification struct {
	// URL is the webhook's address (a robot's address holds its access token).
	URL string `yaml:"url" json:"url"`
	// Format is webhook (the default), dingtalk, feishu, wecom or slack.
	Format string `yaml:"format" json:"format,omitempty"`
	// Secret signs the message where the messenger supports it (DingTalk's and Feishu's signature check).
	Secret string `yaml:"secret" json:"secret,omitempty"`
	// On lists the events posted: before_step, after_step, paused, outcome. Default: all.
	On []string `yaml:"on" json:"on,omitempty"`
	// Timeout bounds each post. Default 5s.
	Timeout Duration `yaml:"timeout" json:"timeout,omitempty"`
}

// DefaultNotificationTimeout bounds a post when a notification gives no timeout.
const DefaultNotificationTimeout = 5 * time.Second

func (n *Notification) wants(kind string) bool {
	return len(n.On) == 0 || slices.Contains(n.On, kind)
}

func (n *Notification) validate(field string) []error {
	var errs []error
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("rollout plan: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	u, err := url.Parse(n.URL)
	switch {
	case n.URL == "":
		fail("url missing")
	case err != nil:
		fail("url: %v", err)
	case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
		fail("url %q: want an http or https address", redactURL(n.URL))
	}
	if n.Format != "" && !slices.Contains(notificationFormats, n.Format) {
		fail("format %q: want one of %s", n.Format, strings.Join(notificationFormats, ", "))
	}
	for _, k := range n.On {
		if !slices.Contains(notificationKinds, k) {
			fail("on: %q: want %s", k, strings.Join(notificationKinds, ", "))
		}
	}
	if n.Timeout < 0 {
		fail("timeout must not be negative")
	}
	return errs
}

// Event is what a notification reports; FormatWebhook posts it as JSON.
type Event struct {
	Kind    string `json:"kind"`
	Service string `json:"service"`
	Lane    string `json:"lane"`
	Status  Status `json:"status"`
	// Step is 1-based; Weight is the lane's weight at that step, in percent.
	Step       int       `json:"step"`
	Steps      int       `json:"steps"`
	Weight     string    `json:"weight"`
	Message    string    `json:"message"`
	Controller string    `json:"controller,omitempty"`
	Time       time.Time `json:"time"`
}

func newEvent(kind string, st *State) Event {
	e := Event{Kind: kind, Service: st.Plan.Service, Lane: st.Plan.Lane, Status: st.Status, Step: st.Step + 1,
		Steps: len(st.Plan.Steps), Message: st.Message, Controller: st.Controller, Time: time.Now().UTC()}
	if st.Step < len(st.Plan.Steps) {
		e.Weight = st.Plan.Steps[st.Step].Weight.String()
	}
	return e
}

// Text is the event as one line for a messenger.
func (e Event) Text() string {
	return fmt.Sprintf("graylane rollout %s/%s: %s (%s, step %d of %d, weight %s%%): %s",
		e.Service, e.Lane, e.Kind, e.Status, e.Step, e.Steps, e.Weight, e.Message)
}

// NotificationError is a notification that could not be delivered.
type NotificationError struct {
	Format, URL string // URL without its query (tokens)
	Err         error
}

func (e *NotificationError) Error() string {
	return fmt.Sprintf("rollout: notification (%s) to %s: %v", e.Format, e.URL, e.Err)
}

func (e *NotificationError) Unwrap() error { return e.Err }

// Redacted returns a copy of the state whose notifications show no token or secret: the webhook
// addresses without their query, and "(set)" for a secret. For showing a rollout.
func (s *State) Redacted() *State {
	c := *s
	c.Plan.Notify = slices.Clone(s.Plan.Notify)
	for i := range c.Plan.Notify {
		n := &c.Plan.Notify[i]
		n.URL = redactURL(n.URL)
		if n.Secret != "" {
			n.Secret = "(set)"
		}
	}
	return &c
}

// NotifyAddress is the address of the plan's i-th notification without its query (where robots keep
// their tokens), for showing.
func (p *Plan) NotifyAddress(i int) string { return redactURL(p.Notify[i].URL) }

// redactURL drops the query and user info of a webhook address: robots keep their tokens there.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(an address that does not parse)"
	}
	u.RawQuery, u.User, u.Fragment = "", nil, ""
	return u.String()
}

// Post sends e to the notification's address in its format, within its timeout.
// A nil client is http.DefaultClient.
func (n *Notification) Post(ctx context.Context, client *http.Client, e Event) error {
	if client == nil {
		client = http.DefaultClient
	}
	format := n.Format
	if format == "" {
		format = FormatWebhook
	}
	fail := func(err error) error { return &NotificationError{Format: format, URL: redactURL(n.URL), Err: err} }
	timeout := time.Duration(n.Timeout)
	if timeout == 0 {
		timeout = DefaultNotificationTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	target := n.URL
	var body any
	text := e.Text()
	switch format {
	case FormatWebhook:
		body = e
	case FormatDingTalk:
		body = map[string]any{"msgtype": "text", "text": map[string]string{"content": text}}
		if n.Secret != "" {
			// DingTalk's signature: timestamp and sign query parameters, HMAC-SHA256 of
			// "timestamp\nsecret" keyed with the secret.
			ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
			mac := hmac.New(sha256.New, []byte(n.Secret))
			mac.Write([]byte(ts + "\n" + n.Secret))
			u, err := url.Parse(target)
			if err != nil {
				return fail(err)
			}
			q := u.Query()
			q.Set("timestamp", ts)
			q.Set("sign", base64.StdEncoding.EncodeToString(mac.Sum(nil)))
			u.RawQuery = q.Encode()
			target = u.String()
		}
	case FormatFeishu:
		m := map[string]any{"msg_type": "text", "content": map[string]string{"text": text}}
		if n.Secret != "" {
			// Feishu's signature: HMAC-SHA256 keyed with "timestamp\nsecret" over nothing.
			ts := strconv.FormatInt(time.Now().Unix(), 10)
			mac := hmac.New(sha256.New, []byte(ts+"\n"+n.Secret))
			m["timestamp"], m["sign"] = ts, base64.StdEncoding.EncodeToString(mac.Sum(nil))
		}
		body = m
	case FormatWeCom:
		body = map[string]any{"msgtype": "text", "text": map[string]string{"content": text}}
	case FormatSlack:
		body = map[string]string{"text": text}
	default:
		return fail(fmt.Errorf("unknown format %q", format))
	}
	payload, err := json.Marshal(body)
	if err != nil {
		return fail(err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(payload))
	if err != nil {
		return fail(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // the address with its token is named by fail
		}
		return fail(err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fail(fmt.Errorf("answered %s: %.200s", resp.Status, answer))
	}
	// The messengers answer 200 with an error code in the body when they refuse a message (a bad
	// token, a keyword or signature check, a rate limit).
	if format == FormatDingTalk || format == FormatFeishu || format == FormatWeCom {
		var code struct {
			ErrCode *int   `json:"errcode"`
			ErrMsg  string `json:"errmsg"`
			Code    *int   `json:"code"`
			Msg     string `json:"msg"`
		}
		if err := json.Unmarshal(answer, &code); err != nil {
			return fail(fmt.Errorf("answer is not the messenger's JSON: %.200s", answer))
		}
		if code.ErrCode != nil && *code.ErrCode != 0 {
			return fail(fmt.Errorf("refused: errcode %d: %s", *code.ErrCode, code.ErrMsg))
		}
		if code.Code != nil && *code.Code != 0 {
			return fail(fmt.Errorf("refused: code %d: %s", *code.Code, code.Msg))
		}
	}
	return nil
}

// notifier posts a rollout's events in the background, in order, so that a hanging or failing
// webhook never delays the rollout; Close waits for what is queued (each post is bounded by its
// timeout).
type notifier struct {
	client *http.Client
	report func(kind string, n *Notification, err error)

	mu     sync.Mutex
	queue  []notice
	wake   chan struct{}
	closed bool
	done   chan struct{}
}

type notice struct {
	n *Notification
	e Event
}

func newNotifier(client *http.Client, report func(kind string, n *Notification, err error)) *notifier {
	if client == nil {
		client = &http.Client{}
	}
	q := &notifier{client: client, report: report, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go q.loop()
	return q
}

// send queues kind's event for every notification of st's plan that wants it.
func (q *notifier) send(kind string, st *State) {
	if len(st.Plan.Notify) == 0 {
		return
	}
	e := newEvent(kind, st)
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	for i := range st.Plan.Notify {
		if n := &st.Plan.Notify[i]; n.wants(kind) {
			q.queue = append(q.queue, notice{n: n, e: e})
		}
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *notifier) loop() {
	defer close(q.done)
	for {
		q.mu.Lock()
		batch, closed := q.queue, q.closed
		q.queue = nil
		q.mu.Unlock()
		for _, x := range batch {
			err := x.n.Post(context.Background(), q.client, x.e)
			if q.report != nil {
				q.report(x.e.Kind, x.n, err)
			}
		}
		if closed && len(batch) == 0 {
			return
		}
		if len(batch) == 0 {
			<-q.wake
		}
	}
}

// close posts what is queued, then stops.
func (q *notifier) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	<-q.done
}
