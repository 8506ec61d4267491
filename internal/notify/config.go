package notify

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Kind is a sink's kind: where its messages go.
type Kind string

// Sink kinds.
const (
	Slack     Kind = "slack"     // a Slack incoming webhook
	PagerDuty Kind = "pagerduty" // PagerDuty Events API v2
	Webhook   Kind = "webhook"   // a generic JSON webhook, HMAC-signed
)

// Kinds lists every sink kind.
var Kinds = []Kind{Slack, PagerDuty, Webhook}

// Severity orders notifications; the values are PagerDuty's payload
// severities (Events API v2: critical, error, warning, info).
type Severity string

// Severities, lowest first.
const (
	Info     Severity = "info"
	Warning  Severity = "warning"
	Error    Severity = "error"
	Critical Severity = "critical"
)

// Severities lists the severities, lowest first.
var Severities = []Severity{Info, Warning, Error, Critical}

// Events are the notifications migrator writes (migration
// 011_notifications.sql maps event rows to them), for sink filters.
var Events = []string{
	"run.paused", "run.failed", "run.resumed", "run.succeeded", "run.cancelled", "run.recovered",
	"machine.rolled_back", "machine.lease_release_failed", "agent.left_draining", "agent.not_serving", "agent.serving",
	"auto_update.failed", "auto_update.recovered", "incident.resolved",
}

// DefaultRetention is how long the outbox keeps a notification that is
// done with (Config.Retention).
const DefaultRetention = 30 * 24 * time.Hour

// DefaultPagerDutyURL is the Events API v2 endpoint (PagerDuty's docs;
// EU accounts use https://events.eu.pagerduty.com/v2/enqueue).
const DefaultPagerDutyURL = "https://events.pagerduty.com/v2/enqueue"

// SinkConfig is one sink. URL, RoutingKey, Secret and PreviousSecret are
// secrets (a Slack
// webhook URL is a credential): they are never logged, stored or put in an
// error.
type SinkConfig struct {
	// Name identifies the sink in the outbox, `notify list` and `notify
	// test`: lower-case letters, digits, '-' and '_', at most 63.
	Name string
	Kind Kind
	// MinSeverity: notifications below it are not sent here. Default:
	// error for PagerDuty (what pages), info otherwise.
	MinSeverity Severity
	// Events, when not empty, are the only notifications sent here (a sink
	// told of a problem is told of its end regardless).
	Events []string
	// RequestedBy, when not empty, makes the sink hear only of the runs
	// these requesters asked for (runs.requested_by, e.g. "api:nas": the
	// runs an API token's caller made), and of every end of them
	// (run.succeeded, run.failed, run.cancelled) even when nothing was
	// open: an API caller's completion callback. Not for PagerDuty (it
	// pages; a run that went well is no page).
	RequestedBy []string
	// URL: the Slack incoming webhook URL or the webhook's URL (secrets);
	// for PagerDuty the Events API endpoint (default DefaultPagerDutyURL).
	URL string
	// RoutingKey is a PagerDuty sink's integration key (required).
	RoutingKey string
	// Secret signs a webhook sink's bodies (Standard Webhooks, webhook.go;
	// required): "whsec_" and the base64 of at least 24 random bytes.
	Secret string
	// PreviousSecret, while receivers move to a new Secret, signs too (a
	// second webhook-signature value), so that a receiver still holding
	// it verifies. Optional; same form.
	PreviousSecret string
	// Source is PagerDuty's payload.source. Default "migrator".
	Source string
}

var sinkName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

func (s SinkConfig) withDefaults() SinkConfig {
	if s.MinSeverity == "" {
		s.MinSeverity = Info
		if s.Kind == PagerDuty {
			s.MinSeverity = Error
		}
	}
	if s.Kind == PagerDuty && s.URL == "" {
		s.URL = DefaultPagerDutyURL
	}
	if s.Source == "" {
		s.Source = "migrator"
	}
	return s
}

// validate checks one sink. Messages name the setting, never its value.
func (s SinkConfig) validate() error {
	if !sinkName.MatchString(s.Name) {
		return fmt.Errorf("sink name %q: want lower-case letters, digits, - and _ (at most 63)", s.Name)
	}
	if !slices.Contains(Kinds, s.Kind) {
		return fmt.Errorf("sink %s: kind %q is not one of slack, pagerduty, webhook", s.Name, s.Kind)
	}
	if !slices.Contains(Severities, s.MinSeverity) {
		return fmt.Errorf("sink %s: min_severity %q is not one of info, warning, error, critical", s.Name, s.MinSeverity)
	}
	for _, e := range s.Events {
		if !slices.Contains(Events, e) {
			return fmt.Errorf("sink %s: event %q is not one of %s", s.Name, e, strings.Join(Events, ", "))
		}
	}
	for _, r := range s.RequestedBy {
		if strings.TrimSpace(r) != r || r == "" || len(r) > 200 || strings.IndexFunc(r, func(c rune) bool { return c < ' ' || c == 0x7f }) >= 0 {
			return fmt.Errorf("sink %s: requested_by %q: want a requester as runs record it, e.g. api:nas", s.Name, r)
		}
	}
	if len(s.RequestedBy) > 0 && s.Kind == PagerDuty {
		return fmt.Errorf("sink %s: requested_by is for chat and webhook sinks (a PagerDuty sink pages; a run that went well is no page)", s.Name)
	}
	if err := checkURL(s.URL); err != nil {
		return fmt.Errorf("sink %s: url %w", s.Name, err)
	}
	switch s.Kind {
	case PagerDuty:
		if strings.TrimSpace(s.RoutingKey) == "" {
			return fmt.Errorf("sink %s: no routing key (the PagerDuty integration key of an Events API v2 integration)", s.Name)
		}
	case Webhook:
		if strings.TrimSpace(s.Secret) == "" {
			return fmt.Errorf("sink %s: no signing secret (whsec_ and the base64 of at least %d random bytes)", s.Name, MinWebhookSecretBytes)
		}
		if _, err := ParseWebhookSecret(s.Secret); err != nil {
			return fmt.Errorf("sink %s: the signing secret %w", s.Name, err)
		}
		if s.PreviousSecret != "" {
			if _, err := ParseWebhookSecret(s.PreviousSecret); err != nil {
				return fmt.Errorf("sink %s: the previous signing secret %w", s.Name, err)
			}
		}
	}
	if s.PreviousSecret != "" && s.Kind != Webhook {
		return fmt.Errorf("sink %s: only a webhook sink has a previous signing secret", s.Name)
	}
	return nil
}

// checkURL accepts an absolute http or https URL. Its error never quotes
// the URL (it may be a credential).
func checkURL(raw string) error {
	if strings.TrimSpace(raw) == "" {
		return errors.New("is not set")
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return errors.New("is not an absolute http or https URL")
	}
	return nil
}

// Config configures a Notifier.
type Config struct {
	Sinks []SinkConfig
	// WebURL is where on-call opens the web view (MIGRATOR_WEB_URL, e.g.
	// http://localhost:8080 through `fly proxy`); messages link to
	// WebURL/runs/ID. Empty: no link.
	WebURL string
	// SweepEvery is how often due notifications are handed to delivery
	// jobs. Default 5s.
	SweepEvery time.Duration
	// RetryMin and RetryMax bound the wait between two deliveries of a
	// notification the receiver did not take (doubling from RetryMin); a
	// longer Retry-After is honoured. Defaults 10s and 5m.
	RetryMin, RetryMax time.Duration
	// GiveUpAfter: a notification still undelivered this long after it
	// was written is marked failed. Default 24h.
	GiveUpAfter time.Duration
	// Retention: notifications written longer ago than this, and in a
	// final state (delivered, failed, dropped), are deleted by the periodic
	// upkeep (an incident still open keeps its last open). Default 30 days
	// (DefaultRetention).
	Retention time.Duration
	// HousekeepEvery is how often the upkeep runs (old notifications
	// deleted, expired left drains announced). Default 1m.
	HousekeepEvery time.Duration
	// AttemptTimeout bounds one HTTP request. Default 10s.
	AttemptTimeout time.Duration
	// InlineRetries is how many times one delivery job retries at once
	// (429, 5xx, no answer; after Retry-After up to InlineRetryMax)
	// before leaving the next try to a later sweep. Default 1; negative:
	// none. With the defaults a delivery job lasts at most 30 s, so the
	// job of a replica killed mid-delivery is rescued soon after.
	InlineRetries int
	// InlineRetryMax bounds an in-job wait. Default 5s.
	InlineRetryMax time.Duration
	// Logger receives delivery logs (never a secret). Default: discard.
	Logger *slog.Logger
	// Observe hears of every delivery attempt's result (metrics):
	// sink kind and "delivered", "retry" or "failed". Optional.
	Observe func(kind, result string)
	// Now is the clock of the messages' timestamps and signatures.
	// Default time.Now.
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	if c.SweepEvery == 0 {
		c.SweepEvery = 5 * time.Second
	}
	if c.RetryMin == 0 {
		c.RetryMin = 10 * time.Second
	}
	if c.RetryMax == 0 {
		c.RetryMax = 5 * time.Minute
	}
	if c.GiveUpAfter == 0 {
		c.GiveUpAfter = 24 * time.Hour
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.HousekeepEvery == 0 {
		c.HousekeepEvery = time.Minute
	}
	if c.AttemptTimeout == 0 {
		c.AttemptTimeout = 10 * time.Second
	}
	if c.InlineRetries == 0 {
		c.InlineRetries = 1
	}
	if c.InlineRetryMax == 0 {
		c.InlineRetryMax = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Observe == nil {
		c.Observe = func(string, string) {}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	for i := range c.Sinks {
		c.Sinks[i] = c.Sinks[i].withDefaults()
	}
	c.WebURL = strings.TrimRight(strings.TrimSpace(c.WebURL), "/")
	return c
}

// Validate checks the configuration; the first problem is one line that
// names the sink and setting, never a secret.
func (c Config) Validate() error {
	c = c.withDefaults()
	seen := map[string]bool{}
	for _, s := range c.Sinks {
		if err := s.validate(); err != nil {
			return err
		}
		if seen[s.Name] {
			return fmt.Errorf("sink %s is configured twice", s.Name)
		}
		seen[s.Name] = true
	}
	if c.WebURL != "" {
		if err := checkURL(c.WebURL); err != nil {
			return fmt.Errorf("web URL %w", err)
		}
		// It is copied into every message: a password in it would be too.
		if u, _ := url.Parse(c.WebURL); u.User != nil {
			return errors.New("web URL carries credentials (user:password@): every message would show them")
		}
	}
	switch {
	case c.SweepEvery < 100*time.Millisecond:
		return fmt.Errorf("sweep interval %s is below 100ms", c.SweepEvery)
	case c.RetryMin <= 0 || c.RetryMax < c.RetryMin:
		return fmt.Errorf("retry waits %s..%s: want 0 < min ≤ max", c.RetryMin, c.RetryMax)
	case c.GiveUpAfter < c.RetryMax:
		return fmt.Errorf("give-up age %s is shorter than the longest retry wait %s", c.GiveUpAfter, c.RetryMax)
	case c.AttemptTimeout <= 0 || c.InlineRetryMax < 0:
		return errors.New("attempt timeout and inline wait must be positive")
	case c.Retention < c.GiveUpAfter:
		// A row is final at most GiveUpAfter after it was written.
		return fmt.Errorf("retention %s is shorter than the give-up age %s: pending notifications would be deleted", c.Retention, c.GiveUpAfter)
	case c.HousekeepEvery < time.Second:
		return fmt.Errorf("upkeep interval %s is below 1s", c.HousekeepEvery)
	}
	return nil
}
