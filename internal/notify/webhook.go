package notify

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The webhook sink is signed as Standard Webhooks says
// (github.com/standard-webhooks/standard-webhooks, spec/standard-webhooks.md),
// so that a receiver verifies it with one of that project's libraries
// (or svix's, which implement the same scheme):
//
//	webhook-id:        the notification's idempotency key (the same on every retry)
//	webhook-timestamp: Unix seconds when this attempt was signed
//	webhook-signature: "v1,<base64 HMAC-SHA256 of id.timestamp.body>", one
//	                   per secret, space-separated (the current secret's first;
//	                   the previous one's while keys rotate)
//
// keyed with the secret's bytes: a secret is written "whsec_" and the
// standard base64 of at least 24 random bytes (the spec asks for 24 to
// 64), e.g. `echo "whsec_$(openssl rand -base64 32)"`.
//
// Every sink also gets Idempotency-Key (the same value as webhook-id).
// The headers of migrator's own scheme are still sent, deprecated, for
// one release: X-Migrator-Timestamp (Unix seconds) and
// X-Migrator-Signature, "sha256=" and the hex HMAC-SHA256 of the
// timestamp, ".", and the body, keyed with the secret exactly as
// configured (the whole "whsec_…" string).
const (
	HeaderIdempotencyKey   = "Idempotency-Key"
	HeaderWebhookID        = "webhook-id"
	HeaderWebhookTimestamp = "webhook-timestamp"
	HeaderWebhookSignature = "webhook-signature"
	HeaderEvent            = "X-Migrator-Event"

	// Deprecated: use HeaderWebhookTimestamp; sent until the next release.
	HeaderTimestamp = "X-Migrator-Timestamp"
	// Deprecated: use HeaderWebhookSignature (Verify); sent until the next
	// release.
	HeaderSignature = "X-Migrator-Signature"
)

// Webhook secrets.
const (
	webhookSecretPrefix = "whsec_"
	// MinWebhookSecretBytes is the shortest key accepted (Standard
	// Webhooks: between 24 and 64 bytes).
	MinWebhookSecretBytes = 24
)

// ParseWebhookSecret decodes a "whsec_<base64>" secret into its key. Its
// errors never quote the secret.
func ParseWebhookSecret(secret string) ([]byte, error) {
	b64, ok := strings.CutPrefix(strings.TrimSpace(secret), webhookSecretPrefix)
	if !ok {
		return nil, errors.New(`is not of the form whsec_<base64> (make one with: echo "whsec_$(openssl rand -base64 32)")`)
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, errors.New("is not whsec_ followed by standard base64")
	}
	if len(key) < MinWebhookSecretBytes {
		return nil, fmt.Errorf("is %d bytes, shorter than %d (make one with: echo \"whsec_$(openssl rand -base64 32)\")",
			len(key), MinWebhookSecretBytes)
	}
	return key, nil
}

// Sign returns the webhook-signature value of a message id sent at
// timestamp (Unix seconds) with body: "v1,<base64>" for each key, in
// order, separated by spaces.
func Sign(id string, timestamp int64, body []byte, keys ...[]byte) string {
	sigs := make([]string, 0, len(keys))
	for _, k := range keys {
		mac := hmac.New(sha256.New, k)
		mac.Write([]byte(id))
		mac.Write([]byte("."))
		mac.Write([]byte(strconv.FormatInt(timestamp, 10)))
		mac.Write([]byte("."))
		mac.Write(body)
		sigs = append(sigs, "v1,"+base64.StdEncoding.EncodeToString(mac.Sum(nil)))
	}
	return strings.Join(sigs, " ")
}

// SignLegacy returns the deprecated X-Migrator-Signature value of body
// sent at timestamp (Unix seconds), keyed with secret as configured.
func SignLegacy(secret []byte, timestamp string, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(timestamp))
	mac.Write([]byte("."))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// Verify checks a webhook request as a Standard Webhooks receiver does:
// one of its webhook-signature values is the v1 signature of its
// webhook-id, webhook-timestamp and body under secret ("whsec_…"), and the
// timestamp is within maxAge of now (an older one may be a replay). The
// sandbox's local sink uses it; receivers may use it or any Standard
// Webhooks library.
func Verify(secret string, h http.Header, body []byte, now time.Time, maxAge time.Duration) error {
	key, err := ParseWebhookSecret(secret)
	if err != nil {
		return fmt.Errorf("webhook secret %w", err)
	}
	id, ts, sig := h.Get(HeaderWebhookID), h.Get(HeaderWebhookTimestamp), h.Get(HeaderWebhookSignature)
	if id == "" || ts == "" || sig == "" {
		return fmt.Errorf("missing %s, %s or %s", HeaderWebhookID, HeaderWebhookTimestamp, HeaderWebhookSignature)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("%s %q is not Unix seconds", HeaderWebhookTimestamp, ts)
	}
	if age := now.Sub(time.Unix(sec, 0)); age > maxAge || age < -maxAge {
		return fmt.Errorf("%s is %s away from now (at most %s): a replay?", HeaderWebhookTimestamp, age.Round(time.Second), maxAge)
	}
	want := Sign(id, sec, body, key)
	for _, s := range strings.Fields(sig) {
		if hmac.Equal([]byte(s), []byte(want)) {
			return nil
		}
	}
	return fmt.Errorf("no %s value matches the body", HeaderWebhookSignature)
}
