package webview

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/internal/authlimit"
)

// Who may read the view. Without Config.Open every request must carry one
// of the configured credentials. A request that presents a wrong one (any
// Authorization header that does not authorize) is logged without what it
// presented and counted against its source; a source that has used up its
// AuthBurst is answered 429 with Retry-After, before its credentials are
// even looked at, until its bucket refills (one attempt every
// AuthRefill). A request with no Authorization header guesses nothing: it
// gets the 401 (and the basic-auth challenge a browser answers) and is not
// counted.

// authResult is what a request's credentials are.
type authResult int

const (
	authOK      authResult = iota
	authMissing            // no Authorization header: nothing was guessed
	authWrong              // presented, and not one of ours
)

// credentials holds SHA-256 digests of the accepted secrets, so every
// comparison is between two 32-byte values: it takes the same time
// whatever the lengths and wherever the first difference is.
type credentials struct {
	bearer     *[sha256.Size]byte // nil: bearer tokens not accepted
	user, pass *[sha256.Size]byte // nil: basic auth not accepted
}

func digest(s string) *[sha256.Size]byte {
	d := sha256.Sum256([]byte(s))
	return &d
}

func newCredentials(c Config) credentials {
	var cr credentials
	if c.BearerToken != "" {
		cr.bearer = digest(c.BearerToken)
	}
	if c.BasicUser != "" {
		cr.user, cr.pass = digest(c.BasicUser), digest(c.BasicPassword)
	}
	return cr
}

func equal(a, b *[sha256.Size]byte) int { return subtle.ConstantTimeCompare(a[:], b[:]) }

// check compares every presented credential with every accepted one, with
// no early return on the user name, so the time taken does not tell which
// part was right.
func (c credentials) check(r *http.Request) authResult {
	h := r.Header.Get("Authorization")
	if h == "" {
		return authMissing
	}
	ok := 0
	if c.bearer != nil {
		// The scheme is case-insensitive (RFC 9110, section 11.1).
		if scheme, tok, found := strings.Cut(h, " "); found && strings.EqualFold(scheme, "Bearer") {
			ok |= equal(digest(strings.TrimSpace(tok)), c.bearer)
		}
	}
	if c.user != nil {
		if u, p, found := r.BasicAuth(); found {
			ok |= equal(digest(u), c.user) & equal(digest(p), c.pass)
		}
	}
	if ok == 1 {
		return authOK
	}
	return authWrong
}

// scheme names the kind of credential a request presented, for the log:
// never the credential itself.
func scheme(r *http.Request) string {
	s, _, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	switch {
	case strings.EqualFold(s, "Bearer"):
		return "bearer"
	case strings.EqualFold(s, "Basic"):
		return "basic"
	}
	return "other"
}

// logPath bounds what a request's path adds to a log line.
func logPath(p string) string {
	const maxLen = 200
	if len(p) > maxLen {
		return p[:maxLen] + "…"
	}
	return p
}

// gate answers the request itself (401 or 429) unless it may read the
// view; it reports whether the view should serve it.
func (v *View) gate(w http.ResponseWriter, r *http.Request) bool {
	if v.cfg.Open {
		return true
	}
	h := w.Header()
	src, now := authlimit.SourceOf(r), v.cfg.Clock.Now()
	if d := v.limiter.Wait(src, now); d > 0 {
		h.Set("Retry-After", authlimit.RetryAfter(d))
		http.Error(w, "too many wrong credentials from this address: try again later", http.StatusTooManyRequests)
		return false
	}
	switch v.creds.check(r) {
	case authOK:
		return true
	case authWrong:
		limited := v.limiter.Fail(src, now)
		v.cfg.Logger.Warn("web view: wrong credentials", "source_addr", authlimit.PeerAddr(r), "method", r.Method,
			"path", logPath(r.URL.Path), "scheme", scheme(r))
		if limited {
			v.cfg.Logger.Warn("web view: too many wrong credentials; answering 429 until the source's attempts refill",
				"source_addr", authlimit.PeerAddr(r), "source", src.String(), "retry_after", v.limiter.Wait(src, now).Round(time.Second).String())
		}
	}
	if v.creds.user != nil {
		h.Set("WWW-Authenticate", `Basic realm="migrator", charset="UTF-8"`)
	}
	http.Error(w, "unauthorized", http.StatusUnauthorized)
	return false
}
