package rollout_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/graylane/graylane/rollout"
)

// messenger is a real HTTP server standing in for a messenger's robot endpoint (DingTalk, Feishu,
// WeCom and Slack cannot be reached from a test): it records the request and answers what the
// messenger answers, as their documentation gives it.
type messenger struct {
	*httptest.Server
	mu     sync.Mutex
	query  url.Values
	body   map[string]any
	answer string
}

func startMessenger(t *testing.T, answer string) *messenger {
	m := &messenger{answer: answer}
	m.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		m.mu.Lock()
		m.query = r.URL.Query()
		m.body = nil
		_ = json.Unmarshal(raw, &m.body)
		m.mu.Unlock()
		if r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "want JSON", http.StatusUnsupportedMediaType)
			return
		}
		io.WriteString(w, m.answer)
	}))
	t.Cleanup(m.Close)
	return m
}

func testEvent() rollout.Event {
	return rollout.Event{Kind: rollout.NotifyOutcome, Service: "bservice", Lane: "canary", Status: rollout.StatusRolledBack,
		Step: 2, Steps: 5, Weight: "5", Message: "gate error_ratio.max failed: 5.10% > 1.00%", Time: time.Now()}
}

func text(body map[string]any, path ...string) string {
	var v any = body
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return ""
		}
		v = m[p]
	}
	s, _ := v.(string)
	return s
}

// TestNotificationFormats: each format posts the body its messenger documents, signed where a
// secret is given, and a messenger's refusal inside a 200 answer is an error.
func TestNotificationFormats(t *testing.T) {
	ctx := context.Background()
	e := testEvent()
	want := "graylane rollout bservice/canary: outcome (rolled back, step 2 of 5, weight 5%): gate error_ratio.max failed"

	t.Run("dingtalk", func(t *testing.T) {
		m := startMessenger(t, `{"errcode":0,"errmsg":"ok"}`)
		n := rollout.Notification{URL: m.URL + "/robot/send?access_token=tok", Format: rollout.FormatDingTalk, Secret: "SECdemo"}
		if err := n.Post(ctx, http.DefaultClient, e); err != nil {
			t.Fatal(err)
		}
		if text(m.body, "msgtype") != "text" || !strings.HasPrefix(text(m.body, "text", "content"), want) {
			t.Fatalf("body %v", m.body)
		}
		ts, sign := m.query.Get("timestamp"), m.query.Get("sign")
		mac := hmac.New(sha256.New, []byte("SECdemo"))
		mac.Write([]byte(ts + "\n" + "SECdemo"))
		if m.query.Get("access_token") != "tok" || sign != base64.StdEncoding.EncodeToString(mac.Sum(nil)) {
			t.Fatalf("query %v: the signature does not check", m.query)
		}
	})
	t.Run("feishu", func(t *testing.T) {
		m := startMessenger(t, `{"code":0,"msg":"success"}`)
		n := rollout.Notification{URL: m.URL + "/open-apis/bot/v2/hook/abc", Format: rollout.FormatFeishu, Secret: "s3cret"}
		if err := n.Post(ctx, http.DefaultClient, e); err != nil {
			t.Fatal(err)
		}
		mac := hmac.New(sha256.New, []byte(text(m.body, "timestamp")+"\n"+"s3cret"))
		if text(m.body, "msg_type") != "text" || !strings.HasPrefix(text(m.body, "content", "text"), want) ||
			text(m.body, "sign") != base64.StdEncoding.EncodeToString(mac.Sum(nil)) {
			t.Fatalf("body %v", m.body)
		}
	})
	t.Run("wecom", func(t *testing.T) {
		m := startMessenger(t, `{"errcode":0,"errmsg":"ok"}`)
		n := rollout.Notification{URL: m.URL + "/cgi-bin/webhook/send?key=k", Format: rollout.FormatWeCom}
		if err := n.Post(ctx, http.DefaultClient, e); err != nil {
			t.Fatal(err)
		}
		if text(m.body, "msgtype") != "text" || !strings.HasPrefix(text(m.body, "text", "content"), want) {
			t.Fatalf("body %v", m.body)
		}
	})
	t.Run("slack", func(t *testing.T) {
		m := startMessenger(t, `ok`)
		n := rollout.Notification{URL: m.URL + "/services/T/B/X", Format: rollout.FormatSlack}
		if err := n.Post(ctx, http.DefaultClient, e); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(text(m.body, "text"), want) {
			t.Fatalf("body %v", m.body)
		}
	})
	t.Run("webhook", func(t *testing.T) {
		m := startMessenger(t, ``)
		n := rollout.Notification{URL: m.URL + "/hook"}
		if err := n.Post(ctx, http.DefaultClient, e); err != nil {
			t.Fatal(err)
		}
		if text(m.body, "kind") != "outcome" || text(m.body, "service") != "bservice" || text(m.body, "status") != "rolled back" ||
			text(m.body, "weight") != "5" || m.body["step"] != float64(2) {
			t.Fatalf("body %v", m.body)
		}
	})
	t.Run("refused inside a 200", func(t *testing.T) {
		m := startMessenger(t, `{"errcode":310000,"errmsg":"keywords not in content"}`)
		n := rollout.Notification{URL: m.URL + "/robot/send?access_token=very-secret", Format: rollout.FormatDingTalk}
		err := n.Post(ctx, http.DefaultClient, e)
		if err == nil || !strings.Contains(err.Error(), "errcode 310000: keywords not in content") {
			t.Fatalf("a refused message: %v", err)
		}
		if strings.Contains(err.Error(), "very-secret") {
			t.Fatalf("the error names the robot's token: %v", err)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		n := rollout.Notification{URL: "http://127.0.0.1:1/hook?token=very-secret", Timeout: rollout.Duration(time.Second)}
		err := n.Post(ctx, http.DefaultClient, e)
		if err == nil || strings.Contains(err.Error(), "very-secret") {
			t.Fatalf("an unreachable webhook: %v", err)
		}
	})
}

// TestNotificationsAreValidated: a plan's notifications are checked at load, naming the field.
func TestNotificationsAreValidated(t *testing.T) {
	for _, c := range []struct{ notify, want string }{
		{`[{url: "ftp://x/y"}]`, `notify[0]: url "ftp://x/y": want an http or https address`},
		{`[{url: "http://x/y", format: teams}]`, `notify[0]: format "teams": want one of webhook, dingtalk, feishu, wecom, slack`},
		{`[{url: "http://x/y", on: [finish]}]`, `notify[0]: on: "finish": want before_step, after_step, paused, outcome`},
		{`[{format: slack}]`, `notify[0]: url missing`},
	} {
		_, err := rollout.ParsePlan([]byte(`service: s
prometheus: http://127.0.0.1:9090
steps: [{weight: 5, hold: 1m}]
gates: {error_ratio: {max: 0.01}}
notify: ` + c.notify))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("notify %s: %v, want %q", c.notify, err, c.want)
		}
	}
}

// TestRedactedHidesTokens: a rollout shown (status --json) names no webhook token or secret.
func TestRedactedHidesTokens(t *testing.T) {
	st := &rollout.State{Plan: rollout.Plan{Notify: []rollout.Notification{
		{URL: "https://oapi.dingtalk.com/robot/send?access_token=tok123", Secret: "SEC456"}}}}
	shown, _ := json.Marshal(st.Redacted())
	if strings.Contains(string(shown), "tok123") || strings.Contains(string(shown), "SEC456") || !strings.Contains(string(shown), "oapi.dingtalk.com") {
		t.Fatalf("shown: %s", shown)
	}
	if st.Plan.Notify[0].Secret != "SEC456" {
		t.Fatal("Redacted changed the state it copied")
	}
}
