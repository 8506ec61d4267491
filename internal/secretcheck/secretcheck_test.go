package secretcheck

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"
)

func TestBytes(t *testing.T) {
	ramp := make([]byte, 32)
	for i := range ramp {
		ramp[i] = byte(i)
	}
	half := make([]byte, 16)
	_, _ = rand.Read(half)
	for _, tc := range []struct {
		name string
		b    []byte
		want string // "" accepted
	}{
		{"32 × a", bytes.Repeat([]byte("a"), 32), "repeats a pattern of 1 byte"},
		{"short", make([]byte, 20), "too short: 20 bytes"},
		{"a word said four times", []byte(strings.Repeat("password", 4)), "repeats a pattern of 8"},
		{"random 16 bytes said twice", append(append([]byte{}, half...), half...), "repeats a pattern of 16"},
		{"a ramp", ramp, "follow a pattern"},
		{"few symbols", []byte("abababababababababababababababac"), "does not look random"},
	} {
		err := Bytes("drain key", tc.b, 32)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "drain key ") {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	// What generators make passes: a thousand random keys, and hex text
	// decoded as base64 (`openssl rand -hex 32` given as the key).
	for range 1000 {
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		if err := Bytes("drain key", b, 32); err != nil {
			t.Fatalf("a random key was refused: %v", err)
		}
		hex := []byte(strings.Repeat("0", 0))
		for _, x := range b {
			hex = append(hex, "0123456789abcdef"[x>>4], "0123456789abcdef"[x&15])
		}
		dec, err := base64.StdEncoding.DecodeString(string(hex))
		if err != nil {
			t.Fatal(err)
		}
		if err := Bytes("drain key", dec, 32); err != nil {
			t.Fatalf("a hex key read as base64 was refused: %v", err)
		}
	}
}

func TestText(t *testing.T) {
	for _, tc := range []struct{ s, want string }{
		{"passwordpassword", "repeats a pattern of 8 characters"},
		{"abcdefghijklmnopqrst", "follow a pattern"},
		{"aaaaaaaaaaaaaaab", "does not look random"},
		{"abc123", "too short"},
	} {
		if err := Text("the password", tc.s, 16); err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), tc.s) {
			t.Errorf("%q: %v, want %q (and never the password)", tc.s, err, tc.want)
		}
	}
	for range 1000 {
		b := make([]byte, 12)
		_, _ = rand.Read(b)
		if err := Text("the password", base64.StdEncoding.EncodeToString(b), 16); err != nil {
			t.Fatalf("a random 16-character password was refused: %v", err)
		}
	}
}
