package store

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// MachineOutcomes are the outcomes a history filter accepts, in the order
// help texts list them.
var MachineOutcomes = []string{string(OutcomeMigrated), string(OutcomeRolledBack), string(OutcomeFailed),
	string(OutcomeSkippedUpToDate), string(OutcomeDeferred), string(OutcomeCancelled)}

var daysRe = regexp.MustCompile(`^(\d{1,5})d$`)

// ParseWhen reads a history --since/--until value (the CLI's flags and the
// web view's fields alike): a duration back from now ("24h", "7d") or an
// instant (a date, or a date and time; UTC unless it says otherwise). ""
// is no bound.
func ParseWhen(s string) (ago time.Duration, at time.Time, err error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, time.Time{}, nil
	}
	if m := daysRe.FindStringSubmatch(s); m != nil {
		n, _ := strconv.Atoi(m[1])
		if n == 0 {
			return 0, time.Time{}, fmt.Errorf("%q: want a positive duration", s)
		}
		return time.Duration(n) * 24 * time.Hour, time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return 0, time.Time{}, fmt.Errorf("%q: want a positive duration back from now, e.g. 24h", s)
		}
		return d, time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return 0, t, nil
		}
	}
	return 0, time.Time{}, fmt.Errorf("%q: want a duration back from now (24h, 90m, 7d) or a date/time (2026-03-08, 2026-03-08T07:30:00Z)", s)
}

// CSVRecord is r as one CSV record in HistoryColumns' order: times in RFC
// 3339 UTC, NULL as "", seconds with millisecond precision.
func (r HistoryRow) CSVRecord() []string {
	ts := func(t *time.Time) string {
		if t == nil {
			return ""
		}
		return t.UTC().Format(time.RFC3339Nano)
	}
	b := func(p *bool) string {
		if p == nil {
			return ""
		}
		return strconv.FormatBool(*p)
	}
	str := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	num := func(p *int) string {
		if p == nil {
			return ""
		}
		return strconv.Itoa(*p)
	}
	i64 := func(p *int64) string {
		if p == nil {
			return ""
		}
		return strconv.FormatInt(*p, 10)
	}
	secs := func(p *float64) string {
		if p == nil {
			return ""
		}
		return strconv.FormatFloat(*p, 'f', 3, 64)
	}
	created := r.CreatedAt
	return []string{strconv.FormatInt(r.RunID, 10), r.Cause, r.RequestedBy, r.App, r.MachineID, r.FromImage,
		r.ToImage, b(r.Quiet), str(r.PolicyRule), b(r.SuppressionEchoed), ts(r.DrainStartedAt), ts(r.QuiescedAt),
		ts(r.DeadlineAt), str(r.DrainOutcome), num(r.ActiveAgentsAtRecreate), ts(r.RecreatedAt),
		str(r.Outcome), str(r.Error), strconv.FormatInt(r.MigrationID, 10), r.Region,
		str(r.PolicyVersion), ts(r.DrainDeadline), str(r.OnDeadline), strconv.Itoa(r.Deferrals), r.Reason,
		ts(&created), ts(r.FinishedAt), secs(r.ExpectedDrainSeconds), secs(r.DrainWaitSeconds),
		secs(r.IdleWaitSeconds), strconv.Itoa(r.Peeks), num(r.ActiveAgentsAtBegin), str(r.FromDigest),
		str(r.ToDigest), str(r.MachineState), str(r.LeaseHolder), secs(r.LeaseWaitSeconds),
		string(r.SignalsBefore), string(r.SignalsAfter), str(r.DecidingSignal), strconv.FormatBool(r.Canary),
		secs(r.BakeSeconds), strings.Join(r.EnvSet, " "), strings.Join(r.EnvUnset, " "), i64(r.SecretsVersion),
		strconv.FormatBool(r.Restart), i64(r.SecretsVersionSent), i64(r.CombinedWithRun)}
}
