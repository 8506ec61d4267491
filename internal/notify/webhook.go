package notify

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Headers migrator sends. Every sink gets Idempotency-Key (the outbox
// row's key: the same on every retry of one notification); the webhook
// sink is signed: X-Migrator-Signature is "sha256=" and the hex
// HMAC-SHA256, keyed with the sink's secret, of the X-Migrator-Timestamp
// value (Unix seconds), a ".", and the raw body. A receiver recomputes it
// and refuses a timestamp more than a few minutes old (a replay).
const (
	HeaderIdempotencyKey = "Idempotency-Key"
	HeaderEvent          = "X-Migrator-Event"
	HeaderTimestamp      = "X-Migrator-Timestamp"
	HeaderSignature      = "X-Migrator-Signature"
)

// Sign returns the X-Migrator-Signature value of body sent at timestamp
// (Unix seconds) with secret.
func Sign(secret []byte, timestamp string, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(timestamp))
	mac.Write([]byte("."))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// Verify checks a webhook request's signature and that its timestamp is
// within maxAge of now (receivers may use it; the tests and the sandbox
// do).
func Verify(secret []byte, h http.Header, body []byte, now time.Time, maxAge time.Duration) error {
	ts := h.Get(HeaderTimestamp)
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("%s %q is not Unix seconds", HeaderTimestamp, ts)
	}
	if age := now.Sub(time.Unix(sec, 0)); age > maxAge || age < -maxAge {
		return fmt.Errorf("%s is %s away from now (at most %s): a replay?", HeaderTimestamp, age.Round(time.Second), maxAge)
	}
	if !hmac.Equal([]byte(h.Get(HeaderSignature)), []byte(Sign(secret, ts, body))) {
		return fmt.Errorf("%s does not match the body", HeaderSignature)
	}
	return nil
}
