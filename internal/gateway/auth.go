package gateway

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// NoSecretOrRoute is the readiness of an agent whose dashboard's login gate
// answered a drain call 401 before routing, when its version cannot tell
// which of the two it is: an older Hermes without the drain route, or a
// Hermes with the route but no drain secret configured (see Explain401).
const NoSecretOrRoute Readiness = "no_secret_or_drain_route"

// AuthLayer is the part of an agent's dashboard that answered a drain call
// with 401.
type AuthLayer string

// The layers, told apart by the 401's JSON body as hermes-agent writes it.
const (
	// AuthLoginGate: the login gate of a gated (non-loopback) bind answered
	// before routing: {"error": "unauthenticated"|"session_expired",
	// "detail": "Unauthorized", "reason": "no_cookie"|…, "login_url": …}
	// (hermes_cli/dashboard_auth/middleware.py _unauth_response). The drain
	// path is not a token route on this agent: the dashboard_auth/drain
	// plugin registers it only when HERMES_DASHBOARD_DRAIN_SECRET is set
	// (web_server gateway_drain's docstring), and an older Hermes has no
	// drain route at all. Either way a 401, not a 404.
	AuthLoginGate AuthLayer = "login_gate"
	// AuthDrainRoute: the drain route's own bearer check refused our
	// secret: {"error": "unauthenticated", "detail": "Unauthorized"}
	// without a reason (hermes_cli/dashboard_auth/token_auth.py, "no
	// provider recognises token"). The route is registered, so the agent
	// has a drain secret: another one than ours.
	AuthDrainRoute AuthLayer = "drain_route"
	// AuthOther: any other 401 (FastAPI's {"detail": …} of a loopback
	// bind's session-token check): no secret, or another one.
	AuthOther AuthLayer = "other"
)

// authFields reads "error" and "reason" from a 401's body, if it is a JSON
// object with string fields of those names.
func authFields(data []byte) (errText, reason string) {
	var r struct {
		Error  any `json:"error"`
		Reason any `json:"reason"`
	}
	if decodeObject(data, &r) != nil {
		return "", ""
	}
	e, _ := r.Error.(string)
	rs, _ := r.Reason.(string)
	return oneLine(e), oneLine(rs)
}

// Layer says which layer answered a 401 (AuthOther for any other error).
func (e *HTTPError) Layer() AuthLayer {
	switch {
	case e.StatusCode != http.StatusUnauthorized:
		return AuthOther
	case e.AuthReason != "":
		return AuthLoginGate
	case e.AuthError == "unauthenticated":
		return AuthDrainRoute
	}
	return AuthOther
}

// Explain401 refines what a drain call's 401 means for an agent whose
// /api/status reported version (""=unknown), given the oldest Hermes
// version with the drain route (minVersion, ""=not configured). It returns
// the readiness category and one line for people; for an error that is not
// a 401 it returns Classify's category and "".
//
//   - the drain route refused our secret: NoSecret, "holds another secret";
//   - the login gate answered: the version decides: below minVersion
//     NoDrainRoute (an older Hermes), at or above it NoSecret (no drain
//     secret configured); with no minimum, or a version that cannot be
//     compared, NoSecretOrRoute, saying plainly it is one or the other.
func Explain401(err error, version, minVersion string) (Readiness, string) {
	r, _ := Classify(err)
	var he *HTTPError
	if r != NoSecret || !errors.As(err, &he) {
		return r, ""
	}
	v := version
	if v == "" {
		v = "unknown"
	}
	switch he.Layer() {
	case AuthDrainRoute:
		return NoSecret, "the agent holds another drain secret than ours (401 from the drain route itself: a rotated key, or not recreated since `secret sync`)"
	case AuthOther:
		return NoSecret, "401: the agent holds no drain secret, or another one"
	}
	gate := fmt.Sprintf("401 from the login gate before routing, reason %s", he.AuthReason)
	if minVersion == "" {
		return NoSecretOrRoute, fmt.Sprintf("an older Hermes without the drain route, or no drain secret configured (version %s): %s; set %s to tell them apart",
			v, gate, MinDrainVersionEnv)
	}
	cmp, ok := CompareVersions(version, minVersion)
	switch {
	case !ok:
		return NoSecretOrRoute, fmt.Sprintf("an older Hermes without the drain route, or no drain secret configured: version %s cannot be compared with the minimum %s (%s)",
			v, minVersion, gate)
	case cmp < 0:
		return NoDrainRoute, fmt.Sprintf("an older Hermes %s (below %s) without the drain route (%s)", version, minVersion, gate)
	}
	return NoSecret, fmt.Sprintf("Hermes %s has the drain route but no drain secret configured: `secret sync`, then a recreate (%s)", version, gate)
}

// MinDrainVersionEnv names the setting of the oldest Hermes version with
// the drain route (read in cmd/; named here for the messages).
const MinDrainVersionEnv = "MIGRATOR_HERMES_MIN_DRAIN_VERSION"

// CompareVersions compares two Hermes versions ("0.21.5", "v0.21", "1.2.0rc1"):
// a leading "v" is ignored and dot-separated parts compare numerically
// (leading digits; a missing part is 0), then by any suffix as text. ok is
// false when either has no leading number.
func CompareVersions(a, b string) (cmp int, ok bool) {
	pa, okA := versionParts(a)
	pb, okB := versionParts(b)
	if !okA || !okB {
		return 0, false
	}
	for i := range max(len(pa), len(pb)) {
		var x, y versionPart
		if i < len(pa) {
			x = pa[i]
		}
		if i < len(pb) {
			y = pb[i]
		}
		switch {
		case x.n != y.n:
			return sign(x.n - y.n), true
		case x.rest != y.rest:
			// A pre-release suffix sorts before the plain number.
			if x.rest == "" {
				return 1, true
			}
			if y.rest == "" {
				return -1, true
			}
			return strings.Compare(x.rest, y.rest), true
		}
	}
	return 0, true
}

type versionPart struct {
	n    int
	rest string
}

func versionParts(v string) ([]versionPart, bool) {
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	if v == "" {
		return nil, false
	}
	var out []versionPart
	for i, s := range strings.Split(v, ".") {
		j := 0
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		if j == 0 {
			if i == 0 {
				return nil, false
			}
			out = append(out, versionPart{rest: s})
			continue
		}
		n, err := strconv.Atoi(s[:j])
		if err != nil {
			return nil, false
		}
		out = append(out, versionPart{n: n, rest: s[j:]})
	}
	return out, true
}

func sign(n int) int {
	switch {
	case n < 0:
		return -1
	case n > 0:
		return 1
	}
	return 0
}
