package fleetsim

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

// A hostile agent (Config.Hostile): what a tenant who controls the machine
// can make its dashboard answer. An agent runs its customer's tools and
// shell commands on a machine the customer controls, and hermes-agent's
// status route copies gateway_platforms from a file on the agent's own
// volume: hermes_cli/web_server.py get_status reads gateway_platforms =
// runtime.get("platforms") from gateway/status.py read_runtime_status
// ({HERMES_HOME}/gateway_state.json, HERMES_HOME on the volume at
// /opt/data), keeping the keys of the platforms of the tenant's own
// config.yaml (gateway/config.py load_gateway_config; plugin platforms are
// named by their plugin directory, Platform._missing_), and error_message
// is exception text. So a hostile agent's dashboard answers:
//
//   - every answer with an X-Request-Id header: every other one 1 MiB
//     (Go's client accepts 10 MiB of headers unless told otherwise), the
//     others 4 KiB of Slack mentions;
//   - /api/status with 1,000 platforms: its configured ones, one named
//     HostilePlatform ("<!channel> <https://evil.example|runbook>"), names
//     carrying terminal escapes (OSC 52, which writes the operator's
//     clipboard; ESC [2J, which clears the screen) and a spreadsheet
//     formula, and plugin-0001 … to make up the thousand; a version and
//     error texts carrying the same, and 64 KiB error messages;
//   - HostilePlatform connected on the image the fleet started on
//     (Config.Image) and "fatal" on any other, with an error_code that is
//     a formula and an escape: the platform "fails after the update", so
//     a migration must roll the machine back, and the rollback reason quotes
//     the platform's name.
//
// The drain route and everything else behave as any agent's.
const (
	// HostilePlatform is the name of the platform a hostile agent fails
	// after an update: a Slack channel mention and a disguised link.
	HostilePlatform = "<!channel> <https://evil.example|runbook>"
	// HostilePlatforms is how many platforms a hostile agent reports.
	HostilePlatforms = 1000
	// hostileHugeHeader is the size of every other X-Request-Id.
	hostileHugeHeader = 1 << 20
)

// Hostile strings: a clipboard write (OSC 52, BEL-terminated), a screen
// clear, a formula, mentions.
const (
	hostileOSC52   = "\x1b]52;c;ZXZpbCBjbGlwYm9hcmQ=\x07"
	hostileClear   = "\x1b[2J\x1b[H"
	hostileFormula = `=HYPERLINK("https://evil.example","runbook")`
)

// hostile is the simulator's state of its hostile agents: how many answers
// each machine's dashboard gave (every other one carries the huge header).
type hostile struct {
	mu      sync.Mutex
	answers map[*machine]int
}

// isHostile reports whether app runs a hostile agent: it is one of the
// first Config.Hostile apps (AppPrefix+"1" …).
func (s *Sim) isHostile(app string) bool {
	if s.cfg.Hostile <= 0 {
		return false
	}
	n, err := strconv.Atoi(strings.TrimPrefix(app, s.cfg.AppPrefix))
	return err == nil && strings.HasPrefix(app, s.cfg.AppPrefix) && n >= 1 && n <= s.cfg.Hostile
}

// hostileHeaders sets a hostile agent's X-Request-Id on an answer of its
// dashboard (before the answer is written).
func (s *Sim) hostileHeaders(w http.ResponseWriter, m *machine) {
	if !s.isHostile(m.app.name) {
		return
	}
	s.hostile.mu.Lock()
	if s.hostile.answers == nil {
		s.hostile.answers = map[*machine]int{}
	}
	s.hostile.answers[m]++
	n := s.hostile.answers[m]
	s.hostile.mu.Unlock()
	if n%2 == 1 {
		w.Header().Set("X-Request-Id", strings.Repeat("A", hostileHugeHeader))
		return
	}
	// A header value cannot carry control characters (net/http refuses
	// them on both sides), but it can carry mentions, 4 KiB of them.
	w.Header().Set("X-Request-Id", strings.Repeat("<!channel>", 4096/len("<!channel>")))
}

// hostileStatus turns b, the /api/status of m, into what a hostile agent
// answers. Called with s.mu held.
func (s *Sim) hostileStatus(m *machine, b *statusBody) {
	if !s.isHostile(m.app.name) || len(b.GatewayPlatforms) == 0 {
		return // a stopped gateway reports no platforms, hostile or not
	}
	at := ""
	for _, p := range b.GatewayPlatforms {
		at = p.UpdatedAt
		break
	}
	str := func(v string) *string { return &v }
	connected := Platform{State: "connected", UpdatedAt: at}
	plats := make(map[string]Platform, HostilePlatforms)
	for k, v := range b.GatewayPlatforms {
		plats[k] = v
	}
	fails := m.imageRef.Digest != s.resolveImage(s.cfg.Image).Digest
	if fails {
		plats[HostilePlatform] = Platform{State: "fatal", UpdatedAt: at,
			ErrorCode:    str(hostileFormula + hostileOSC52),
			ErrorMessage: str(hostileClear + "<!here> token revoked " + hostileOSC52 + strings.Repeat("\x1b[31m!", 64<<10/6))}
	} else {
		plats[HostilePlatform] = connected
	}
	plats[hostileOSC52+"clipboard"] = connected
	plats[hostileClear+"@here"] = connected
	plats[hostileFormula] = Platform{State: "retrying" + hostileClear, UpdatedAt: at, NeedsAttention: false,
		ErrorMessage: str(strings.Repeat("<@U0123ABCD> ", 5000)), RetryingSince: str(hostileOSC52)}
	for i := 1; len(plats) < HostilePlatforms; i++ {
		plats[fmt.Sprintf("plugin-%04d", i)] = connected
	}
	b.GatewayPlatforms = plats
	b.Version = b.Version + hostileClear + " <!here> " + hostileOSC52
	if fails && b.GatewayState != nil && *b.GatewayState == "running" {
		degraded := "degraded" // a parked platform: the gateway serves the others
		b.GatewayState = &degraded
	}
}
