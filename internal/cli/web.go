package cli

import (
	"log/slog"
	"net"
	"net/http"
	"strings"
	"unicode"

	"github.com/hermes-cloud/migrator/internal/secretcheck"
	"github.com/hermes-cloud/migrator/internal/webview"
	"github.com/hermes-cloud/migrator/store"
)

// Who may read the web view. It shows every customer's app names, machine
// ids, drain outcomes and the operators' reasons, and on Fly serve's
// address is reachable from every machine of the organization, the
// customers' agents included (they run tools and shell commands). So:
//
//	credentials set (token and/or basic auth)    served, credentials required
//	none, serve listens on loopback only         served open (only this host reaches it)
//	none, beyond loopback, MIGRATOR_WEB_OPEN=true  served open, with a start-up warning
//	none, beyond loopback                        not served (404), one start-up line says how to enable it
//
// "Loopback" is decided from the address serve really listens on, after
// the listen: ":8080", "0.0.0.0:8080" and "[::]:8080" are every interface
// (on Fly: the 6PN address too), not loopback.
const (
	webTokenEnv     = "MIGRATOR_WEB_TOKEN"      // accepted as "Authorization: Bearer …"
	webBasicAuthEnv = "MIGRATOR_WEB_BASIC_AUTH" // "user:password", for browsers
	webOpenEnv      = "MIGRATOR_WEB_OPEN"       // "true": serve the view without credentials beyond loopback

	// minWebSecret is the shortest token or password accepted, and it must
	// look random (package secretcheck: no repeated pattern such as
	// "passwordpassword", enough distinct characters). The view slows
	// wrong guesses per source (webview's auth.go), but a Fly organization
	// has many sources; a random secret of this length is out of reach of
	// guessing however many there are.
	minWebSecret = 16
)

// webAccess is the web view's access settings from the environment.
type webAccess struct {
	token          string
	user, password string
	open           bool
}

func (a webAccess) hasCredentials() bool { return a.token != "" || a.user != "" }

// loadWebAccess reads and checks the settings. A bad value is a one-line
// configuration error that never shows a secret.
func loadWebAccess(e *env) (webAccess, error) {
	var a webAccess
	switch v := strings.TrimSpace(e.getenv(webOpenEnv)); strings.ToLower(v) {
	case "", "false":
	case "true":
		a.open = true
	default:
		return a, usagef("%s=%q: want true or false", webOpenEnv, v)
	}
	if a.token = strings.TrimSpace(e.getenv(webTokenEnv)); a.token != "" {
		if err := secretcheck.Text("the token", a.token, minWebSecret); err != nil {
			return a, usagef("%s: %v: use a random one, e.g. `openssl rand -base64 32`", webTokenEnv, err)
		}
		for _, r := range a.token {
			if r <= ' ' || r > '~' {
				return a, usagef("%s: want printable ASCII without spaces (it is sent as \"Authorization: Bearer …\")", webTokenEnv)
			}
		}
	}
	if v := strings.TrimSpace(e.getenv(webBasicAuthEnv)); v != "" {
		user, pass, ok := strings.Cut(v, ":")
		if !ok || user == "" || pass == "" {
			return a, usagef("%s: want user:password", webBasicAuthEnv)
		}
		if strings.IndexFunc(v, unicode.IsControl) >= 0 {
			return a, usagef("%s: control characters are not allowed", webBasicAuthEnv)
		}
		if err := secretcheck.Text("the password", pass, minWebSecret); err != nil {
			return a, usagef("%s: %v: use a random one, e.g. `openssl rand -base64 32`", webBasicAuthEnv, err)
		}
		a.user, a.password = user, pass
	}
	if a.open && a.hasCredentials() {
		return a, usagef("%s=true and %s/%s are both set: keep the credentials, or the open view, not both", webOpenEnv, webTokenEnv, webBasicAuthEnv)
	}
	return a, nil
}

// webMode is how serve offers the web view on an address.
type webMode int

const (
	webOff          webMode = iota // not served: 404
	webCredentials                 // served, credentials required
	webOpenLoopback                // served open on a loopback address
	webOpenExplicit                // served open beyond loopback (MIGRATOR_WEB_OPEN=true)
)

func (m webMode) String() string {
	return [...]string{"off", "credentials", "open (loopback)", "open"}[m]
}

// isLoopback: the listener accepts connections from this host only.
func isLoopback(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// mode decides how the view is offered on listen, the address serve
// listens on.
func (a webAccess) mode(listen net.Addr) webMode {
	switch {
	case a.hasCredentials():
		return webCredentials
	case isLoopback(listen):
		return webOpenLoopback
	case a.open:
		return webOpenExplicit
	}
	return webOff
}

// newWebView is the read-only web view over st as mode says (nil: off).
func newWebView(a webAccess, mode webMode, st *store.Store, log *slog.Logger) (http.Handler, error) {
	if mode == webOff {
		return nil, nil
	}
	cfg := webview.Config{Store: st.Q(), Logger: log, BearerToken: a.token, BasicUser: a.user, BasicPassword: a.password,
		Open: mode == webOpenLoopback || mode == webOpenExplicit}
	v, err := webview.New(cfg)
	if err != nil {
		return nil, usagef("%v", err)
	}
	return v, nil
}

// logWebMode says once, at start-up, how the view is offered and, when it
// is not, how to offer it.
func logWebMode(log *slog.Logger, mode webMode, listen net.Addr) {
	addr := listen.String()
	switch mode {
	case webOff:
		log.Info("web view off: serve listens beyond loopback and no credentials are set",
			"http_addr", addr, "enable", "set "+webTokenEnv+" (Bearer token) or "+webBasicAuthEnv+" (user:password) to serve it with credentials, "+
				"or "+webOpenEnv+"=true to serve it to anyone who reaches this address")
	case webOpenExplicit:
		log.Warn("web view open without credentials to anyone who reaches this address ("+webOpenEnv+"=true): "+
			"on a Fly private network that is every machine of the organization, customers' agents included",
			"http_addr", addr)
	case webOpenLoopback:
		log.Info("web view open on a loopback address (this host only)", "http_addr", addr)
	case webCredentials:
		log.Info("web view requires credentials", "http_addr", addr)
	}
}

// healthPaths stay open whatever the web view's mode: Fly's checks and
// metrics scraper call them, and they carry no customer identifier.
var healthPaths = []string{"/healthz", "/readyz", "/metrics"}

// withWebView serves health and metrics as before, the API (nil: off)
// under /api/, and the web view (nil: off) on every other path.
func withWebView(health, web, apiHandler http.Handler) http.Handler {
	mux := http.NewServeMux()
	for _, p := range healthPaths {
		mux.Handle(p, health)
	}
	if apiHandler == nil {
		apiHandler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"error":"the API is off: no token configured (` + apiTokenPrefix + `<NAME>)"}` + "\n"))
		})
	}
	mux.Handle("/api/", apiHandler)
	if web == nil {
		web = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "404 not found (the web view is off on this address: see serve's start-up log)", http.StatusNotFound)
		})
	}
	mux.Handle("/", web)
	return mux
}
