package gateway

import (
	"fmt"
	"net/http"
	"slices"

	"github.com/hermes-cloud/migrator/internal/printsafe"
)

// An agent is a tenant's: it runs the customer's tools on a machine the
// customer controls, and what its dashboard answers is whatever that
// machine chooses to send. hermes-agent's status route copies
// gateway_platforms from the gateway's runtime status file on the agent's
// own volume (hermes_cli/web_server.py get_status: runtime.get("platforms")
// from gateway/status.py read_runtime_status, {HERMES_HOME}/
// gateway_state.json), keyed by the platforms of the tenant's config,
// plugin platforms included (gateway/config.py Platform._missing_), with
// error messages that are exception text. So everything read from an
// agent is bounded here, where it is read, and cleaned once: one printable
// line (package printsafe), a bounded length, a bounded number of
// platforms. What was over a bound is said in Status.Oversized (and kept
// with the signals), never stored.
const (
	// MaxHeaderBytes bounds an answer's header block (Go's client
	// default is 10 MiB): a dashboard's headers are a few hundred bytes.
	// A larger one fails the attempt as a transport error.
	MaxHeaderBytes = 64 << 10
	// MaxPlatforms bounds the platforms kept from gateway_platforms:
	// hermes-agent has 24 built-in platforms (gateway/config.py Platform)
	// and a profile multiplexer names them "<profile>:<platform>". The
	// first MaxPlatforms by name are kept.
	MaxPlatforms = 64
	// Lengths, in runes, of the fields read from an agent.
	maxName = 128       // a platform key ("<profile>:<platform>", a profile name is at most 64)
	maxWord = 64        // states, codes, versions, timestamps
	maxText = maxDetail // error messages, exit reasons, details
	// maxNotes bounds Status.Oversized.
	maxNotes = 4
)

// boundedTransport is t (nil: http.DefaultTransport) cloned with the
// header bound and without a proxy: the client carries each agent's drain
// secret in clear over the private network, and HTTPS_PROXY/HTTP_PROXY in
// the environment must not route it through anyone.
func boundedTransport(t *http.Transport) *http.Transport {
	if t == nil {
		t = http.DefaultTransport.(*http.Transport)
	}
	t = t.Clone()
	t.Proxy = nil
	t.MaxResponseHeaderBytes = MaxHeaderBytes
	return t
}

// field cleans one string read from an agent: one printable line of at
// most max runes.
func field(s string, max int) string { return printsafe.Line(s, max) }

// bounds collects what one answer carried beyond the bounds.
type bounds struct {
	cut   int // strings cut to their bound
	notes []string
}

// clean is field, counting the strings that were cut.
func (b *bounds) clean(s string, max int) string {
	full := printsafe.Line(s, 0)
	out := printsafe.Cut(full, max)
	if len(out) != len(full) {
		b.cut++
	}
	return out
}

func (b *bounds) note(format string, args ...any) {
	if len(b.notes) < maxNotes {
		b.notes = append(b.notes, fmt.Sprintf(format, args...))
	}
}

// oversized is the notes, with the count of cut strings.
func (b *bounds) oversized() []string {
	notes := slices.Clone(b.notes)
	if b.cut > 0 {
		notes = append(notes, fmt.Sprintf("%d %s longer than its bound cut short", b.cut, plural(b.cut, "string", "strings")))
	}
	return notes
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
