package notify_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/hermes-cloud/migrator/internal/notify"
)

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// Bad sink settings are one line naming the sink and the setting, never
// the secret.
func TestConfigValidate(t *testing.T) {
	const secretURL = "https://hooks.slack.com/services/T1/B1/s3cr3tpath"
	good := notify.SinkConfig{Name: "fleet", Kind: notify.Slack, URL: secretURL}
	for _, tc := range []struct {
		name string
		sink notify.SinkConfig
		web  string
		want string // "" = valid
	}{
		{"slack", good, "", ""},
		{"pagerduty default endpoint", notify.SinkConfig{Name: "pd", Kind: notify.PagerDuty, RoutingKey: "k"}, "", ""},
		{"unknown kind", notify.SinkConfig{Name: "x", Kind: "teams", URL: secretURL}, "", `sink x: kind "teams" is not one of slack, pagerduty, webhook`},
		{"url does not parse", notify.SinkConfig{Name: "x", Kind: notify.Slack, URL: "hooks.slack.com/services/s3cr3tpath"}, "", "sink x: url is not an absolute http or https URL"},
		{"url with a bad escape", notify.SinkConfig{Name: "x", Kind: notify.Slack, URL: "https://h/%zzs3cr3tpath"}, "", "sink x: url is not an absolute http or https URL"},
		{"no url", notify.SinkConfig{Name: "x", Kind: notify.Webhook, Secret: hookSecret}, "", "sink x: url is not set"},
		{"webhook", notify.SinkConfig{Name: "h", Kind: notify.Webhook, URL: secretURL, Secret: hookSecret, PreviousSecret: oldHookSecret}, "", ""},
		{"missing routing key", notify.SinkConfig{Name: "pd", Kind: notify.PagerDuty}, "", "sink pd: no routing key"},
		{"no webhook secret", notify.SinkConfig{Name: "h", Kind: notify.Webhook, URL: secretURL}, "", "sink h: no signing secret (whsec_ and the base64 of at least 24 random bytes)"},
		// 23 bytes: "whsec_" + base64 of s3cr3t…
		{"short webhook secret", notify.SinkConfig{Name: "h", Kind: notify.Webhook, URL: secretURL, Secret: "whsec_czNjcjN0czNjcjN0czNjcjN0czNjcjM="},
			"", "sink h: the signing secret is 23 bytes, shorter than 24"},
		{"webhook secret not whsec", notify.SinkConfig{Name: "h", Kind: notify.Webhook, URL: secretURL, Secret: "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t"},
			"", "sink h: the signing secret is not of the form whsec_<base64>"},
		{"webhook secret not base64", notify.SinkConfig{Name: "h", Kind: notify.Webhook, URL: secretURL, Secret: "whsec_s3cr3t!s3cr3t!s3cr3t!s3cr3t!"},
			"", "sink h: the signing secret is not whsec_ followed by standard base64"},
		{"short previous secret", notify.SinkConfig{Name: "h", Kind: notify.Webhook, URL: secretURL, Secret: hookSecret, PreviousSecret: "whsec_czNjcjN0"},
			"", "sink h: the previous signing secret is 6 bytes, shorter than 24"},
		{"previous secret of a slack sink", notify.SinkConfig{Name: "x", Kind: notify.Slack, URL: secretURL, PreviousSecret: hookSecret},
			"", "sink x: only a webhook sink has a previous signing secret"},
		{"bad name", notify.SinkConfig{Name: "On Call", Kind: notify.Slack, URL: secretURL}, "", `sink name "On Call"`},
		{"bad severity", notify.SinkConfig{Name: "x", Kind: notify.Slack, URL: secretURL, MinSeverity: "page"}, "", `min_severity "page"`},
		{"unknown event", notify.SinkConfig{Name: "x", Kind: notify.Slack, URL: secretURL, Events: []string{"run.paused", "run.exploded"}}, "", `event "run.exploded" is not one of`},
		{"bad web url", good, "localhost:8080", "web URL is not an absolute http or https URL"},
		{"web url with a password", good, "http://oncall:s3cr3tpw@localhost:8080", "web URL carries credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := notify.Config{Sinks: []notify.SinkConfig{tc.sink}, WebURL: tc.web}.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error = %v, want %q", err, tc.want)
			case err != nil && (strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), "\n")):
				t.Fatalf("error %q shows the secret or is not one line", err)
			}
		})
	}
	two := notify.Config{Sinks: []notify.SinkConfig{good, good}}
	if err := two.Validate(); err == nil || !strings.Contains(err.Error(), "sink fleet is configured twice") {
		t.Fatalf("duplicate: %v", err)
	}
}
