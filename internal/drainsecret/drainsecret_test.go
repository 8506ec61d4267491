package drainsecret

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func TestDeriveMatchesSpecAndGatewayRule(t *testing.T) {
	key := []byte("QQ/VSbyvwff621cArdct9Dyb6XvDQvvUQkbVirYf3E7b")
	got := Derive(key, "hermes-agent-1")
	m := hmac.New(sha256.New, key)
	m.Write([]byte("hermes-drain-secret/v1:hermes-agent-1"))
	if want := base64.RawURLEncoding.EncodeToString(m.Sum(nil)); got != want {
		t.Fatalf("Derive = %q, want %q", got, want)
	}
	if len(got) != 43 {
		t.Fatalf("len = %d, want 43", len(got))
	}
	if err := CheckSecret(got); err != nil {
		t.Fatal(err)
	}
	if Derive(key, "hermes-agent-2") == got {
		t.Fatal("two apps share a secret")
	}
}

// A key must be base64 of at least 32 random bytes: refused in one line
// that never shows it and says how to make one; accepted as generators
// make them, in any base64 alphabet, padded or not.
func TestCheckKey(t *testing.T) {
	b64 := base64.StdEncoding.EncodeToString
	ramp := make([]byte, 32)
	for i := range ramp {
		ramp[i] = byte(i)
	}
	for _, tc := range []struct {
		name, key string
		is        error
		want      string
	}{
		{"not base64", "my drain key is a sentence, not base64!", ErrKeyNotBase64, "is not base64"},
		{"empty", "", ErrKeyNotBase64, "is not base64"},
		{"short", "short-secret-value", ErrKeyTooShort, "13 bytes once decoded, need at least 32"},
		{"32 × a", b64(bytes.Repeat([]byte("a"), 32)), nil, "repeats a pattern of 1 byte"},
		{"43 × a (base64 text of one letter)", strings.Repeat("a", 43), nil, "repeats a pattern of 3 bytes"},
		{"password × 4", b64([]byte(strings.Repeat("password", 4))), nil, "repeats a pattern of 8 bytes"},
		{"a ramp", b64(ramp), nil, "follow a pattern"},
	} {
		err := CheckKey([]byte(tc.key))
		switch {
		case err == nil:
			t.Errorf("%s: accepted", tc.name)
		case tc.is != nil && !errors.Is(err, tc.is), !strings.Contains(err.Error(), tc.want):
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		case tc.key != "" && strings.Contains(err.Error(), tc.key), strings.Contains(err.Error(), "\n"):
			t.Errorf("%s: the error shows the key or is not one line: %v", tc.name, err)
		case !strings.Contains(err.Error(), "openssl rand -base64 32"):
			t.Errorf("%s: the error does not say how to make a key: %v", tc.name, err)
		}
	}
	for i := range 200 {
		raw := make([]byte, 32+i%17)
		_, _ = rand.Read(raw)
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			if err := CheckKey([]byte(enc.EncodeToString(raw))); err != nil {
				t.Fatalf("a random %d-byte key was refused: %v", len(raw), err)
			}
		}
	}
}

func TestCheckSecret(t *testing.T) {
	for _, s := range []string{strings.Repeat("a", 43), "abc", strings.Repeat("abcdefghijklmno", 3)} {
		if err := CheckSecret(s); err == nil {
			t.Errorf("CheckSecret(%d chars) = nil, want error", len(s))
		} else if strings.Contains(err.Error(), s) {
			t.Error("error leaks the secret")
		}
	}
}

func TestKeyID(t *testing.T) {
	k1 := []byte("0123456789abcdef0123456789abcdef-one")
	k2 := []byte("0123456789abcdef0123456789abcdef-two")
	id := KeyID(k1)
	if len(id) != 16 || id != KeyID(k1) || id == KeyID(k2) {
		t.Fatalf("KeyID %q / %q", id, KeyID(k2))
	}
	for _, app := range []string{"", "hermes-agent-1"} {
		if s := Derive(k1, app); strings.Contains(s, id) || strings.Contains(id, s[:16]) {
			t.Errorf("key id overlaps the secret of %q", app)
		}
	}
}
