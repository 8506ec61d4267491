package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/internal/authlimit"
	"github.com/hermes-cloud/migrator/policy"
)

// token is a configured token as it is compared: its SHA-256 digest, so
// every comparison is between two 32-byte values and takes the same time
// whatever the lengths and wherever the first difference is.
type token struct {
	name   string // "api:<Name>"
	digest [sha256.Size]byte
	causes []policy.Cause // empty: all
}

func newToken(t Token) token {
	return token{name: "api:" + t.Name, digest: sha256.Sum256([]byte(t.Secret)), causes: t.Causes}
}

// may reports whether the token may ask for cause.
func (t *token) may(c policy.Cause) bool { return len(t.causes) == 0 || slices.Contains(t.causes, c) }

func (t *token) causeList() string {
	names := make([]string, len(t.causes))
	for i, c := range t.causes {
		names[i] = string(c)
	}
	return strings.Join(names, ", ")
}

// forbidden answers 403 for a cause the token may not ask for.
func (t *token) forbidden(w http.ResponseWriter, c string, what string) {
	writeError(w, http.StatusForbidden, "cause", fmt.Sprintf("%s may not %s a run of cause %s (it may: %s)", t.name, what, c, t.causeList()))
}

// authorize answers 401 or 429 itself unless the request carries one of
// the tokens; it returns that token. Every configured token is compared
// (no early return), so the time taken does not tell which one is
// closest. A request that presents a wrong token is counted against its
// source; one that presents none guesses nothing and is not.
func (a *API) authorize(w http.ResponseWriter, r *http.Request) *token {
	src, now := authlimit.SourceOf(r), a.cfg.Clock.Now()
	if d := a.cfg.Limiter.Wait(src, now); d > 0 {
		w.Header().Set("Retry-After", authlimit.RetryAfter(d))
		writeError(w, http.StatusTooManyRequests, "", "too many wrong tokens from this address: try again later")
		return nil
	}
	h := r.Header.Get("Authorization")
	w.Header().Set("WWW-Authenticate", `Bearer realm="migrator"`)
	if h == "" {
		writeError(w, http.StatusUnauthorized, "", `no token: send "Authorization: Bearer <token>"`)
		return nil
	}
	var found *token
	// The scheme is case-insensitive (RFC 9110, section 11.1).
	if scheme, tok, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") {
		d := sha256.Sum256([]byte(strings.TrimSpace(tok)))
		for i := range a.tokens {
			if subtle.ConstantTimeCompare(d[:], a.tokens[i].digest[:]) == 1 {
				found = &a.tokens[i]
			}
		}
	}
	if found != nil {
		w.Header().Del("WWW-Authenticate")
		return found
	}
	limited := a.cfg.Limiter.Fail(src, now)
	a.cfg.Logger.Warn("api: wrong token", "source_addr", authlimit.PeerAddr(r), "method", r.Method, "path", logPath(r.URL.Path))
	if limited {
		a.cfg.Logger.Warn("api: too many wrong tokens; answering 429 until the source's attempts refill",
			"source_addr", authlimit.PeerAddr(r), "source", src.String(), "retry_after", a.cfg.Limiter.Wait(src, now).Round(time.Second).String())
	}
	writeError(w, http.StatusUnauthorized, "", "unknown token")
	return nil
}

// logPath bounds what a request's path adds to a log line.
func logPath(p string) string {
	const maxLen = 200
	if len(p) > maxLen {
		return p[:maxLen] + "…"
	}
	return p
}
