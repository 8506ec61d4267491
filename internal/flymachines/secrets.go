package flymachines

import (
	"context"
	"fmt"
)

// AppSecret is one app secret as the Machines API lists it: never its
// value. Digest is Fly's fingerprint of the value (opaque: equal values
// give equal digests; how it is computed is Fly's business).
type AppSecret struct {
	Name, Digest string
}

// SecretSet is what Fly answered to a secret write.
type SecretSet struct {
	Name, Digest string
	// Version is the app's secrets version after the write: an update with
	// min_secrets_version ≥ Version gives the new instance this secret.
	Version uint64
}

// ListAppSecrets lists the app's secrets (names and digests, never values)
// through fly-go's flaps client: GET /v1/apps/{app}/secrets.
func (c *Client) ListAppSecrets(ctx context.Context, app string) ([]AppSecret, error) {
	const kind = "fly.secrets_list"
	if err := checkName(kind, "app", app); err != nil {
		return nil, err
	}
	ctx, cancel := c.op(ctx, kind, app, "")
	defer cancel()
	list, err := c.flaps.ListAppSecrets(ctx, app, nil, false)
	if err != nil {
		return nil, c.apiError(kind, app, "", err)
	}
	out := make([]AppSecret, 0, len(list))
	for _, s := range list {
		out = append(out, AppSecret{Name: s.Name, Digest: s.Digest})
	}
	return out, nil
}

// SetAppSecret sets the app secret name to value through fly-go's flaps
// client (POST /v1/apps/{app}/secrets/{name}). Writing the same value again
// is harmless (it only makes a new version), so fly-go's retries of 502/503
// and network errors are kept. The value never appears in an error.
func (c *Client) SetAppSecret(ctx context.Context, app, name, value string) (SecretSet, error) {
	const kind = "fly.secret_set"
	if err := checkName(kind, "app", app); err != nil {
		return SecretSet{}, err
	}
	if err := checkName(kind, "secret name", name); err != nil {
		return SecretSet{}, err
	}
	if value == "" {
		return SecretSet{}, fmt.Errorf("%s %s: secret %s: empty value", kind, app, name)
	}
	ctx, cancel := c.op(ctx, kind, app, "")
	defer cancel()
	res, err := c.flaps.SetAppSecret(ctx, app, name, value)
	if err != nil {
		return SecretSet{}, c.apiError(kind, app, "", err, value)
	}
	return SecretSet{Name: res.Name, Digest: res.Digest, Version: res.Version}, nil
}
