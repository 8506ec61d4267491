package orchestrator_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/hermes-cloud/migrator/orchestrator"
)

// FuzzMaxUnavailable: no spec panics; a rejection is one line; an accepted
// spec gives at least one machine, a percentage never more than the fleet
// (or one), and a count exactly the number written.
func FuzzMaxUnavailable(f *testing.F) {
	for _, s := range []string{"", "1", "5", " 10 ", "+3", "0", "-1", "10%", "100%", "0.5%", "101%", "0%", "-5%",
		"NaN%", "Inf%", "1e2%", "1e-300%", "%", "5 %", "50%%", "9223372036854775807", "99999999999999999999", "1\n"} {
		f.Add(s, 200)
		f.Add(s, 0)
	}
	f.Fuzz(func(t *testing.T, spec string, n int) {
		if n < 0 {
			n = -n
		}
		n %= 1_000_000 // fleets, not integer overflow
		v, err := orchestrator.MaxUnavailable(spec, n)
		if err != nil {
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("MaxUnavailable(%q) error is not one line: %q", spec, err)
			}
			return
		}
		if v < 1 {
			t.Fatalf("MaxUnavailable(%q, %d) = %d, want at least 1", spec, n, v)
		}
		if strings.HasSuffix(strings.TrimSpace(spec), "%") && v > max(n, 1) {
			t.Fatalf("MaxUnavailable(%q, %d) = %d: more than the fleet", spec, n, v)
		}
		if count, err := strconv.Atoi(strings.TrimSpace(spec)); err == nil && count != v {
			t.Fatalf("MaxUnavailable(%q, %d) = %d, want the count %d", spec, n, v, count)
		}
	})
}
