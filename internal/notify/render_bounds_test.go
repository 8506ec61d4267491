package notify

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/hermes-cloud/migrator/store"
)

// hostileNote is a rollback whose reason quotes a hostile agent's platform:
// a Slack channel mention with a disguised link, terminal escapes, and
// facts far over PagerDuty's limits.
func hostileNote() store.Notification {
	reason := "platform <!channel> <https://evil.example|runbook> is fatal after the update (error_code \x1b]52;c;ZXZpbA==\x07=HYPERLINK(1)); it was connected before"
	facts := map[string]any{"run_id": float64(42), "cause": "auto-update", "app": "hermes-agent-7", "machine_id": "m7",
		"image": "registry.fly.io/hermes-agent:`v2`", "error": reason + strings.Repeat(" & <b>", 200_000),
		"reason": "<@U123> & <!here>", "requested_by": "cron"}
	many := map[string]any{}
	for i := range 5000 {
		many[fmt.Sprintf("key-%04d", i)] = strings.Repeat("v", 1000)
	}
	facts["many"] = many
	deep := map[string]any{"v": "bottom"}
	for range 10 {
		deep = map[string]any{"d": deep}
	}
	facts["deep"] = deep
	return store.Notification{IdempotencyKey: "0b5e0d0e-0000-4000-8000-000000000001", Sink: "chat", Event: "machine.rolled_back",
		Severity: "warning", Incident: "migration/7", Action: "note", OccurredAt: time.Unix(1_800_000_000, 0), Facts: facts}
}

// Slack gets every outside value escaped (&, <, >) in the top-level text
// (what a phone shows) and in every block, cut within Slack's limits and
// never inside an entity; no control character reaches it.
func TestSlackEscapesHostileText(t *testing.T) {
	body, err := slackBody(Config{WebURL: "https://migrator.example"}, hostileNote())
	if err != nil {
		t.Fatal(err)
	}
	var m slackMessage
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	texts := []string{m.Text}
	for _, b := range m.Blocks {
		if b.Text != nil {
			texts = append(texts, b.Text.Text)
		}
		for _, f := range append(b.Fields, b.Elements...) {
			texts = append(texts, f.Text)
		}
	}
	if !strings.Contains(m.Text, "&lt;!channel&gt; &lt;https://evil.example|runbook&gt;") {
		t.Errorf("the top-level text does not show the mention escaped: %.300q", m.Text)
	}
	for i, s := range texts {
		for _, bad := range []string{"<!channel>", "<!here>", "<@U123>", "<https://evil.example", "\x1b", "\x07"} {
			if strings.Contains(s, bad) {
				t.Errorf("text %d holds %q: %.200q", i, bad, s)
			}
		}
		max := slackMaxField
		if i == 0 {
			max = slackMaxText
		} else if i == 1 {
			max = slackMaxSection
		}
		if n := utf8.RuneCountInString(s); n > max {
			t.Errorf("text %d is %d characters, over %d", i, n, max)
		}
		// Every & starts a whole entity: nothing was cut inside one.
		for j := strings.IndexByte(s, '&'); j >= 0; {
			rest := s[j:]
			if !strings.HasPrefix(rest, "&amp;") && !strings.HasPrefix(rest, "&lt;") && !strings.HasPrefix(rest, "&gt;") {
				t.Errorf("text %d has a bare or split entity at %d: %q", i, j, rest[:min(len(rest), 12)])
				break
			}
			k := strings.IndexByte(rest[1:], '&')
			if k < 0 {
				break
			}
			j += k + 1
		}
	}
	if len(body) > 40_000 {
		t.Errorf("the Slack body is %d bytes", len(body))
	}
}

func TestSlackCutKeepsEntities(t *testing.T) {
	s := slackEscaper.Replace(strings.Repeat("<", 10)) // "&lt;" × 10
	for n := 2; n <= 41; n++ {
		got := slackCut(s, n)
		body := strings.TrimSuffix(got, "…")
		if strings.Count(body, "&") != strings.Count(body, ";") || utf8.RuneCountInString(got) > n {
			t.Fatalf("slackCut(%q, %d) = %q", s, n, got)
		}
	}
	if got := slackCut("a &amp; b", 100); got != "a &amp; b" {
		t.Fatalf("a short text was cut: %q", got)
	}
}

// A page is never refused for size: summary at most 1024 characters, the
// whole event under PagerDuty's 512 KB, custom_details bounded and said
// where cut, whatever the facts hold.
func TestPagerDutyBoundsHostileFacts(t *testing.T) {
	n := hostileNote()
	n.Action = "open"
	body, err := pagerDutyBody(Config{}, SinkConfig{RoutingKey: "R0UT1NGKEY0000000000000000000001", Source: "migrator"}, n)
	if err != nil {
		t.Fatal(err)
	}
	if len(body) > 512*1024 {
		t.Fatalf("the event is %d bytes, over PagerDuty's 512 KB", len(body))
	}
	var ev pdEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		t.Fatal(err)
	}
	if n := utf8.RuneCountInString(ev.Payload.Summary); n > 1024 || strings.ContainsAny(ev.Payload.Summary, "\x1b\x07\n") {
		t.Errorf("summary: %d characters, %.100q", n, ev.Payload.Summary)
	}
	d := ev.Payload.CustomDetails
	if d["notification"] != n.IdempotencyKey || d["event"] != "machine.rolled_back" {
		t.Errorf("custom_details lost the notification's key: %v", d["notification"])
	}
	if e, _ := d["error"].(string); utf8.RuneCountInString(e) > pdMaxString || strings.Contains(e, "\x1b") {
		t.Errorf("error fact: %d characters", utf8.RuneCountInString(e))
	}
	many, _ := d["many"].(map[string]any)
	if len(many) != pdMaxKeys+1 || many["keys_left_out"] != float64(5000-pdMaxKeys) {
		t.Errorf("a 5000-key fact kept %d keys, left-out note %v", len(many), many["keys_left_out"])
	}
	raw, _ := json.Marshal(d["deep"])
	if !strings.Contains(string(raw), "nested too deep") {
		t.Errorf("a deep fact was not cut: %s", raw)
	}
	// Facts that stay large after the bounds: the page still goes out.
	huge := map[string]any{}
	for i := range pdMaxKeys {
		huge[strings.Repeat("k", i+1)] = strings.Repeat("é", pdMaxString)
	}
	for i := range 3 {
		n.Facts[strings.Repeat("h", i+1)] = huge
	}
	body, err = pagerDutyBody(Config{}, SinkConfig{RoutingKey: "R0UT1NGKEY0000000000000000000001", Source: "migrator"}, n)
	if err != nil {
		t.Fatal(err)
	}
	if len(body) > 512*1024 || !strings.Contains(string(body), "details_left_out") {
		t.Fatalf("a %d-byte event, or no note of the facts left out", len(body))
	}
}
