package drainsecret

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func TestDeriveMatchesSpecAndGatewayRule(t *testing.T) {
	key := bytes.Repeat([]byte("k"), 32)
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

func TestCheckKey(t *testing.T) {
	err := CheckKey([]byte("short-secret-value"))
	if !errors.Is(err, ErrKeyTooShort) {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), "short-secret-value") {
		t.Fatal("error leaks the key")
	}
	if err := CheckKey(bytes.Repeat([]byte{1}, 32)); err != nil {
		t.Fatal(err)
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
