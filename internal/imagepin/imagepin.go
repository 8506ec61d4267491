// Package imagepin resolves an image tag to its digest once, when a run is
// created, so every machine of the run gets the same bytes even if the tag
// moves while the run is in flight.
package imagepin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Config configures a Resolver.
type Config struct {
	// FlyToken authenticates to registry.fly.io (user "x", the token as
	// password). Other registries use anonymous access.
	FlyToken string
	// Timeout bounds one resolution. Default 30s.
	Timeout time.Duration
	// Transport is the HTTP transport (tests). Default: a clone of
	// http.DefaultTransport without a proxy.
	Transport http.RoundTripper
	// Insecure allows plain-HTTP registries (tests, local registries).
	Insecure bool
	// FlyRegistryURL, when set, is where requests for registry.fly.io go
	// instead ("http://127.0.0.1:PORT": the fleet simulator's registry).
	// Simulator and tests only; the reference and its pin keep naming
	// registry.fly.io, which is what the machines are given.
	FlyRegistryURL string
}

// flyRegistry is Fly's registry host; FLY_API_TOKEN authenticates to it as
// the password of user "x" (what `fly auth docker` configures).
const flyRegistry = "registry.fly.io"

// Resolver pins image references to digests.
type Resolver struct{ cfg Config }

// New returns a Resolver.
func New(cfg Config) *Resolver {
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Transport == nil {
		// The Fly token authenticates to registry.fly.io: no proxy from
		// the environment.
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.Proxy = nil
		cfg.Transport = t
	}
	if cfg.FlyRegistryURL != "" {
		cfg.Transport = redirectHost{host: flyRegistry, to: cfg.FlyRegistryURL, next: cfg.Transport}
	}
	return &Resolver{cfg: cfg}
}

// redirectHost sends requests for host to the base URL to instead.
type redirectHost struct {
	host, to string
	next     http.RoundTripper
}

func (t redirectHost) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Host != t.host {
		return t.next.RoundTrip(req)
	}
	to, err := url.Parse(t.to)
	if err != nil {
		return nil, fmt.Errorf("registry URL %q: %w", t.to, err)
	}
	r := req.Clone(req.Context())
	r.URL.Scheme, r.URL.Host, r.Host = to.Scheme, to.Host, to.Host
	return t.next.RoundTrip(r)
}

// ReferenceError is a malformed image reference.
type ReferenceError struct {
	Ref    string
	Reason string
}

func (e *ReferenceError) Error() string {
	return fmt.Sprintf("image reference %q is malformed: %s", e.Ref, e.Reason)
}

// Parse checks that ref is a well-formed image reference and returns it
// fully qualified where it has a registry host.
func Parse(ref string, insecure bool) (name.Reference, error) {
	if strings.TrimSpace(ref) == "" {
		return nil, &ReferenceError{Ref: ref, Reason: "empty"}
	}
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, append(opts, name.StrictValidation)...)
	if err != nil {
		// StrictValidation wants an explicit tag or digest; try again with
		// the default tag before giving up.
		r, err = name.ParseReference(ref, opts...)
		if err != nil {
			return nil, &ReferenceError{Ref: ref, Reason: oneLine(err.Error())}
		}
	}
	return r, nil
}

// Resolve returns ref pinned to its digest ("repo@sha256:…"). A reference
// that already names a digest is returned as it is, without a network call.
func (r *Resolver) Resolve(ctx context.Context, ref string) (string, error) {
	parsed, err := Parse(ref, r.cfg.Insecure)
	if err != nil {
		return "", err
	}
	if d, ok := parsed.(name.Digest); ok {
		return d.String(), nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	auth := authn.Anonymous
	if r.cfg.FlyToken != "" && parsed.Context().RegistryStr() == flyRegistry {
		auth = &authn.Basic{Username: "x", Password: r.cfg.FlyToken}
	}
	desc, err := remote.Head(parsed, remote.WithContext(ctx), remote.WithAuth(auth), remote.WithTransport(r.cfg.Transport))
	if err != nil {
		return "", &ResolveError{Ref: ref, Err: err, token: r.cfg.FlyToken}
	}
	return parsed.Context().Digest(desc.Digest.String()).String(), nil
}

// ResolveError is a failed resolution (not found, unauthorized, unreachable).
type ResolveError struct {
	Ref   string
	Err   error
	token string
}

func (e *ResolveError) Error() string {
	msg := oneLine(e.Err.Error())
	if e.token != "" {
		msg = strings.ReplaceAll(msg, e.token, "[redacted]")
	}
	if errors.Is(e.Err, context.DeadlineExceeded) {
		msg = "timed out"
	}
	return fmt.Sprintf("resolve image %s to a digest: %s", e.Ref, msg)
}

func (e *ResolveError) Unwrap() error { return e.Err }

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
