package seal

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func newKey(t *testing.T) (*Key, string) {
	t.Helper()
	raw := make([]byte, KeyBytes)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	text := base64.StdEncoding.EncodeToString(raw)
	k, err := ParseKey("MIGRATOR_SEAL_KEY", text)
	if err != nil {
		t.Fatal(err)
	}
	return k, text
}

func TestSealOpens(t *testing.T) {
	k, _ := newKey(t)
	const value = "123456:ABC-telegram-bot-token"
	s1, err := k.Seal([]byte(value), "run/1/env/TELEGRAM_BOT_TOKEN")
	if err != nil {
		t.Fatal(err)
	}
	s2, err := k.Seal([]byte(value), "run/1/env/TELEGRAM_BOT_TOKEN")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(s1.Box, s2.Box) {
		t.Fatal("two seals of one value are equal: the nonce is not fresh")
	}
	if bytes.Contains(s1.Box, []byte(value)) || bytes.Contains(s1.Box, []byte("telegram")) {
		t.Fatal("the sealed box holds the value in the clear")
	}
	if s1.KeyID != k.ID() || len(s1.KeyID) != 16 {
		t.Fatalf("key id %q, want the key's 16-hex id %q", s1.KeyID, k.ID())
	}
	got, err := k.Open(s1, "run/1/env/TELEGRAM_BOT_TOKEN")
	if err != nil || string(got) != value {
		t.Fatalf("open: %q, %v", got, err)
	}
}

func TestOpenRefuses(t *testing.T) {
	k, _ := newKey(t)
	other, _ := newKey(t)
	const value = "s3cr3t-value-of-a-customer"
	s, err := k.Seal([]byte(value), "run/1/env/A")
	if err != nil {
		t.Fatal(err)
	}
	// Another key: a clear error naming both ids, never garbage.
	_, err = other.Open(s, "run/1/env/A")
	var wk *WrongKeyError
	if !errors.As(err, &wk) || wk.Want != k.ID() || wk.Have != other.ID() || strings.Contains(err.Error(), value) {
		t.Fatalf("other key: %v", err)
	}
	// Another place: the value was moved to another row.
	if _, err := k.Open(s, "run/2/env/A"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("moved: %v", err)
	}
	// Altered, or cut short.
	bad := Sealed{KeyID: s.KeyID, Box: bytes.Clone(s.Box)}
	bad.Box[len(bad.Box)-1] ^= 1
	if _, err := k.Open(bad, "run/1/env/A"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("altered: %v", err)
	}
	if _, err := k.Open(Sealed{KeyID: s.KeyID, Box: s.Box[:5]}, "run/1/env/A"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("short: %v", err)
	}
}

func TestParseKey(t *testing.T) {
	k, text := newKey(t)
	// Every base64 spelling of the same bytes is the same key.
	raw, _ := base64.StdEncoding.DecodeString(text)
	for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		k2, err := ParseKey("K", " "+enc.EncodeToString(raw)+"\n")
		if err != nil || k2.ID() != k.ID() {
			t.Fatalf("%v: %v", enc, err)
		}
	}
	short := base64.StdEncoding.EncodeToString(raw[:16])
	for _, tc := range []struct{ in, want string }{
		{"", "MIGRATOR_SEAL_KEY is empty"},
		{"not base64 !!", "MIGRATOR_SEAL_KEY is not base64"},
		{short, "MIGRATOR_SEAL_KEY is 16 bytes, want exactly 32"},
		// 32 bytes a person made up, not a generator: refused (secretcheck).
		{base64.StdEncoding.EncodeToString([]byte(strings.Repeat("a", 32))), "MIGRATOR_SEAL_KEY "},
		{base64.StdEncoding.EncodeToString([]byte(strings.Repeat("hunter2!", 4))), "MIGRATOR_SEAL_KEY repeats a pattern"},
	} {
		_, err := ParseKey("MIGRATOR_SEAL_KEY", tc.in)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v, want %q", tc.in, err, tc.want)
		}
		if err != nil && tc.in != "" && strings.Contains(err.Error(), tc.in) {
			t.Errorf("%q: the error holds the key", tc.in)
		}
	}
}

func TestMACIsKeyedAndPerDomain(t *testing.T) {
	raw := make([]byte, KeyBytes)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	k, err := NewKey("k", raw)
	if err != nil {
		t.Fatal(err)
	}
	raw2 := make([]byte, KeyBytes)
	if _, err := rand.Read(raw2); err != nil {
		t.Fatal(err)
	}
	k2, err := NewKey("k2", raw2)
	if err != nil {
		t.Fatal(err)
	}
	a, b := k.MAC("d", []byte("x")), k.MAC("d", []byte("x"))
	if !bytes.Equal(a, b) || len(a) != 32 {
		t.Fatalf("MAC not stable: %x %x", a, b)
	}
	if bytes.Equal(a, k.MAC("e", []byte("x"))) || bytes.Equal(a, k.MAC("d", []byte("y"))) || bytes.Equal(a, k2.MAC("d", []byte("x"))) {
		t.Fatal("MAC does not depend on the domain, the data and the key")
	}
}
