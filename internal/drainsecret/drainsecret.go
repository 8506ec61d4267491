// Package drainsecret derives each agent's drain secret from one control-plane
// key, so no per-agent secret is ever stored: the agent gets
// HERMES_DASHBOARD_DRAIN_SECRET at provisioning, migrator re-derives it per call.
//
//	secret = base64url_nopad(HMAC-SHA256(key, "hermes-drain-secret/v1:" + app))
//
// That is 43 characters, which meets the gateway's rule for registering the
// drain route (at least 43 characters, at least 16 distinct).
package drainsecret

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
)

// MinKeyBytes is the shortest MIGRATOR_DRAIN_KEY accepted.
const MinKeyBytes = 32

// Gateway rule for a drain secret (hermes dashboard auth plugin).
const (
	minSecretLen      = 43
	minSecretDistinct = 16
)

const domain = "hermes-drain-secret/v1:"

// ErrKeyTooShort is returned for a key under MinKeyBytes.
var ErrKeyTooShort = errors.New("drain key is too short")

// CheckKey refuses a key shorter than MinKeyBytes. The error never holds the key.
func CheckKey(key []byte) error {
	if len(key) < MinKeyBytes {
		return fmt.Errorf("%w: %d bytes, need at least %d", ErrKeyTooShort, len(key), MinKeyBytes)
	}
	return nil
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
