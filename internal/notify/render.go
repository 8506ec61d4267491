package notify

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/hermes-cloud/migrator/internal/printsafe"
	"github.com/hermes-cloud/migrator/store"
)

// WebhookSchema names the generic webhook's body format (documented in
// docs/operations.md, "Notifications").
const WebhookSchema = "migrator.notification.v1"

// WebhookBody is the generic webhook's JSON body.
type WebhookBody struct {
	Schema string `json:"schema"` // WebhookSchema
	// ID is the idempotency key: a receiver that saw it already has it.
	ID       string `json:"id"`
	Sink     string `json:"sink"`
	Event    string `json:"event"`    // run.paused, … (notify.Events)
	Severity string `json:"severity"` // info, warning, error, critical
	// Action: "open" a problem (PagerDuty would trigger), "close" it
	// (resolve), or a "note" that stands alone.
	Action string `json:"action"`
	// Incident groups the notifications of one problem: "run/42",
	// "migration/7", "auto-update/stable".
	Incident   string         `json:"incident"`
	OccurredAt time.Time      `json:"occurred_at"`
	Summary    string         `json:"summary"`
	URL        string         `json:"url,omitempty"` // the run's page in the web view
	Details    map[string]any `json:"details"`       // the facts (run, cause, image, counts, app, machine, error)
}

// facts reads the values the trigger stored.
type facts map[string]any

func (f facts) str(k string) string {
	switch v := f[k].(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return ""
}

func (f facts) num(k string) int64 {
	if v, ok := f[k].(float64); ok {
		return int64(v)
	}
	return 0
}

// changeText says what a machine's change was beyond an image, names
// only (the trigger copies names, never a value): "env set A, B; env
// unset C; app secrets version ≥ 7; restart" (the secrets version only
// withSecrets); "" for none.
func (f facts) changeText(withSecrets bool) string {
	ch, _ := f["change"].(map[string]any)
	if len(ch) == 0 {
		return ""
	}
	names := func(k string) string {
		arr, _ := ch[k].([]any)
		out := make([]string, 0, len(arr))
		for _, v := range arr {
			if s, ok := v.(string); ok {
				out = append(out, s)
			}
		}
		return strings.Join(out, ", ")
	}
	var parts []string
	if s := names("env_set"); s != "" {
		parts = append(parts, "env set "+s)
	}
	if s := names("env_unset"); s != "" {
		parts = append(parts, "env unset "+s)
	}
	if v := facts(ch).num("secrets_version"); v > 0 && withSecrets {
		parts = append(parts, fmt.Sprintf("app secrets version ≥ %d", v))
	}
	if ch["restart"] == true {
		parts = append(parts, "restart")
	}
	return strings.Join(parts, "; ")
}

// secretsNote says that app secrets a rolled-back change picked up stay:
// Fly keeps only the newest values, so nothing can put them back.
func (f facts) secretsNote() string {
	v := f.num("secrets_not_restored")
	if v <= 0 {
		return ""
	}
	return fmt.Sprintf("app secrets stay at version %d (Fly keeps only the newest values: a rollback cannot put them back)", v)
}

// countOrder is the order outcomes and states are listed in messages.
var countOrder = []string{string(store.OutcomeMigrated), string(store.OutcomeRolledBack), string(store.OutcomeFailed),
	string(store.OutcomeDeferred), string(store.OutcomeCancelled), string(store.OutcomeSkippedUpToDate),
	string(store.StatePending), string(store.StateReady), string(store.StateDecided), string(store.StateDraining),
	string(store.StateUpdating), string(store.StateVerifying), string(store.StateRollingBack)}

// countsText says a run's machines by outcome (and state for those not
// done): "12 machines: 9 migrated, 1 rolled back, 2 deferred".
func (f facts) countsText() string {
	c, _ := f["counts"].(map[string]any)
	if len(c) == 0 {
		return ""
	}
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		ia, ib := slices.Index(countOrder, a), slices.Index(countOrder, b)
		if ia < 0 {
			ia = len(countOrder)
		}
		if ib < 0 {
			ib = len(countOrder)
		}
		if ia != ib {
			return ia - ib
		}
		return strings.Compare(a, b)
	})
	var total int64
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		n, _ := c[k].(float64)
		total += int64(n)
		parts = append(parts, fmt.Sprintf("%d %s", int64(n), strings.ReplaceAll(k, "_", " ")))
	}
	noun := "machines"
	if total == 1 {
		noun = "machine"
	}
	return fmt.Sprintf("%d %s: %s", total, noun, strings.Join(parts, ", "))
}

// Summary is a notification's one line: what happened and why, cleaned
// (package printsafe: no control characters or terminal escapes; the facts
// may quote what an agent sent) and at most maxSummary characters.
func Summary(n store.Notification) string {
	return printsafe.Line(summary(n), maxSummary)
}

// maxSummary bounds Summary: PagerDuty's payload.summary limit, and long
// enough for any one line a person reads.
const maxSummary = pdMaxSummary

func summary(n store.Notification) string {
	f := facts(n.Facts)
	run := fmt.Sprintf("run %d (%s)", f.num("run_id"), f.str("cause"))
	target := f.str("app") + "/" + f.str("machine_id")
	if f.str("app") == "" {
		target = f.str("target")
	}
	why := func(s, def string) string {
		if s == "" {
			return def
		}
		return s
	}
	switch n.Event {
	case "run.paused":
		return fmt.Sprintf("migrator %s paused: %s", run, why(f.str("state_reason"), "no reason recorded"))
	case "run.failed":
		return fmt.Sprintf("migrator %s failed: %s", run, why(f.str("state_reason"), "no reason recorded"))
	case "run.resumed":
		return fmt.Sprintf("migrator %s resumed by %s", run, why(f.str("by"), "someone"))
	case "run.succeeded":
		return fmt.Sprintf("migrator %s succeeded: %s", run, why(f.countsText(), "every machine done"))
	case "run.cancelled":
		return fmt.Sprintf("migrator %s cancelled by %s", run, why(f.str("by"), "someone"))
	case "machine.rolled_back":
		what := "its old image"
		if ch := f.changeText(false); ch != "" {
			what = "the config that ran (" + ch + " undone)"
		}
		out := fmt.Sprintf("migrator %s: %s rolled back to %s: %s", run, target, what, why(f.str("error"), "no reason recorded"))
		if note := f.secretsNote(); note != "" {
			out += "; " + note
		}
		return out
	case "machine.lease_release_failed":
		return fmt.Sprintf("migrator %s: the Fly lease of %s could not be released (it expires by itself): %s", run, target,
			why(f.str("error"), "no reason recorded"))
	case "agent.left_draining":
		return fmt.Sprintf("migrator %s: agent %s may be left draining, refusing its users' turns: its drain could not be cancelled: %s",
			run, target, why(f.str("error"), "no reason recorded"))
	case "agent.not_serving":
		return fmt.Sprintf("migrator %s: agent %s may not be serving: its machine failed after the update: %s", run, target,
			why(f.str("error"), "no reason recorded"))
	case "run.recovered":
		return fmt.Sprintf("migrator %s is resolved: run %d succeeded on the machines it left behind", run, f.num("resolved_by_run"))
	case "agent.serving":
		how := "its drain marker expired (the gateway drops one after an hour)"
		switch f.str("how") {
		case "migrated":
			how = fmt.Sprintf("run %d migrated it and found it serving", f.num("resolved_by_run"))
		}
		return fmt.Sprintf("migrator %s: agent %s is serving again: %s", run, target, how)
	case "incident.resolved":
		return fmt.Sprintf("migrator incident %s resolved by %s: %s", f.str("incident"), why(f.str("by"), "someone"),
			why(f.str("reason"), "no reason given"))
	case "auto_update.failed":
		reason := f.str("error")
		if f.str("outcome") == "no_channel" {
			reason = "the channel is not set (migrator channel set " + f.str("channel") + " IMAGE)"
		}
		return fmt.Sprintf("migrator auto-update of channel %s could not create its run: %s", f.str("channel"), why(reason, "no reason recorded"))
	case "auto_update.recovered":
		what := strings.ReplaceAll(f.str("outcome"), "_", " ")
		if id := f.num("run_id"); id > 0 {
			what += fmt.Sprintf(" (run %d)", id)
		}
		return fmt.Sprintf("migrator auto-update of channel %s works again: %s", f.str("channel"), what)
	case testEvent:
		return fmt.Sprintf("migrator test notification from sink %s: nothing happened, this is a test", n.Sink)
	}
	return fmt.Sprintf("migrator %s: %s", n.Event, target)
}

// runURL is the web view's page of the notification's run, if any.
func (c Config) runURL(n store.Notification) string {
	if c.WebURL == "" {
		return ""
	}
	if id := facts(n.Facts).num("run_id"); id > 0 {
		return fmt.Sprintf("%s/runs/%d", c.WebURL, id)
	}
	return ""
}

func webhookBody(c Config, n store.Notification) ([]byte, error) {
	details := n.Facts
	if details == nil {
		details = map[string]any{}
	}
	return marshal(WebhookBody{Schema: WebhookSchema, ID: n.IdempotencyKey, Sink: n.Sink, Event: n.Event,
		Severity: n.Severity, Action: n.Action, Incident: n.Incident, OccurredAt: n.OccurredAt.UTC(), Summary: Summary(n),
		URL: c.runURL(n), Details: details})
}

// PagerDuty Events API v2, from PagerDuty's OpenAPI description
// (PagerDuty/api-schema reference/events-v2/openapiv3.json): POST
// /v2/enqueue {routing_key, event_action trigger|acknowledge|resolve,
// dedup_key (required unless trigger), payload {summary, source, severity
// critical|error|warning|info (all three required), timestamp, component,
// group, class, custom_details}, client, client_url, links}. Answers: 202
// accepted; 400 bad request, do not retry; 429 and 5xx and network
// errors, retry after some time. A resolve carries no payload. summary is
// cut at 1024 and dedup_key at 255 characters, and a whole event must stay
// under 512 KB (the limits of PagerDuty's developer docs: "Send an Alert
// Event" and the Events API v2 overview's "Size Limits"; PagerDuty/
// developer-docs docs/events-API-v2): custom_details carries the facts,
// which may quote what an agent sent, so they are bounded (pdDetails) and,
// should the event still be too large, replaced by a note saying so.
type pdEvent struct {
	RoutingKey  string     `json:"routing_key"`
	EventAction string     `json:"event_action"`
	DedupKey    string     `json:"dedup_key"`
	Payload     *pdPayload `json:"payload,omitempty"`
	Client      string     `json:"client,omitempty"`
	ClientURL   string     `json:"client_url,omitempty"`
	Links       []pdLink   `json:"links,omitempty"`
}

type pdPayload struct {
	Summary       string         `json:"summary"`
	Source        string         `json:"source"`
	Severity      string         `json:"severity"`
	Timestamp     string         `json:"timestamp,omitempty"`
	Component     string         `json:"component,omitempty"`
	Group         string         `json:"group,omitempty"`
	Class         string         `json:"class,omitempty"`
	CustomDetails map[string]any `json:"custom_details,omitempty"`
}

type pdLink struct {
	Href string `json:"href"`
	Text string `json:"text"`
}

// DedupKey is the PagerDuty dedup_key of an incident: every trigger and
// the resolve of one run (or machine migration, or channel) share it.
func DedupKey(incident string) string { return "migrator/" + incident }

func pagerDutyBody(c Config, s SinkConfig, n store.Notification) ([]byte, error) {
	ev := pdEvent{RoutingKey: s.RoutingKey, EventAction: "trigger", DedupKey: truncate(DedupKey(n.Incident), 255)}
	if n.Action == "close" {
		ev.EventAction = "resolve"
		return marshal(ev)
	}
	f := facts(n.Facts)
	details := map[string]any{}
	for k, v := range n.Facts {
		details[k] = v
	}
	details = pdDetails(details, 0).(map[string]any)
	details["notification"], details["event"] = n.IdempotencyKey, n.Event
	ev.Payload = &pdPayload{Summary: Summary(n), Source: s.Source, Severity: n.Severity,
		Timestamp: n.OccurredAt.UTC().Format(time.RFC3339), Component: printsafe.Line(f.str("app"), pdMaxField),
		Group: printsafe.Line(f.str("cause"), pdMaxField), Class: n.Event, CustomDetails: details}
	ev.Client = "migrator"
	if u := c.runURL(n); u != "" {
		ev.ClientURL = c.WebURL + "/runs"
		ev.Links = []pdLink{{Href: u, Text: fmt.Sprintf("run %d in migrator's web view", f.num("run_id"))}}
	}
	body, err := marshal(ev)
	if err != nil || len(body) <= pdMaxEvent {
		return body, err
	}
	// Still too large (the bounds below allow more than PagerDuty takes
	// only in contrived cases): the page goes out with the summary and a
	// note rather than be refused.
	ev.Payload.CustomDetails = map[string]any{"notification": n.IdempotencyKey, "event": n.Event,
		"details_left_out": fmt.Sprintf("the facts were %d bytes over PagerDuty's %d-byte event limit; see `migrator notify list` or the web view",
			len(body)-pdMaxEvent, pdMaxEvent)}
	return marshal(ev)
}

// PagerDuty's limits, and the bounds custom_details is kept within.
const (
	pdMaxSummary = 1024      // payload.summary, characters
	pdMaxEvent   = 500 << 10 // under the 512 KB an event may be, with room for the envelope
	pdMaxField   = 255       // component, group
	pdMaxString  = 2048      // one string of custom_details, characters
	pdMaxKeys    = 64        // keys of one object of custom_details
	pdMaxItems   = 32        // items of one array of custom_details
	pdMaxDepth   = 4         // nesting of custom_details
)

// pdDetails bounds v for custom_details: strings cleaned (printsafe.Text)
// and cut, objects and arrays cut to their first keys (by name) and items,
// nesting cut at pdMaxDepth; what was cut is said in place.
func pdDetails(v any, depth int) any {
	switch x := v.(type) {
	case string:
		return printsafe.Cut(printsafe.Text(x), pdMaxString)
	case map[string]any:
		if depth >= pdMaxDepth {
			return fmt.Sprintf("(an object of %d keys, nested too deep)", len(x))
		}
		keys := slices.Sorted(maps.Keys(x))
		out := make(map[string]any, min(len(keys), pdMaxKeys+1))
		for i, k := range keys {
			if i == pdMaxKeys {
				out["keys_left_out"] = len(keys) - pdMaxKeys
				break
			}
			out[printsafe.Line(k, 128)] = pdDetails(x[k], depth+1)
		}
		return out
	case []any:
		if depth >= pdMaxDepth {
			return fmt.Sprintf("(an array of %d items, nested too deep)", len(x))
		}
		out := make([]any, 0, min(len(x), pdMaxItems+1))
		for i, e := range x {
			if i == pdMaxItems {
				out = append(out, fmt.Sprintf("(%d more items left out)", len(x)-pdMaxItems))
				break
			}
			out = append(out, pdDetails(e, depth+1))
		}
		return out
	}
	return v
}

// Slack incoming webhooks: POST JSON with text (the notification's
// fallback) and blocks; 200 "ok". Slack's changelog of 2016-05-17
// ("Improving error conditions for Incoming Webhooks") lists the failures:
// 400 invalid_payload / user_not_found, 403 action_prohibited, 404
// channel_not_found, 410 channel_is_archived (permanent: retrying the same
// message cannot help) and 500 rollup_error; a 429 comes with Retry-After.
// mrkdwn text needs &, < and > escaped: Slack parses them as controls
// (<!channel>, <@U123>, <https://evil.example|runbook>) in the top-level
// text as in blocks (api.slack.com/reference/surfaces/formatting, "Escaping
// text"). Everything from the facts (which may quote what an agent sent)
// is escaped first, then cut (slackCut), never inside an entity: a section
// text is at most 3000 characters, a field 2000.
type slackMessage struct {
	Text   string       `json:"text"`
	Blocks []slackBlock `json:"blocks"`
}

type slackBlock struct {
	Type     string      `json:"type"`
	Text     *slackText  `json:"text,omitempty"`
	Fields   []slackText `json:"fields,omitempty"`
	Elements []slackText `json:"elements,omitempty"`
}

type slackText struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

var slackEscaper = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")

// slackEscape is s cleaned to one printable line and escaped for mrkdwn.
func slackEscape(s string) string { return slackEscaper.Replace(printsafe.Line(s, 0)) }

// slackCut cuts escaped mrkdwn to at most n characters, the last an
// ellipsis, never inside an entity (&amp; &lt; &gt;): a cut "&l" would show
// as text, a cut "&lt" would leave a bare "&" Slack may read as the start of
// another.
func slackCut(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	body := strings.TrimSuffix(printsafe.Cut(s, n), printsafe.Ellipsis)
	if i := strings.LastIndexByte(body, '&'); i >= 0 && len(body)-i < len("&amp;") && !strings.Contains(body[i:], ";") {
		body = body[:i]
	}
	return body + printsafe.Ellipsis
}

// Slack's limits on text objects (Block Kit reference: section text 3000
// characters, each field 2000) and on the message's text.
const (
	slackMaxSection = 3000
	slackMaxField   = 2000
	slackMaxText    = 3000
)

func slackIcon(n store.Notification) string {
	switch {
	case n.Action == "close":
		return ":white_check_mark:"
	case n.Severity == string(Critical):
		return ":rotating_light:"
	case n.Severity == string(Error):
		return ":x:"
	case n.Severity == string(Warning):
		return ":warning:"
	}
	return ":information_source:"
}

func slackBody(c Config, n store.Notification) ([]byte, error) {
	f := facts(n.Facts)
	sum := slackEscape(Summary(n))
	mrk := func(s string) slackText { return slackText{Type: "mrkdwn", Text: slackCut(s, slackMaxField)} }
	var fields []slackText
	field := func(label, value string) {
		if value != "" && len(fields) < 10 {
			fields = append(fields, mrk("*"+label+"*\n"+value))
		}
	}
	if id := f.num("run_id"); id > 0 {
		run := strconv.FormatInt(id, 10)
		if u := c.runURL(n); u != "" {
			run = "<" + u + "|" + run + ">"
		}
		field("Run", run)
	}
	code := func(v string) string {
		if v == "" {
			return ""
		}
		// A backtick would end the code span early.
		return "`" + slackEscape(strings.ReplaceAll(v, "`", "'")) + "`"
	}
	field("Cause", slackEscape(f.str("cause")))
	if f.str("app") != "" {
		field("Agent", code(f.str("app")+"/"+f.str("machine_id")))
	}
	field("Image", code(f.str("image")))
	field("Change", slackEscape(f.changeText(true)))
	field("Secrets", slackEscape(f.secretsNote()))
	field("Machines", slackEscape(f.countsText()))
	field("Requested by", slackEscape(f.str("requested_by")))
	field("Reason", slackEscape(f.str("reason")))
	blocks := []slackBlock{{Type: "section", Text: &slackText{Type: "mrkdwn",
		Text: slackIcon(n) + " *" + slackCut(sum, slackMaxSection-len(slackIcon(n))-4) + "*"}}}
	if len(fields) > 0 {
		blocks = append(blocks, slackBlock{Type: "section", Fields: fields})
	}
	blocks = append(blocks, slackBlock{Type: "context", Elements: []slackText{mrk(slackEscape(fmt.Sprintf("%s · %s · %s · notification %s",
		n.Severity, n.Incident, n.OccurredAt.UTC().Format(time.RFC3339), n.IdempotencyKey)))}})
	// The top-level text is what a phone's notification shows: escaped as
	// the blocks are.
	return marshal(slackMessage{Text: slackIcon(n) + " " + slackCut(sum, slackMaxText), Blocks: blocks})
}

// marshal is json.Marshal without HTML escaping: Slack's <url|text> links
// and the summaries stay readable in the raw body.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("…")
	for cut > 0 && !utf8Start(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }
