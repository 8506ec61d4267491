package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/internal/notify"
	"github.com/hermes-cloud/migrator/internal/printsafe"
	"github.com/hermes-cloud/migrator/store"
)

// Notifications: where they go is configured by the [notify] table of the
// config file and by the environment. Secrets (a Slack webhook URL is one,
// a routing key, a signing secret) come only from the environment: a file
// sink names the variables that hold them.
//
//	[notify]
//	web_url = "http://localhost:8080"   # default $MIGRATOR_WEB_URL; messages link to WEB_URL/runs/ID
//	sweep_interval = "5s"                # how often due notifications are handed to delivery jobs
//	retry_min = "10s"                    # wait before the 2nd delivery, doubling…
//	retry_max = "5m"                     # …up to this (a longer Retry-After is honoured)
//	give_up_after = "24h"                # undelivered this long after written: failed
//	retention = "720h"                   # delivered/failed/dropped notifications older than this are deleted (30 days)
//
//	[[notify.sinks]]
//	name = "fleet-channel"               # [a-z0-9_-], unique
//	kind = "slack"                       # slack | pagerduty | webhook
//	url_env = "SLACK_WEBHOOK_URL"        # slack, webhook: the variable holding the URL
//	secret_env = "WEBHOOK_SECRET"        # webhook: the variable holding the signing secret (whsec_<base64 of ≥ 24 bytes>)
//	previous_secret_env = "WEBHOOK_SECRET_OLD"  # webhook, optional: the secret being rotated out (signs too)
//	routing_key_env = "PD_ROUTING_KEY"   # pagerduty: the variable holding the integration key
//	url = "https://events.eu.pagerduty.com/v2/enqueue"  # pagerduty only: the endpoint (not a secret)
//	source = "migrator-prod"             # pagerduty only: payload.source (default migrator)
//	min_severity = "warning"             # default: error for pagerduty, info otherwise
//	events = ["run.paused", "run.failed"]  # default: every event
//	requested_by = ["api:nas"]           # chat, webhook: only these requesters' runs, and every end of them (an API caller's callback)
//
// Without a file, one sink of each kind from the environment alone:
//
//	MIGRATOR_NOTIFY_SLACK_URL                                   sink "slack"
//	MIGRATOR_NOTIFY_PAGERDUTY_ROUTING_KEY [, _URL]             sink "pagerduty"
//	MIGRATOR_NOTIFY_WEBHOOK_URL and MIGRATOR_NOTIFY_WEBHOOK_SECRET   sink "webhook"
//	  [, MIGRATOR_NOTIFY_WEBHOOK_PREVIOUS_SECRET while rotating]
const (
	webURLEnv          = "MIGRATOR_WEB_URL"
	notifySlackURLEnv  = "MIGRATOR_NOTIFY_SLACK_URL"
	notifyPDKeyEnv     = "MIGRATOR_NOTIFY_PAGERDUTY_ROUTING_KEY"
	notifyPDURLEnv     = "MIGRATOR_NOTIFY_PAGERDUTY_URL"
	notifyHookURLEnv   = "MIGRATOR_NOTIFY_WEBHOOK_URL"
	notifyHookSecret   = "MIGRATOR_NOTIFY_WEBHOOK_SECRET"
	notifyHookPrevious = "MIGRATOR_NOTIFY_WEBHOOK_PREVIOUS_SECRET"
	defaultNotifySweep = 5 * time.Second
)

// notifyFile is the [notify] table, checked (but its secrets not yet read).
type notifyFile struct {
	webURL                            string
	sweep, retryMin, retryMax, giveUp time.Duration // 0: the default
	retention                         time.Duration // 0: the default
	sinks                             []fileSink
}

// fileSink is one [[notify.sinks]] entry.
type fileSink struct {
	where                            string // "FILE:LINE", for messages
	name, kind, minSeverity          string
	events, requestedBy              []string
	urlEnv, routingKeyEnv, secretEnv string
	previousSecretEnv                string
	url, source                      string
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// notify decodes the [notify] table.
func (d *configDecoder) notify(m map[string]any) (notifyFile, error) {
	var nf notifyFile
	base := []string{"notify"}
	for _, k := range d.keys(base, m) {
		path, v := append(slices.Clone(base), k), m[k]
		var err error
		switch k {
		case "web_url":
			if nf.webURL, err = d.str(path, v); err == nil {
				err = checkWebURL(nf.webURL)
				if err != nil {
					err = d.errf(path, "%v", err)
				}
			}
		case "sweep_interval":
			nf.sweep, err = d.durationIn(path, v, 100*time.Millisecond, time.Hour)
		case "retry_min":
			nf.retryMin, err = d.durationIn(path, v, 100*time.Millisecond, time.Hour)
		case "retry_max":
			nf.retryMax, err = d.durationIn(path, v, 100*time.Millisecond, 24*time.Hour)
		case "give_up_after":
			nf.giveUp, err = d.durationIn(path, v, time.Minute, 30*24*time.Hour)
		case "retention":
			nf.retention, err = d.durationIn(path, v, 24*time.Hour, 10*365*24*time.Hour)
		case "sinks":
			nf.sinks, err = d.sinks(path, v)
		default:
			err = d.unknown(path, "web_url, sweep_interval, retry_min, retry_max, give_up_after, retention, sinks")
		}
		if err != nil {
			return notifyFile{}, err
		}
	}
	return nf, nil
}

func (d *configDecoder) durationIn(path []string, v any, lo, hi time.Duration) (time.Duration, error) {
	s, err := d.str(path, v)
	if err != nil {
		return 0, err
	}
	dur, err := time.ParseDuration(s)
	if err != nil || dur < lo || dur > hi {
		return 0, d.errf(path, "want a duration from %s to %s, got %q", lo, hi, s)
	}
	return dur, nil
}

// sinkLine finds the line of key in the i-th [[notify.sinks]] table (its
// header's line when the key is not there). TOML arrays of tables have no
// key path a probe could follow, so the file is scanned.
func (d *configDecoder) sinkLine(i int, key string) int {
	lines := strings.Split(string(d.data), "\n")
	n, header := -1, 0
	for j, l := range lines {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "[") {
			if strings.ReplaceAll(t, " ", "") == "[[notify.sinks]]" {
				n++
				if n == i {
					header = j + 1
				}
			} else if n == i {
				break
			}
			continue
		}
		if n == i && key != "" {
			if k, _, ok := strings.Cut(t, "="); ok && strings.Trim(strings.TrimSpace(k), `"`) == key {
				return j + 1
			}
		}
	}
	return header
}

func (d *configDecoder) sinkErr(i int, key, format string, args ...any) error {
	name := "notify.sinks[" + strconv.Itoa(i) + "]"
	if key != "" {
		name += "." + key
	}
	return configError(d.file, d.sinkLine(i, key), "%s: %s", name, fmt.Sprintf(format, args...))
}

func (d *configDecoder) sinks(path []string, v any) ([]fileSink, error) {
	var tables []map[string]any
	switch x := v.(type) {
	case []map[string]any:
		tables = x
	case []any:
		for _, e := range x {
			t, ok := e.(map[string]any)
			if !ok {
				return nil, d.errf(path, "want [[notify.sinks]] tables, got %s", describeValue(e))
			}
			tables = append(tables, t)
		}
	default:
		return nil, d.errf(path, "want [[notify.sinks]] tables, got %s", describeValue(v))
	}
	var out []fileSink
	names := map[string]bool{}
	for i, t := range tables {
		fs := fileSink{where: fmt.Sprintf("%s:%d", d.file, d.sinkLine(i, ""))}
		str := func(k string) (string, error) {
			s, ok := t[k].(string)
			if !ok {
				return "", d.sinkErr(i, k, "want a string, got %s", describeValue(t[k]))
			}
			return s, nil
		}
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range t {
				if !yield(k) {
					return
				}
			}
		})
		for _, k := range keys {
			var err error
			switch k {
			case "name":
				fs.name, err = str(k)
			case "kind":
				fs.kind, err = str(k)
			case "min_severity":
				fs.minSeverity, err = str(k)
			case "url_env":
				fs.urlEnv, err = str(k)
			case "routing_key_env":
				fs.routingKeyEnv, err = str(k)
			case "secret_env":
				fs.secretEnv, err = str(k)
			case "previous_secret_env":
				fs.previousSecretEnv, err = str(k)
			case "url":
				fs.url, err = str(k)
			case "source":
				fs.source, err = str(k)
			case "events", "requested_by":
				what, to := "event names", &fs.events
				if k == "requested_by" {
					what, to = "requesters (e.g. api:nas)", &fs.requestedBy
				}
				list, ok := t[k].([]any)
				if !ok {
					err = d.sinkErr(i, k, "want a list of %s, got %s", what, describeValue(t[k]))
					break
				}
				for _, e := range list {
					s, ok := e.(string)
					if !ok {
						err = d.sinkErr(i, k, "want %s, got %s", what, describeValue(e))
						break
					}
					*to = append(*to, s)
				}
			default:
				err = d.sinkErr(i, k, "unknown key (known: name, kind, min_severity, events, requested_by, url_env, secret_env, previous_secret_env, routing_key_env, url, source)")
			}
			if err != nil {
				return nil, err
			}
		}
		if err := d.checkSink(i, fs); err != nil {
			return nil, err
		}
		if names[fs.name] {
			return nil, d.sinkErr(i, "name", "sink %s is configured twice", fs.name)
		}
		names[fs.name] = true
		out = append(out, fs)
	}
	return out, nil
}

// checkSink checks what the file alone can say about a sink; the secrets
// are checked when read (loadNotify).
func (d *configDecoder) checkSink(i int, fs fileSink) error {
	if fs.name == "" {
		return d.sinkErr(i, "name", "required (lower-case letters, digits, - and _)")
	}
	kind := notify.Kind(fs.kind)
	if !slices.Contains(notify.Kinds, kind) {
		return d.sinkErr(i, "kind", "%q is not a sink kind (slack, pagerduty, webhook)", fs.kind)
	}
	switch {
	case fs.url != "" && kind != notify.PagerDuty:
		return d.sinkErr(i, "url", "a %s sink's URL is a credential: put it in the environment and name the variable with url_env", kind)
	case fs.source != "" && kind != notify.PagerDuty:
		return d.sinkErr(i, "source", "only a pagerduty sink has a source")
	}
	// The rest of the checks notify makes itself, with placeholders for
	// the secrets.
	probe := notify.SinkConfig{Name: fs.name, Kind: kind, MinSeverity: notify.Severity(fs.minSeverity), Events: fs.events,
		RequestedBy: fs.requestedBy, URL: "https://secret.invalid/", RoutingKey: "placeholder", Secret: placeholderWebhookSecret}
	if kind == notify.PagerDuty && fs.url != "" {
		probe.URL = fs.url
	}
	if err := (notify.Config{Sinks: []notify.SinkConfig{probe}}).Validate(); err != nil {
		key := ""
		switch msg := err.Error(); {
		case strings.Contains(msg, "min_severity"):
			key = "min_severity"
		case strings.Contains(msg, "requested_by"):
			key = "requested_by"
		case strings.Contains(msg, "event "):
			key = "events"
		case strings.Contains(msg, "url"):
			key = "url"
		case strings.Contains(msg, "sink name"):
			key = "name"
		}
		return d.sinkErr(i, key, "%v", err)
	}
	need := map[notify.Kind][]string{notify.Slack: {"url_env"}, notify.Webhook: {"url_env", "secret_env"},
		notify.PagerDuty: {"routing_key_env"}}[kind]
	vals := map[string]string{"url_env": fs.urlEnv, "secret_env": fs.secretEnv, "routing_key_env": fs.routingKeyEnv,
		"previous_secret_env": fs.previousSecretEnv}
	optional := map[notify.Kind][]string{notify.Webhook: {"previous_secret_env"}}[kind]
	for _, k := range []string{"url_env", "secret_env", "previous_secret_env", "routing_key_env"} {
		v := vals[k]
		switch {
		case slices.Contains(optional, k) && v == "":
		case slices.Contains(need, k) && v == "":
			return d.sinkErr(i, k, "required for a %s sink: the name of the environment variable holding its %s", kind, secretWhat(k))
		case !slices.Contains(need, k) && !slices.Contains(optional, k) && v != "":
			return d.sinkErr(i, k, "not used by a %s sink", kind)
		case v != "" && !envName.MatchString(v):
			return d.sinkErr(i, k, "%q is not an environment variable name", v)
		}
	}
	return nil
}

func secretWhat(k string) string {
	return map[string]string{"url_env": "URL", "secret_env": "signing secret", "routing_key_env": "routing key"}[k]
}

// placeholderWebhookSecret stands for a webhook sink's secret while the
// file alone is checked (a valid whsec_ value of 32 bytes).
const placeholderWebhookSecret = "whsec_cGxhY2Vob2xkZXItcGxhY2Vob2xkZXItcGxhY2Vob2xk"

func checkWebURL(raw string) error {
	if err := (notify.Config{WebURL: raw}).Validate(); err != nil {
		if strings.Contains(err.Error(), "credentials") {
			return errors.New("carries credentials (user:password@): every notification would show them")
		}
		return errors.New("want an absolute http or https URL where on-call opens the web view, e.g. http://localhost:8080")
	}
	return nil
}

// loadNotify builds the notification configuration from the settings'
// [notify] table and the environment, reading the secrets. Any problem is
// one line (exit 2) that names the sink and the variable, never a value.
func loadNotify(e *env, s *settings, log *slog.Logger, observe func(kind, result string)) (notify.Config, error) {
	nf := s.notify
	cfg := notify.Config{WebURL: nf.webURL, SweepEvery: nf.sweep, RetryMin: nf.retryMin, RetryMax: nf.retryMax,
		GiveUpAfter: nf.giveUp, Retention: nf.retention, Logger: log, Observe: observe}
	if cfg.SweepEvery == 0 {
		cfg.SweepEvery = defaultNotifySweep
	}
	if v := strings.TrimSpace(e.getenv(webURLEnv)); v != "" {
		if err := checkWebURL(v); err != nil {
			return notify.Config{}, usagef("%s: %v", webURLEnv, err)
		}
		cfg.WebURL = v
	}
	secret := func(sink, variable, where string) (string, error) {
		v := strings.TrimSpace(e.getenv(variable))
		if v == "" {
			return "", usagef("notification sink %s (%s): %s is not set", sink, where, variable)
		}
		return v, nil
	}
	for _, fs := range nf.sinks {
		sc := notify.SinkConfig{Name: fs.name, Kind: notify.Kind(fs.kind), MinSeverity: notify.Severity(fs.minSeverity),
			Events: fs.events, RequestedBy: fs.requestedBy, URL: fs.url, Source: fs.source}
		var err error
		if fs.urlEnv != "" {
			if sc.URL, err = secret(fs.name, fs.urlEnv, fs.where); err != nil {
				return notify.Config{}, err
			}
			if err := (notify.Config{WebURL: sc.URL}).Validate(); err != nil {
				return notify.Config{}, usagef("notification sink %s (%s): %s is not an absolute http or https URL", fs.name, fs.where, fs.urlEnv)
			}
		}
		if fs.routingKeyEnv != "" {
			if sc.RoutingKey, err = secret(fs.name, fs.routingKeyEnv, fs.where); err != nil {
				return notify.Config{}, err
			}
		}
		if fs.secretEnv != "" {
			if sc.Secret, err = secret(fs.name, fs.secretEnv, fs.where); err != nil {
				return notify.Config{}, err
			}
			if _, err := notify.ParseWebhookSecret(sc.Secret); err != nil {
				return notify.Config{}, usagef("notification sink %s (%s): %s %v", fs.name, fs.where, fs.secretEnv, err)
			}
		}
		if fs.previousSecretEnv != "" {
			if sc.PreviousSecret, err = secret(fs.name, fs.previousSecretEnv, fs.where); err != nil {
				return notify.Config{}, err
			}
			if _, err := notify.ParseWebhookSecret(sc.PreviousSecret); err != nil {
				return notify.Config{}, usagef("notification sink %s (%s): %s %v", fs.name, fs.where, fs.previousSecretEnv, err)
			}
		}
		cfg.Sinks = append(cfg.Sinks, sc)
	}
	// Sinks from the environment alone.
	envSink := func(sc notify.SinkConfig, urlVar string) error {
		for _, x := range cfg.Sinks {
			if x.Name == sc.Name {
				return usagef("notification sink %s is configured twice: by the config file and by %s", sc.Name, urlVar)
			}
		}
		if urlVar != "" {
			if err := (notify.Config{WebURL: sc.URL}).Validate(); err != nil {
				return usagef("%s is not an absolute http or https URL", urlVar)
			}
		}
		cfg.Sinks = append(cfg.Sinks, sc)
		return nil
	}
	if v := strings.TrimSpace(e.getenv(notifySlackURLEnv)); v != "" {
		if err := envSink(notify.SinkConfig{Name: "slack", Kind: notify.Slack, URL: v}, notifySlackURLEnv); err != nil {
			return notify.Config{}, err
		}
	}
	pdKey, pdURL := strings.TrimSpace(e.getenv(notifyPDKeyEnv)), strings.TrimSpace(e.getenv(notifyPDURLEnv))
	switch {
	case pdKey == "" && pdURL != "":
		return notify.Config{}, usagef("%s is set but %s is not: the PagerDuty sink needs its routing key", notifyPDURLEnv, notifyPDKeyEnv)
	case pdKey != "":
		sc := notify.SinkConfig{Name: "pagerduty", Kind: notify.PagerDuty, RoutingKey: pdKey, URL: pdURL}
		check := ""
		if pdURL != "" {
			check = notifyPDURLEnv
		}
		if err := envSink(sc, check); err != nil {
			return notify.Config{}, err
		}
	}
	hookURL, hookSecret := strings.TrimSpace(e.getenv(notifyHookURLEnv)), strings.TrimSpace(e.getenv(notifyHookSecret))
	hookPrevious := strings.TrimSpace(e.getenv(notifyHookPrevious))
	switch {
	case hookPrevious != "" && hookURL == "":
		return notify.Config{}, usagef("%s is set but %s is not", notifyHookPrevious, notifyHookURLEnv)
	case hookURL != "" && hookSecret == "":
		return notify.Config{}, usagef("%s is set but %s is not: the webhook sink signs every body", notifyHookURLEnv, notifyHookSecret)
	case hookURL == "" && hookSecret != "":
		return notify.Config{}, usagef("%s is set but %s is not", notifyHookSecret, notifyHookURLEnv)
	case hookURL != "":
		if _, err := notify.ParseWebhookSecret(hookSecret); err != nil {
			return notify.Config{}, usagef("%s %v", notifyHookSecret, err)
		}
		if hookPrevious != "" {
			if _, err := notify.ParseWebhookSecret(hookPrevious); err != nil {
				return notify.Config{}, usagef("%s %v", notifyHookPrevious, err)
			}
		}
		if err := envSink(notify.SinkConfig{Name: "webhook", Kind: notify.Webhook, URL: hookURL, Secret: hookSecret,
			PreviousSecret: hookPrevious}, notifyHookURLEnv); err != nil {
			return notify.Config{}, err
		}
	}
	if err := cfg.Validate(); err != nil {
		return notify.Config{}, usagef("notifications: %v", err)
	}
	return cfg, nil
}

// sinkSummary describes the sinks for the start-up line: names, kinds and
// filters, never a secret.
func sinkSummary(cfg notify.Config) []string {
	var out []string
	for _, s := range cfg.Sinks {
		sev := s.MinSeverity
		if sev == "" {
			sev = map[bool]notify.Severity{true: notify.Error, false: notify.Info}[s.Kind == notify.PagerDuty]
		}
		d := fmt.Sprintf("%s (%s, ≥ %s", s.Name, s.Kind, sev)
		if len(s.Events) > 0 {
			d += ", " + strings.Join(s.Events, " ")
		}
		if len(s.RequestedBy) > 0 {
			d += ", runs of " + strings.Join(s.RequestedBy, " ")
		}
		out = append(out, d+")")
	}
	return out
}

func init() { register(newNotifyCmd) }

func newNotifyCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "notify",
		Short: "Notifications for on-call: list the outbox, test a sink, retry failed ones, resolve an incident",
		Long: "serve sends on-call what needs a person (a run paused or failed, an agent left draining\n" +
			"or not serving, a rollback, a lease release that failed, the auto-update unable to create\n" +
			"its run) and what closes it (the run resumed, succeeded or was cancelled), to the sinks\n" +
			"configured in [[notify.sinks]] of the config file or by MIGRATOR_NOTIFY_* variables (see\n" +
			"docs/operations.md, \"Notifications\"). Each notification is written with the change that\n" +
			"causes it and delivered at least once, with an idempotency key, retried while the receiver\n" +
			"is down.",
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newNotifyListCmd(e), newNotifyTestCmd(e), newNotifyRetryCmd(e), newNotifyResolveCmd(e))
	return cmd
}

func newNotifyListCmd(e *env) *cobra.Command {
	var f store.NotificationFilter
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List notifications and their delivery: pending, delivered, failed with the last answer, or dropped",
		Example: "  migrator notify list\n" +
			"  migrator notify list --state pending        # not yet delivered: attempts, last answer, next try\n" +
			"  migrator notify list --run 42 --json",
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.State != "" && !slices.Contains(store.NotifyStates, f.State) {
				return usagef("--state %q: want pending, delivered, failed or dropped", f.State)
			}
			if f.Limit < 1 || f.Limit > 10000 {
				return usagef("--limit %d: want 1 to 10000", f.Limit)
			}
			pool, err := openDatabase(cmd.Context(), e)
			if err != nil {
				return err
			}
			defer pool.Close()
			list, err := store.New(pool).Q().ListNotifications(cmd.Context(), f)
			if err != nil {
				return err
			}
			if asJSON {
				return printNotificationsJSON(e, list)
			}
			printNotifications(e, list)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.State, "state", "", "only pending, delivered, failed or dropped")
	fl.StringVar(&f.Sink, "sink", "", "only this sink")
	fl.Int64Var(&f.RunID, "run", 0, "only this run's")
	fl.IntVar(&f.Limit, "limit", 50, "at most this many, newest first")
	fl.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printNotifications(e *env, list []store.Notification) {
	if len(list) == 0 {
		fmt.Fprintln(e.stdout, "no notifications")
		return
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tWRITTEN\tSINK\tEVENT\tSEVERITY\tRUN\tSTATE\tATTEMPTS\tLAST ANSWER\tSUMMARY")
	for _, n := range list {
		run := "-"
		if n.RunID != 0 {
			run = strconv.FormatInt(n.RunID, 10)
		}
		state := n.State
		switch {
		case n.State == store.NotifyPending && n.Attempts > 0:
			state += ", next " + n.NextAttemptAt.Local().Format("15:04:05")
		case n.State == store.NotifyDelivered:
			state += " " + n.DeliveredAt.Local().Format("15:04:05")
		}
		last := "-"
		if n.LastStatus != 0 {
			last = strconv.Itoa(n.LastStatus)
		}
		if n.LastError != "" {
			last = n.LastError
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", n.ID, n.CreatedAt.Local().Format("2006-01-02 15:04:05"),
			n.Sink, n.Event, n.Severity, run, state, n.Attempts, truncateText(last, 60), truncateText(notify.Summary(n), 100))
	}
	tw.Flush()
}

// truncateText is s (a receiver's answer, a summary quoting an agent) as
// one clean line of at most n runes.
func truncateText(s string, n int) string { return printsafe.Line(s, n) }

func printNotificationsJSON(e *env, list []store.Notification) error {
	type row struct {
		ID             int64          `json:"id"`
		IdempotencyKey string         `json:"idempotency_key"`
		Sink           string         `json:"sink"`
		SinkKind       string         `json:"sink_kind"`
		Event          string         `json:"event"`
		Severity       string         `json:"severity"`
		Action         string         `json:"action"`
		Incident       string         `json:"incident"`
		RunID          int64          `json:"run_id,omitempty"`
		MigrationID    int64          `json:"migration_id,omitempty"`
		Summary        string         `json:"summary"`
		State          string         `json:"state"`
		Attempts       int            `json:"attempts"`
		LastStatus     int            `json:"last_status,omitempty"`
		LastError      string         `json:"last_error,omitempty"`
		CreatedAt      time.Time      `json:"created_at"`
		NextAttemptAt  *time.Time     `json:"next_attempt_at,omitempty"`
		DeliveredAt    *time.Time     `json:"delivered_at,omitempty"`
		Facts          map[string]any `json:"facts"`
	}
	out := make([]row, 0, len(list))
	for _, n := range list {
		r := row{ID: n.ID, IdempotencyKey: n.IdempotencyKey, Sink: n.Sink, SinkKind: n.SinkKind, Event: n.Event,
			Severity: n.Severity, Action: n.Action, Incident: n.Incident, RunID: n.RunID, MigrationID: n.MigrationID,
			Summary: notify.Summary(n), State: n.State, Attempts: n.Attempts, LastStatus: n.LastStatus, LastError: n.LastError,
			CreatedAt: n.CreatedAt, Facts: n.Facts}
		if n.State == store.NotifyPending {
			t := n.NextAttemptAt
			r.NextAttemptAt = &t
		}
		if !n.DeliveredAt.IsZero() {
			t := n.DeliveredAt
			r.DeliveredAt = &t
		}
		out = append(out, r)
	}
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func newNotifyTestCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "test SINK",
		Short: "Send a test message to a configured sink and say what the receiver answered",
		Long: "Send SINK (a name from [[notify.sinks]], or slack, pagerduty, webhook for the sinks of the\n" +
			"MIGRATOR_NOTIFY_* variables) a test message, as serve would, with this environment's\n" +
			"configuration, and print each answer. A PagerDuty sink gets a trigger (severity info) and,\n" +
			"once accepted, its resolve: it opens and closes an incident on the service. Needs no\n" +
			"database. Exit 0 when every request was accepted, 1 when one was not, 2 for an unknown sink\n" +
			"or a bad configuration.",
		Example: "  migrator notify test fleet-channel\n" +
			"  MIGRATOR_NOTIFY_SLACK_URL=https://hooks.slack.com/services/… migrator notify test slack",
		Args: checkArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := loadSettings(e)
			if err != nil {
				return err
			}
			cfg, err := loadNotify(e, s, slog.New(slog.DiscardHandler), nil)
			if err != nil {
				return err
			}
			n, err := notify.New(cfg, nil)
			if err != nil {
				return usagef("%v", err)
			}
			sink, ok := n.Sink(args[0])
			if !ok {
				names := n.Sinks()
				if len(names) == 0 {
					return usagef("no notification sink is configured (see migrator notify --help)")
				}
				return usagef("no notification sink named %q (configured: %s)", args[0], strings.Join(names, ", "))
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			results, err := n.Test(ctx, sink.Name, principal(e))
			if err != nil {
				return err
			}
			failed := false
			for _, r := range results {
				fmt.Fprintf(e.stdout, "%s (%s) %s: %s\n", sink.Name, sink.Kind, r.Action, r.Answer)
				if r.Answer.Outcome() != notify.Delivered {
					failed = true
				}
			}
			if failed {
				return errors.New("the receiver did not accept the test message")
			}
			return nil
		},
	}
}

func newNotifyRetryCmd(e *env) *cobra.Command {
	var sink string
	var id int64
	cmd := &cobra.Command{
		Use:   "retry",
		Short: "Send failed notifications again (after fixing a sink's configuration)",
		Long: "Put failed notifications back in the queue, due now: all of them, those of --sink, or\n" +
			"--id alone. serve delivers them with their original idempotency key.",
		Example: "  migrator notify retry --sink fleet-channel\n  migrator notify retry --id 17",
		Args:    checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			pool, err := openDatabase(cmd.Context(), e)
			if err != nil {
				return err
			}
			defer pool.Close()
			n, err := store.New(pool).Q().RetryNotifications(cmd.Context(), sink, id)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%d failed notification(s) queued again\n", n)
			return nil
		},
	}
	cmd.Flags().StringVar(&sink, "sink", "", "only this sink's")
	cmd.Flags().Int64Var(&id, "id", 0, "only this notification")
	return cmd
}

// incidentName is what `notify resolve` accepts: the incident column of
// `notify list --json` (run/42, migration/7, auto-update/stable).
var incidentName = regexp.MustCompile(`^(run|migration|auto-update)/[A-Za-z0-9._/-]{1,200}$`)

func newNotifyResolveCmd(e *env) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "resolve INCIDENT",
		Short: "Close an incident by hand: its sinks get the close (PagerDuty a resolve)",
		Long: "Close INCIDENT (run/ID, migration/ID or auto-update/CHANNEL: the incident column of\n" +
			"`migrator notify list --json`) on every sink it is open on, as if what it was about were\n" +
			"over: PagerDuty gets a resolve with the incident's dedup_key, chat sinks a message. Most\n" +
			"incidents close by themselves (a run resumed, succeeded or cancelled; a failed run's machines\n" +
			"migrated by a later run that succeeds; an agent migrated again or its drain marker expired;\n" +
			"the auto-update working again); this is for the rest. Recorded in the audit log\n" +
			"(notify.resolved) with who and why. Exit 0 when a close was queued, 1 when the incident is\n" +
			"open on no sink, 2 for a malformed incident.",
		Example: "  migrator notify resolve run/42 --reason \"machines fixed by hand\"\n" +
			"  migrator notify resolve migration/1234",
		Args: checkArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			incident := strings.TrimSpace(args[0])
			if !incidentName.MatchString(incident) {
				return usagef("incident %q: want run/ID, migration/ID or auto-update/CHANNEL (the incident column of notify list --json)",
					truncateText(incident, 80))
			}
			var runID int64
			if id, ok := strings.CutPrefix(incident, "run/"); ok {
				n, err := strconv.ParseInt(id, 10, 64)
				if err != nil || n <= 0 {
					return usagef("incident %q: a run's incident is run/ID with a positive ID", incident)
				}
				runID = n
			}
			pool, err := openDatabase(cmd.Context(), e)
			if err != nil {
				return err
			}
			defer pool.Close()
			sinks, err := store.New(pool).Q().ResolveIncident(cmd.Context(), incident, runID, principal(e), strings.TrimSpace(reason))
			if errors.Is(err, store.ErrIncidentNotOpen) {
				return fmt.Errorf("incident %s is not open on any notification sink: nothing to resolve (see migrator notify list)", incident)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "incident %s resolved: a close is queued for %s\n", incident, strings.Join(sinks, ", "))
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the message and the audit log")
	return cmd
}
