package flymachines

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	genq "github.com/Khan/genqlient/graphql"
	fly "github.com/superfly/fly-go"
	"github.com/superfly/fly-go/tokens"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/hermes-cloud/migrator/internal/callrec"
)

// Fly releases. `fly deploy` records a release for what it deploys and
// writes its id and version into each machine's config.metadata
// (fly_release_id, fly_release_version: flyctl's setMachineReleaseData,
// internal/command/deploy/machines_launchinput.go); `fly releases` lists
// them and `fly scale count` clones new machines from the newest one's
// image (internal/command/scale/count_machines.go). Releases live in
// Fly's GraphQL API (api.fly.io/graphql), not the Machines API. This
// sends fly-go v0.9.3's own generated operations (genqlient.go
// CreateRelease, UpdateRelease, LatestImage) through genqlient, with
// fly-go's Transport adding the token (tokens.GraphQLHeader), but without
// fly-go's rehttp layer: a mutation is sent once (a re-sent createRelease
// would record a second release).
//
// flyctl until Nov 2025 called CreateRelease with the app's name as appId,
// platformVersion "machines", its strategy upper-cased (ROLLING by
// default) and its fly.toml as definition; then UpdateRelease "running",
// and at the end "complete", "failed" or "interrupted"
// (internal/command/deploy/machines_deploymachinesapp.go). Since then it
// uses api.fly.io's REST endpoints (internal/uiex/releases.go); fly-go
// still carries the GraphQL ones.

// The config.metadata keys of the release a machine was deployed with
// (flyctl's setMachineReleaseData).
const (
	MetadataReleaseID      = fly.MachineConfigMetadataKeyFlyReleaseId
	MetadataReleaseVersion = fly.MachineConfigMetadataKeyFlyReleaseVersion
)

// Release statuses, as flyctl sets them.
const (
	ReleaseRunning     = "running"
	ReleaseComplete    = "complete"
	ReleaseFailed      = "failed"
	ReleaseInterrupted = "interrupted"
)

// Release is a Fly release of an app.
type Release struct {
	ID      string
	Version int
}

// ReleasesUnauthorizedError: Fly's GraphQL API refused the token (HTTP 401
// or 403, or a GraphQL error whose extensions.code says so). The token's
// scope does not cover releases; nothing else is wrong.
type ReleasesUnauthorizedError struct {
	Op, App string
	Msg     string
}

func (e *ReleasesUnauthorizedError) Error() string {
	return fmt.Sprintf("%s %s: Fly's GraphQL API refused the token: %s", e.Op, e.App, e.Msg)
}

// Transient is false: the same token will be refused again.
func (e *ReleasesUnauthorizedError) Transient() bool { return false }

var _ error = (*ReleasesUnauthorizedError)(nil)

// unauthorizedCodes are GraphQL extensions.code values that mean the
// token lacks the scope. Which one Fly sends is not in the sources read
// (flyctl's tests look for the text "Not authorized"); these are the
// common ones.
var unauthorizedCodes = map[string]bool{"UNAUTHORIZED": true, "UNAUTHENTICATED": true, "FORBIDDEN": true, "NOT_AUTHORIZED": true}

// graphql is the client of Fly's GraphQL API, made on first use.
func (c *Client) graphql() genq.Client {
	c.gqlOnce.Do(func() {
		rt := &callrec.Transport{Base: c.cfg.Transport, RequestIDHeaders: []string{"Fly-Request-Id"}, Observe: c.cfg.Observe}
		hc := &http.Client{Transport: &fly.Transport{UnderlyingTransport: rt, Tokens: tokens.Parse(c.cfg.Token),
			UserAgent: c.cfg.UserAgent}}
		c.gql = genq.NewClient(c.cfg.APIBaseURL+"/graphql", hc)
	})
	return c.gql
}

// CreateRelease records a release of app for image (fly-go's
// CreateRelease, as flyctl's deploy sent it): the Fly API then lists it
// under `fly releases`, and UpdateRelease moves its status on.
func (c *Client) CreateRelease(ctx context.Context, app, image string) (Release, error) {
	const kind = "graphql.create_release"
	if err := checkName(kind, "app", app); err != nil {
		return Release{}, err
	}
	ctx, cancel := c.op(ctx, kind, app, "")
	defer cancel()
	resp, err := fly.CreateRelease(ctx, c.graphql(), fly.CreateReleaseInput{
		AppId:           app,
		Image:           image,
		PlatformVersion: "machines",
		Strategy:        fly.DeploymentStrategyRolling,
		// flyctl sends its fly.toml; migrator has none: what it deploys
		// is the image, in fly.toml's [build] image form.
		Definition: map[string]any{"app": app, "build": map[string]any{"image": image}},
	})
	if err != nil {
		return Release{}, c.gqlError(kind, app, err)
	}
	r := resp.CreateRelease.Release
	if r.Id == "" {
		return Release{}, &APIError{Op: kind, App: app, Status: http.StatusOK, Msg: "createRelease answered no release id"}
	}
	return Release{ID: r.Id, Version: r.Version}, nil
}

// UpdateRelease sets release id's status (ReleaseRunning, …); errText,
// when not empty, is recorded in its metadata as flyctl records a failed
// deploy's error (post_deployment_info.error).
func (c *Client) UpdateRelease(ctx context.Context, app, id, status, errText string) error {
	const kind = "graphql.update_release"
	ctx, cancel := c.op(ctx, kind, app, "")
	defer cancel()
	in := fly.UpdateReleaseInput{ReleaseId: id, Status: status}
	if errText != "" {
		in.Metadata = &fly.ReleaseMetadata{PostDeploymentInfo: fly.PostDeploymentInfo{Error: errText}}
	}
	if _, err := fly.UpdateRelease(ctx, c.graphql(), in); err != nil {
		return c.gqlError(kind, app, err)
	}
	return nil
}

// CurrentRelease reads app's newest release (fly-go's LatestImage query),
// without changing anything: `fleet check` uses it to tell whether the
// token may use Fly's GraphQL API at all. ok=false: the app has none.
func (c *Client) CurrentRelease(ctx context.Context, app string) (Release, bool, error) {
	const kind = "graphql.current_release"
	if err := checkName(kind, "app", app); err != nil {
		return Release{}, false, err
	}
	ctx, cancel := c.op(ctx, kind, app, "")
	defer cancel()
	resp, err := fly.LatestImage(ctx, c.graphql(), app)
	if err != nil {
		return Release{}, false, c.gqlError(kind, app, err)
	}
	r := resp.App.CurrentReleaseUnprocessed
	return Release{ID: r.Id, Version: r.Version}, r.Id != "", nil
}

// gqlError classifies a GraphQL call's failure: refused token →
// *ReleasesUnauthorizedError; no answer, 429 or 5xx → a transient
// *APIError; anything else (a GraphQL error) → a permanent *APIError. The
// server's text is shortened and scrubbed of the token.
func (c *Client) gqlError(op, app string, err error) error {
	var he *genq.HTTPError
	var list gqlerror.List
	var ue *url.Error
	e := &APIError{Op: op, App: app, Err: err}
	switch {
	case errors.As(err, &he):
		e.Status = he.StatusCode
		e.Msg = c.scrub(gqlMessages(he.Response.Errors))
		if e.Msg == "" {
			e.Msg = http.StatusText(he.StatusCode)
		}
		if he.StatusCode == http.StatusUnauthorized || he.StatusCode == http.StatusForbidden {
			return &ReleasesUnauthorizedError{Op: op, App: app, Msg: "HTTP " + strconv.Itoa(he.StatusCode) + ": " + e.Msg}
		}
	case errors.As(err, &list):
		e.Status = http.StatusOK
		e.Msg = c.scrub(gqlMessages(list))
		for _, ge := range list {
			if code, _ := ge.Extensions["code"].(string); unauthorizedCodes[code] {
				return &ReleasesUnauthorizedError{Op: op, App: app, Msg: e.Msg + " (" + code + ")"}
			}
		}
	case errors.Is(err, context.DeadlineExceeded):
		e.Msg, e.temporary = "deadline exceeded", true
	case errors.Is(err, context.Canceled):
		e.Msg = "canceled"
	case errors.As(err, &ue):
		e.Msg, e.temporary = c.scrub(describe(ue.Err)), true
	default:
		e.Msg = c.scrub(describe(err))
	}
	return e
}

func gqlMessages(list gqlerror.List) string {
	out := ""
	for i, ge := range list {
		if ge == nil {
			continue
		}
		if i > 0 {
			out += "; "
		}
		out += ge.Message
	}
	return out
}
