package imagepin

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

// noNetwork fails the test if a request is made.
type noNetwork struct{ t *testing.T }

func (n noNetwork) RoundTrip(r *http.Request) (*http.Response, error) {
	n.t.Errorf("unexpected request %s %s", r.Method, r.URL.Redacted())
	return nil, errors.New("no network in this test")
}

// FuzzParse: no reference panics Parse; a rejection is a *ReferenceError on
// one line; an accepted reference names a registry and a repository, prints
// as a reference that parses back to itself, and — when it pins a digest —
// resolves to itself without a network call.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"registry.fly.io/hermes-agent:v2", "registry.fly.io/hermes-agent", "hermes-agent:v2", "ubuntu",
		"registry.fly.io/hermes-agent@sha256:" + strings.Repeat("ab", 32),
		"registry.fly.io/hermes-agent:v2@sha256:" + strings.Repeat("0f", 32),
		"localhost:5000/a/b/c:latest", "[::1]:5000/x:y", "127.0.0.1:5000/x", "REGISTRY.FLY.IO/Hermes:V2",
		"", " ", "a:b:c", "x@sha256:short", "registry.fly.io/hermes-agent:v2\n", "registry.fly.io//x", ":tag", "@sha256:",
		strings.Repeat("a", 300) + ":" + strings.Repeat("b", 200),
	} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, ref string, insecure bool) {
		r, err := Parse(ref, insecure)
		if err != nil {
			var re *ReferenceError
			if !errors.As(err, &re) {
				t.Fatalf("Parse(%q) error %T, want *ReferenceError: %v", ref, err, err)
			}
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("Parse(%q) error is not one line: %q", ref, err)
			}
			return
		}
		if r.Context().RegistryStr() == "" || r.Context().RepositoryStr() == "" {
			t.Fatalf("Parse(%q) = %q: no registry or repository", ref, r)
		}
		again, err := Parse(r.String(), insecure)
		if err != nil || again.String() != r.String() {
			t.Fatalf("Parse(%q) = %q, which parses to %v, %v", ref, r, again, err)
		}
		if _, ok := r.(name.Digest); ok {
			got, err := New(Config{Insecure: insecure, Transport: noNetwork{t}}).Resolve(context.Background(), ref)
			if err != nil || got != r.String() {
				t.Fatalf("Resolve(%q) = %q, %v; want %q without a network call", ref, got, err, r)
			}
		}
	})
}
