// Package drainsecret derives each agent's drain secret from one control-plane
// key, so no per-agent secret is ever stored: the agent gets
// HERMES_DASHBOARD_DRAIN_SECRET at provisioning, migrator re-derives it per call.
//
//	secret = base64url_nopad(HMAC-SHA256(key, "hermes-drain-secret/v1:" + app))
//
// That is 43 characters, which meets the gateway's rule for registering the
// drain route (at least 43 characters, at least 16 distinct).
//
// The app names are public and a customer can read their own agent's
// secret, so a guessable key is found offline: the key must be base64
// (standard or URL alphabet, padded or not) of at least MinKeyBytes random
// bytes, which CheckKey judges with package secretcheck (no repeated
// pattern, no ramp, enough distinct bytes for its length). The key's text
// as given is the HMAC key, as it always was: a key that passes derives
// the secrets it derived before. Generate one with GenerateHint.
package drainsecret

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/hermes-cloud/migrator/internal/secretcheck"
)

// MinKeyBytes is the shortest MIGRATOR_DRAIN_KEY accepted.
const MinKeyBytes = 32

// Gateway rule for a drain secret (hermes dashboard auth plugin).
const (
	minSecretLen      = 43
	minSecretDistinct = 16
)

const domain = "hermes-drain-secret/v1:"

// GenerateHint is the command that makes a good key.
const GenerateHint = "`openssl rand -base64 32`"

// Why CheckKey refuses a key (errors.Is). A key that does not look random
// is a *secretcheck.Weak (errors.As).
var (
	ErrKeyTooShort  = errors.New("drain key is too short")
	ErrKeyNotBase64 = errors.New("drain key is not base64")
)

// CheckKey refuses a key that is not base64 of at least MinKeyBytes random
// bytes (see the package doc), in one line that says how to make a good
// one. The error never holds the key.
func CheckKey(key []byte) error {
	raw, ok := decodeKey(key)
	switch {
	case !ok:
		return fmt.Errorf("%w (of at least %d random bytes): generate one with %s", ErrKeyNotBase64, MinKeyBytes, GenerateHint)
	case len(raw) < MinKeyBytes:
		return fmt.Errorf("%w: %d bytes once decoded, need at least %d: generate one with %s", ErrKeyTooShort, len(raw), MinKeyBytes, GenerateHint)
	}
	if err := secretcheck.Bytes("drain key", raw, MinKeyBytes); err != nil {
		return fmt.Errorf("%w: generate one with %s", err, GenerateHint)
	}
	return nil
}

// decodeKey reads key as base64 in any of its four usual forms.
func decodeKey(key []byte) ([]byte, bool) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if raw, err := enc.DecodeString(string(key)); err == nil && len(key) > 0 {
			return raw, true
		}
	}
	return nil, false
}

// Derive returns the drain secret of app.
func Derive(key []byte, app string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(domain + app))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// CheckSecret reports whether s meets the gateway's rule; the error never holds s.
func CheckSecret(s string) error {
	if len(s) < minSecretLen {
		return fmt.Errorf("drain secret has %d characters, the gateway needs at least %d", len(s), minSecretLen)
	}
	distinct := map[rune]struct{}{}
	for _, r := range s {
		distinct[r] = struct{}{}
	}
	if len(distinct) < minSecretDistinct {
		return fmt.Errorf("drain secret has %d distinct characters, the gateway needs at least %d", len(distinct), minSecretDistinct)
	}
	return nil
}

const keyIDDomain = "hermes-drain-key-id/v1"

// KeyID fingerprints key for the audit log: 16 hex characters of an HMAC
// under a domain of its own, so it tells keys apart (a rotation changes it)
// without revealing the key or any secret derived from it.
func KeyID(key []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(keyIDDomain))
	return hex.EncodeToString(m.Sum(nil)[:8])
}
