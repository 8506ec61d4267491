package cli

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
)

// checkRejection: a rejected input is a usage error (exit 2) on one line.
func checkRejection(t *testing.T, what string, err error) {
	t.Helper()
	var ue usageError
	if !errors.As(err, &ue) {
		t.Fatalf("%s: %T is not a usage error: %v", what, err, err)
	}
	if strings.ContainsAny(err.Error(), "\r\n") {
		t.Fatalf("%s: error is not one line: %q", what, err)
	}
}

// FuzzRunCreateFlags: `migrator run create` checks every flag before it
// connects to anything. No combination panics; a rejection is a one-line
// usage error; what it accepts is within bounds (labels split at the first
// '=', the deadline within the policy's limits).
func FuzzRunCreateFlags(f *testing.F) {
	f.Add("auto-update", "registry.fly.io/hermes-agent:v2", "hermes_auto_update=true", "10%", "20m", "^hermes-", "hermes-agent-1")
	f.Add("operator", "registry.fly.io/hermes-agent@sha256:"+strings.Repeat("ab", 32), "tier=", "5", "", "", "")
	f.Add("nope", "", "=x", "0", "1ns", "(", "a b")
	f.Add("image-migration", "x:y:z", "novalue", "101%", "48h", "a(", "app/1")
	f.Add("env-edit", "registry.fly.io/hermes-agent:v2", " k = v ", "NaN%", "-5m", "[[:alpha:]", "\t")
	cmd := &cobra.Command{Use: "create"}
	e := &env{getenv: func(k string) string {
		if k == flyOrgEnv {
			return "hermes"
		}
		return ""
	}}
	f.Fuzz(func(t *testing.T, cause, image, label, maxUnavailable, deadline, appRegex, app string) {
		flags := runCreateFlags{cause: cause, image: image, maxUnavailable: maxUnavailable, deadline: deadline,
			selectorFlags: selectorFlags{labels: []string{label, "extra=1"}, appRegex: appRegex}}
		if app != "" {
			flags.apps, flags.appRegex = []string{app}, ""
		}
		got, err := flags.validate(cmd, e)
		if err != nil {
			checkRejection(t, "run create", err)
			return
		}
		k, v, _ := strings.Cut(label, "=")
		if k = strings.TrimSpace(k); k != "extra" && got.req.Selector.Labels[k] != v {
			t.Fatalf("--label %q read as %v", label, got.req.Selector.Labels)
		}
		if d := got.req.DeadlineOverride; d != 0 && (d < policy.MinWait || d > policy.MaxWait) {
			t.Fatalf("--deadline %q accepted as %s, outside %s..%s", deadline, d, policy.MinWait, policy.MaxWait)
		}
	})
}

// FuzzParseWhen: `history --since/--until` values. No input panics; a
// rejection is one line; an accepted value is either a positive duration back
// from now or an instant, never both, never neither (except "").
func FuzzParseWhen(f *testing.F) {
	for _, s := range []string{"", "24h", "7d", "0d", "99999d", "90m", "-1h", "2026-03-08", "2026-03-08T07:30:00Z",
		"2026-03-08 07:30", "2026-03-08T07:30:00.123456789+05:30", "1d2h", "d", "1e9h", "9999999999h", "2026-13-40"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ago, at, err := parseWhen(s)
		if err != nil {
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("parseWhen(%q) error is not one line: %q", s, err)
			}
			return
		}
		switch {
		case strings.TrimSpace(s) == "":
			if ago != 0 || !at.IsZero() {
				t.Fatalf("parseWhen(%q) = %s, %v: want no bound", s, ago, at)
			}
		case ago < 0, ago > 0 && !at.IsZero(), ago == 0 && at.IsZero():
			t.Fatalf("parseWhen(%q) = %s, %v: want a positive duration or an instant", s, ago, at)
		}
	})
}

// FuzzEnvSettings: the environment variables serve reads (durations,
// counts, the log level, the simulator's clock). No value panics; a rejection
// is a one-line usage error.
func FuzzEnvSettings(f *testing.F) {
	for _, s := range []string{"", "5s", "0", "-1s", "1h30m", "100", "-3", "debug", "INFO", "verbose", "scaled:50:1700000000000000000",
		"scaled:0:1", "scaled:1e308:-9223372036854775808", "scaled:NaN:1", "scaled:Inf:1", "real", "scaled:1:2:3", "9223372036854775807"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		e := &env{getenv: func(string) string { return v }}
		if d, err := envDuration(e, pollIntervalEnv, time.Second); err != nil {
			checkRejection(t, "duration", err)
		} else if d <= 0 {
			t.Fatalf("envDuration(%q) = %s", v, d)
		}
		if n, err := envInt(e, workersEnv, 1); err != nil {
			checkRejection(t, "count", err)
		} else if n < 0 {
			t.Fatalf("envInt(%q) = %d", v, n)
		}
		if _, err := newLogger(e, nil); err != nil {
			checkRejection(t, "log level", err)
		}
		if clk, err := loadClock(e); err != nil {
			checkRejection(t, "clock", err)
		} else {
			_ = clk.Now()
			_ = clk.Wall(time.Minute)
		}
	})
}

// FuzzParseConfig: migrator.toml. No file panics the parser (TOML, the
// [policy] table, cron schedules, selectors); a rejection is a *policy.Error
// on one line ("FILE:LINE: message"); what it accepts is within the
// documented bounds.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		"[policy.causes.auto-update]\nwait = \"45m\"\n[[policy.rules]]\nname = \"vip\"\nmatch = { tier = \"vip\" }\nwait = \"2h\"\n" +
			"[auto_update]\nenabled = true\nschedule = \"CRON_TZ=America/New_York 0 3 * * 1-5\"\nchannel = \"stable\"\nmax_unavailable = 5\n" +
			"canary = 1\nfailure_threshold = 2\npin = false\n[auto_update.selector]\norg = \"hermes\"\napp_prefix = \"hermes-agent-\"\n" +
			"labels = { hermes_auto_update = \"true\" }\n[fleet]\ncap = 40\n[worker]\nworkers = 8\npoll_interval = \"3s\"\n",
		"[auto_update]\nschedule = \"@every 1h\"\nchannel = \"c\"\nmax_unavailable = \"10%\"\n",
		"[auto_update]\nschedule = \"CRON_TZ=Europe/Berlin\"\nchannel = \"c\"\n",
		"[auto_update]\nschedule = \"TZ=Nowhere/Else 0 3 * * *\"\nchannel = \"c\"\n",
		"[auto_update]\nenabled = false\n",
		"[auto_update.selector]\nlabels = { a = 1 }\n",
		"[fleet]\ncap = -1\n", "[worker]\npoll_interval = \"2h\"\n", "[worker]\nworkers = 1e3\n",
		"policy = 3\n", "[surprise]\nx = 1\n", "a = \"\"\"\n[fleet]\n\"\"\"\n", "[fleet\ncap = 1\n", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		fc, err := parseConfig("migrator.toml", []byte(doc))
		if err != nil {
			var pe *policy.Error
			if !errors.As(err, &pe) {
				t.Fatalf("parseConfig error %T is not a *policy.Error: %v", err, err)
			}
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("parseConfig error is not one line: %q", err)
			}
			return
		}
		if fc.fleetCap != nil && (*fc.fleetCap < 0 || *fc.fleetCap > 1_000_000) ||
			fc.workers != nil && (*fc.workers < 1 || *fc.workers > 1_000_000) ||
			fc.pollInterval != nil && (*fc.pollInterval <= 0 || *fc.pollInterval > time.Hour) {
			t.Fatalf("accepted out of bounds: cap %v workers %v poll %v", fc.fleetCap, fc.workers, fc.pollInterval)
		}
		if au := fc.autoUpdate; au != nil && fc.autoUpdateOn {
			if au.schedule == nil || au.channel == "" {
				t.Fatalf("auto-update on without a schedule or channel: %+v", au)
			}
			if _, err := orchestrator.MaxUnavailable(au.maxUnavailable, 10); err != nil {
				t.Fatalf("accepted max_unavailable %q: %v", au.maxUnavailable, err)
			}
			now := time.Date(2026, 3, 8, 7, 0, 0, 0, time.UTC)
			if next := au.schedule.Next(now); !next.IsZero() && !next.After(now) {
				t.Fatalf("schedule %q: next run %v is not after %v", au.spec, next, now)
			}
		}
	})
}
