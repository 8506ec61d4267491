// Package seal keeps a customer's values (the env values of a change) in
// Postgres only sealed: AES-256-GCM under a key from the environment
// (MIGRATOR_SEAL_KEY, base64 of 32 random bytes), a fresh random 96-bit
// nonce per value, and additional data that binds each sealed value to the
// place it belongs ("run/12/env/TELEGRAM_BOT_TOKEN"), so a value copied into
// another row does not open there.
//
// Beside every sealed value is the id of the key that sealed it (KeyID: 16
// hex characters of an HMAC of the key under a domain of its own, which
// tells keys apart without revealing them): a replica holding another key
// gets a *WrongKeyError naming both ids, never garbage and never a value.
//
// The sealed form is nonce ‖ ciphertext ‖ tag. Nothing here logs, and no
// error holds a value or a key.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/hermes-cloud/migrator/internal/secretcheck"
)

// KeyBytes is the length of a seal key: AES-256.
const KeyBytes = 32

// checkKey judges the decoded key: exactly an AES-256 key, and random
// (secretcheck: no pattern, an entropy floor a generator's output clears),
// since whoever guesses it opens every sealed value.
func checkKey(what string, b []byte, size int) error {
	if len(b) != size {
		return fmt.Errorf("%s is %d bytes, want exactly %d (base64 of %d random bytes, e.g. `openssl rand -base64 %d`)",
			what, len(b), size, size, size)
	}
	if err := secretcheck.Bytes(what, b, size); err != nil {
		return fmt.Errorf("%w (make one with `openssl rand -base64 %d`)", err, size)
	}
	return nil
}

// Key seals and opens values. Safe for concurrent use.
type Key struct {
	aead cipher.AEAD
	id   string
	mac  []byte // a key of its own for MAC, derived from the seal key
}

// Sealed is one sealed value and the id of the key that sealed it.
type Sealed struct {
	KeyID string
	Box   []byte // nonce ‖ ciphertext ‖ tag
}

// WrongKeyError: the value was sealed under another key than the one held.
type WrongKeyError struct{ Have, Want string }

func (e *WrongKeyError) Error() string {
	return fmt.Sprintf("sealed under key %s, but this process holds key %s (MIGRATOR_SEAL_KEY differs between the replicas or was rotated)",
		e.Want, e.Have)
}

// ErrCorrupt: the sealed value does not open under its key and place (cut
// short, altered, or copied from another place).
var ErrCorrupt = errors.New("sealed value does not open: altered, truncated or moved from another row")

// ParseKey reads a key as the environment holds it: standard or URL
// base64, padded or not, of exactly KeyBytes bytes. what names the
// variable in errors ("MIGRATOR_SEAL_KEY"); the error never holds the key.
func ParseKey(what, text string) (*Key, error) {
	text = strings.TrimSpace(text)
	if text == "" {
		return nil, fmt.Errorf("%s is empty", what)
	}
	var raw []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if raw, err = enc.DecodeString(text); err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%s is not base64 (want base64 of %d random bytes)", what, KeyBytes)
	}
	return NewKey(what, raw)
}

// NewKey makes a Key of raw, checked as ParseKey checks it.
func NewKey(what string, raw []byte) (*Key, error) {
	if err := checkKey(what, raw, KeyBytes); err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return &Key{aead: aead, id: keyID(raw), mac: derive(raw, macDomain)}, nil
}

const macDomain = "migrator-seal-mac/v1"

func derive(raw []byte, domain string) []byte {
	m := hmac.New(sha256.New, raw)
	m.Write([]byte(domain))
	return m.Sum(nil)
}

// MAC is HMAC-SHA256 of data under a key derived from the seal key for
// domain: a digest of what holds a customer's values (an API request
// with env values) that only a holder of the seal key can compute, so it
// may be stored beside the sealed values (a plain hash of a short value
// is guessed offline). Two domains never share a MAC.
func (k *Key) MAC(domain string, data []byte) []byte {
	m := hmac.New(sha256.New, derive(k.mac, domain))
	m.Write(data)
	return m.Sum(nil)
}

const keyIDDomain = "migrator-seal-key-id/v1"

func keyID(raw []byte) string {
	m := hmac.New(sha256.New, raw)
	m.Write([]byte(keyIDDomain))
	return hex.EncodeToString(m.Sum(nil)[:8])
}

// ID is the key's id, stored beside every value it seals.
func (k *Key) ID() string { return k.id }

// Seal seals plain for the place named by aad.
func (k *Key) Seal(plain []byte, aad string) (Sealed, error) {
	nonce := make([]byte, k.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return Sealed{}, fmt.Errorf("seal: random nonce: %w", err)
	}
	return Sealed{KeyID: k.id, Box: k.aead.Seal(nonce, nonce, plain, []byte(aad))}, nil
}

// Open opens s sealed for the place named by aad.
func (k *Key) Open(s Sealed, aad string) ([]byte, error) {
	if s.KeyID != k.id {
		return nil, &WrongKeyError{Have: k.id, Want: s.KeyID}
	}
	n := k.aead.NonceSize()
	if len(s.Box) < n+k.aead.Overhead() {
		return nil, ErrCorrupt
	}
	plain, err := k.aead.Open(nil, s.Box[:n], s.Box[n:], []byte(aad))
	if err != nil {
		return nil, ErrCorrupt
	}
	return plain, nil
}
