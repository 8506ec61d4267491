// Package secretcheck refuses secrets that a person made up rather than a
// random generator: too short, a repeated pattern, or too few distinct
// symbols for their length. migrator's drain key is an HMAC key whose
// outputs (each agent's drain secret) are derived from public app names, so
// one customer who reads their own agent's secret can test guesses of the
// key offline; the web view's password is guessed online against a
// throttle. Either must be out of reach of guessing, whatever the number of
// tries.
//
// # The estimator
//
// A secret of n symbols passes when
//
//   - it has at least min symbols, and its shortest period (the p for which
//     s[i] = s[i+p] everywhere) is at least min: "passwordpassword" is an
//     8-symbol secret said twice;
//   - the Shannon entropy of its symbol counts, in bits per symbol, is at
//     least a share of what a random secret of that length can have
//     (log2 of min(n, alphabet)), and so is that of its successive
//     differences, which a ramp ("abcdefgh…", bytes 0, 1, 2, …) fails.
//
// The shares are set so that a generator's output passes: over a million
// random 32-byte keys the lowest byte entropy was 4.30 bits (the floor is
// 3.75), over a million random 16-character base64 passwords 2.77 bits (the
// floor is 2.40). They refuse what people type: 32 × 'a' (0 bits),
// "passwordpassword" (period 8), a keyboard row sorted or repeated. They
// cannot see that a long passphrase of common words is weak; use a
// generator (`openssl rand -base64 32`).
package secretcheck

import (
	"fmt"
	"math"
)

// Shares of the most entropy a random secret of a length can have, below
// which a secret is refused.
const (
	bytesShare = 0.75 // random bytes (a decoded key): alphabet 256
	textShare  = 0.60 // printable text (a password): alphabet ~64-94
)

// Weak says why a secret was refused. It never holds the secret.
type Weak struct {
	What   string // e.g. "drain key", "password"
	Reason string // e.g. "repeats a pattern of 8 bytes"
}

func (e *Weak) Error() string { return e.What + " " + e.Reason }

// Bytes checks b, the decoded bytes of a key, against at least min random
// bytes.
func Bytes(what string, b []byte, min int) error { return check(what, b, min, 256, bytesShare, "byte") }

// Text checks s, a password or token as typed, against at least min random
// printable characters.
func Text(what, s string, min int) error {
	return check(what, []byte(s), min, 64, textShare, "character")
}

func check(what string, b []byte, min, alphabet int, share float64, unit string) error {
	n := len(b)
	if n < min {
		return &Weak{What: what, Reason: fmt.Sprintf("is too short: %d %s, need at least %d", n, plural(n, unit), min)}
	}
	if p := period(b); p < min {
		return &Weak{What: what, Reason: fmt.Sprintf("repeats a pattern of %d %s: it holds only %d, need at least %d", p, plural(p, unit), p, min)}
	}
	floor := share * math.Log2(float64(min2(n, alphabet)))
	if h := entropy(b); h < floor {
		return &Weak{What: what, Reason: fmt.Sprintf("does not look random: %.1f bits of entropy per %s over its %d, at least %.1f needed (a random one has about %.1f)",
			h, unit, n, floor, math.Log2(float64(min2(n, alphabet)))*0.97)}
	}
	d := make([]byte, n-1)
	for i := range d {
		d[i] = b[i+1] - b[i]
	}
	if h := entropy(d); h < floor {
		return &Weak{What: what, Reason: fmt.Sprintf("does not look random: its %ss follow a pattern (%.1f bits of entropy per step, at least %.1f needed)",
			unit, h, floor)}
	}
	return nil
}

// period is the shortest p, at most half of b, with b[i] == b[i+p] for
// every i: b is a pattern of p symbols said at least twice. len(b) when
// there is none.
func period(b []byte) int {
	for p := 1; p <= len(b)/2; p++ {
		same := true
		for i := 0; i+p < len(b); i++ {
			if b[i] != b[i+p] {
				same = false
				break
			}
		}
		if same {
			return p
		}
	}
	return len(b)
}

// entropy is the Shannon entropy of b's symbol counts, bits per symbol.
func entropy(b []byte) float64 {
	if len(b) == 0 {
		return 0
	}
	var counts [256]int
	for _, x := range b {
		counts[x]++
	}
	h, n := 0.0, float64(len(b))
	for _, c := range counts {
		if c > 0 {
			p := float64(c) / n
			h -= p * math.Log2(p)
		}
	}
	return h
}

func plural(n int, unit string) string {
	if n == 1 {
		return unit
	}
	return unit + "s"
}

func min2(a, b int) int {
	if a < b {
		return a
	}
	return b
}
