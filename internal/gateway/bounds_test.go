package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/hermes-cloud/migrator/internal/callrec"
)

// hostileStatus is an /api/status a hostile agent could send: 1,000
// platforms, names and fields carrying Slack mentions, terminal escapes
// and spreadsheet formulas, and megabyte-sized strings.
func hostileStatus(t *testing.T) string {
	t.Helper()
	plats := map[string]any{}
	for i := range 1000 {
		plats[fmt.Sprintf("plugin-%04d", i)] = map[string]any{"state": "connected"}
	}
	plats["<!channel> <https://evil.example|runbook>"] = map[string]any{
		"state": "fatal\x1b[2J", "error_code": "=HYPERLINK(\"https://evil.example\",\"x\")\x1b]52;c;ZXZpbA==\x07",
		"error_message": strings.Repeat("\x1b[31mA\n", 20_000), "retrying_since": "\u009b2J now"}
	plats["\x1b]52;c;ZXZpbA==\x07aaa-telegram"] = map[string]any{"state": "connected"}
	plats["\x1b[2J"] = map[string]any{"state": "connected"} // empty once cleaned
	plats[strings.Repeat("n", 5000)] = map[string]any{"state": "connected"}
	body, err := json.Marshal(map[string]any{"gateway_running": true, "gateway_state": "running\x1b[2J", "active_agents": 0,
		"version": "0.21.0 <!here>\x1b[2J" + strings.Repeat("v", 200), "overall": "ok\r\x1b[1A", "nous_session_valid": "valid\x07",
		"gateway_exit_reason": strings.Repeat("\u202eexit ", 1000), "gateway_platforms": plats})
	if err != nil {
		t.Fatal(err)
	}
	if len(body) > maxBody {
		t.Fatalf("the hostile status is %d bytes, over the body cap: it would be refused whole", len(body))
	}
	return string(body)
}

// checkClean fails unless s is one printable line of at most max runes.
func checkClean(t *testing.T, what, s string, max int) {
	t.Helper()
	if n := utf8.RuneCountInString(s); n > max {
		t.Errorf("%s is %d runes, over %d: %.60q", what, n, max, s)
	}
	for _, r := range s {
		if r < 0x20 || r >= 0x7f && r <= 0x9f || r == '\u202e' {
			t.Errorf("%s holds %U: %.60q", what, r, s)
			return
		}
	}
}

// Everything read from /api/status is one bounded printable line, at most
// MaxPlatforms platforms are kept (the same ones on every read), and what
// was over a bound is said in Oversized and the signals, not stored.
func TestStatusHostileIsBounded(t *testing.T) {
	t.Parallel()
	body := hostileStatus(t)
	srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, _ int) { reply(w, 200, body) })
	c, _ := newClient(t, prefixTemplate(srv), nil)
	st, err := c.Status(context.Background(), testTarget)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Platforms) != MaxPlatforms {
		t.Fatalf("%d platforms kept, want %d", len(st.Platforms), MaxPlatforms)
	}
	mention := "<!channel> <https://evil.example|runbook>"
	p, ok := st.Platforms[mention]
	if !ok {
		t.Fatalf("the platform named %q was not kept (it sorts first): %v", mention, st.Signals(time.Time{}).PlatformNames()[:5])
	}
	if _, ok := st.Platforms["aaa-telegram"]; !ok {
		t.Errorf("the escape in front of telegram was not removed whole")
	}
	if p.State != "fatal" || !strings.HasPrefix(p.ErrorCode, `=HYPERLINK("https://evil.example","x")`) {
		t.Errorf("hostile platform = %+v", p)
	}
	for name, p := range st.Platforms {
		checkClean(t, "platform name", name, maxName)
		checkClean(t, name+" state", p.State, maxWord)
		checkClean(t, name+" error_code", p.ErrorCode, maxWord)
		checkClean(t, name+" error_message", p.ErrorMessage, maxText)
		checkClean(t, name+" retrying_since", p.RetryingSince, maxWord)
	}
	checkClean(t, "gateway_state", st.State, maxWord)
	checkClean(t, "version", st.Version, maxWord)
	checkClean(t, "overall", st.Overall, maxWord)
	checkClean(t, "nous", st.NousSession, maxWord)
	checkClean(t, "exit reason", st.ExitReason, maxText)
	if st.State != "running" || !st.Serving() || st.NousSession != "valid" {
		t.Errorf("the states do not read as sent once cleaned: %q %q", st.State, st.NousSession)
	}
	notes := strings.Join(st.Oversized, "; ")
	for _, want := range []string{"1003 platforms, kept the first 64", "1 platform name empty or repeated", "cut short"} {
		if !strings.Contains(notes, want) {
			t.Errorf("Oversized %q does not say %q", notes, want)
		}
	}
	sig, err := json.Marshal(st.Signals(time.Time{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(sig) > 16<<10 || !strings.Contains(string(sig), `"oversized":[`) {
		t.Errorf("the signals kept are %d bytes (want a few KiB) and must say what was left out: %.300s", len(sig), sig)
	}
	// The same platforms on every read: a hostile agent's before and after
	// compare alike.
	again, err := c.Status(context.Background(), testTarget)
	if err != nil {
		t.Fatal(err)
	}
	for name := range st.Platforms {
		if _, ok := again.Platforms[name]; !ok {
			t.Fatalf("%q kept once, not twice", name)
		}
	}
}

// An answer whose headers are over MaxHeaderBytes fails the attempt (a
// transport error, retried); a request id that is not a short printable
// token is dropped and the call says so; neither is kept.
func TestHostileHeaders(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	huge := strings.Repeat("A", 1<<20)
	srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
		switch n.Add(1) {
		case 1:
			w.Header().Set("X-Request-Id", huge)
		case 2:
			w.Header().Set("X-Request-Id", strings.Repeat("<!channel>", 400))
		case 3:
			w.Header().Set("X-Request-Id", "id-\xff\xfe<!here>")
		default:
			w.Header().Set("X-Request-Id", "req-01HX-fra")
		}
		reply(w, 200, `{"gateway_running":true,"gateway_state":"running","active_agents":0}`)
	})
	c, _ := newClient(t, prefixTemplate(srv), nil)
	log := &callrec.Log{}
	ctx := callrec.WithLog(context.Background(), log)
	if _, err := c.Status(ctx, testTarget); err != nil {
		t.Fatalf("the retry after the oversized header failed: %v", err)
	}
	for range 2 {
		if _, err := c.Status(ctx, testTarget); err != nil {
			t.Fatal(err)
		}
	}
	calls := log.Take()
	if len(calls) != 4 {
		t.Fatalf("%d calls recorded, want 4 (one refused, three answered): %+v", len(calls), calls)
	}
	if calls[0].Status != 0 || !strings.Contains(calls[0].Err, "exceeded") || len(calls[0].Err) > callrec.MaxErr {
		t.Errorf("oversized headers: %+v", calls[0])
	}
	if calls[1].RequestID != "" || calls[2].RequestID != "" || !strings.Contains(calls[1].Note, "request id dropped: 4000 bytes") ||
		!strings.Contains(calls[2].Note, "not printable") {
		t.Errorf("hostile request ids kept: %q %q (%q %q)", calls[1].RequestID, calls[2].RequestID, calls[1].Note, calls[2].Note)
	}
	if calls[3].RequestID != "req-01HX-fra" || calls[3].Note != "" {
		t.Errorf("a good request id: %+v", calls[3])
	}
	for _, c := range calls {
		if b, _ := json.Marshal(c); len(b) > 1024 {
			t.Errorf("a recorded call is %d bytes", len(b))
		}
	}
}

// The client never goes through a proxy, even one its transport was given
// (as http.ProxyFromEnvironment would give it from HTTPS_PROXY): the drain
// secret travels in clear on the private network.
func TestNoProxy(t *testing.T) {
	t.Parallel()
	var proxied atomic.Int32
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		proxied.Add(1)
		reply(w, 200, `{"ok":true,"action":"drain","draining":true,"suppress_notification":true}`)
	}))
	defer proxy.Close()
	pu, _ := url.Parse(proxy.URL)
	// The dashboard is on a name only the proxy could resolve: without the
	// proxy the call fails, with it the bearer would reach the proxy.
	c, _ := newClient(t, "http://{machine_id}.vm.{app}.internal:9119", func(cfg *Config) {
		cfg.Transport = &http.Transport{Proxy: http.ProxyURL(pu)}
		cfg.RetryMax = -1
	})
	_, err := c.Begin(context.Background(), testTarget, true)
	var ce *CallError
	if !errors.As(err, &ce) {
		t.Fatalf("Begin = %v, want a transport error (no proxy)", err)
	}
	if n := proxied.Load(); n != 0 {
		t.Fatalf("%d requests went through the proxy", n)
	}
}
