package imagepin

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func TestResolvePinsTagToDigest(t *testing.T) {
	srv := httptest.NewServer(registry.New())
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(host+"/hermes-agent:v2", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	r := New(Config{Insecure: true})
	got, err := r.Resolve(context.Background(), host+"/hermes-agent:v2")
	if err != nil {
		t.Fatal(err)
	}
	if got != host+"/hermes-agent@"+want.String() {
		t.Fatalf("Resolve = %s, want %s@%s", got, host+"/hermes-agent", want)
	}
	// A pinned reference stays as it is.
	if again, err := r.Resolve(context.Background(), got); err != nil || again != got {
		t.Fatalf("Resolve(pinned) = %s, %v", again, err)
	}
	// Moving the tag does not change an earlier pin, and a new resolve sees the move.
	img2, _ := random.Image(256, 1)
	if err := remote.Write(ref, img2); err != nil {
		t.Fatal(err)
	}
	d2, _ := img2.Digest()
	if moved, _ := r.Resolve(context.Background(), host+"/hermes-agent:v2"); !strings.HasSuffix(moved, d2.String()) {
		t.Fatalf("after the tag moved, Resolve = %s", moved)
	}
}

func TestResolveErrorsAreClear(t *testing.T) {
	srv := httptest.NewServer(registry.New())
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	r := New(Config{Insecure: true, FlyToken: "fo1_secret-token"})
	_, err := r.Resolve(context.Background(), host+"/nothing:here")
	var re *ResolveError
	if !errors.As(err, &re) || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "nothing:here") {
		t.Fatalf("missing tag: %v", err)
	}
	for _, bad := range []string{"", "UPPER/Case:tag", "img:tag:extra", "reg.io/a b:c"} {
		_, err := r.Resolve(context.Background(), bad)
		var refErr *ReferenceError
		if !errors.As(err, &refErr) {
			t.Errorf("Resolve(%q) = %v, want a ReferenceError", bad, err)
		}
	}
}
