package flymachines

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	genq "github.com/Khan/genqlient/graphql"
	fly "github.com/superfly/fly-go"
	"github.com/superfly/fly-go/flaps"
	"github.com/superfly/fly-go/tokens"

	"github.com/hermes-cloud/migrator/internal/callrec"
	"github.com/hermes-cloud/migrator/internal/clock"
)

// Client is the Machines API adapter. Safe for concurrent use.
type Client struct {
	cfg   Config
	flaps *flaps.Client
	// direct sends the mutating calls once, without fly-go's retries: an
	// ambiguous update must be re-read before it is repeated, and fly-go's
	// AcquireLease spins for a minute on 409.
	direct  *http.Client
	secrets []string
	clk     clock.Clock
	log     *slog.Logger
	// gql is Fly's GraphQL API (release.go), made on first use.
	gqlOnce sync.Once
	gql     genq.Client
}

// App is a Fly app of an organization.
type App struct{ Name, Org string }

// Machine is what the orchestrator needs to know of a Fly machine.
type Machine struct {
	App, ID, Name, Region, State string
	InstanceID                   string // changes with every config update
	PrivateIP                    string
	Image                        string            // config.image
	Labels                       map[string]string // config.metadata
	ChecksConfigured             int               // top-level checks + service checks
	// HostStatus is "ok", "unknown" or "unreachable" (fly-go's
	// HostStatus). When it is not ok, Fly shows only an incomplete config
	// (Incomplete) and calls on the machine fail: flyctl neither leases
	// nor updates such machines (internal/machine/lease.go, deploy/plan.go).
	HostStatus string
	Incomplete bool
	UpdatedAt  time.Time
	// ImageRef is what runs: the image the instance was created from as
	// Fly resolved it (image_ref). config.image is only the string that
	// was sent, often a tag that may have moved since.
	ImageRef ImageRef
	// ReleaseCommand and Console are fly-go's IsReleaseCommandMachine and
	// IsFlyAppsConsole: machines of the app's listing that are not the
	// app (flaps.ListActive drops them, and flyctl never updates them).
	ReleaseCommand, Console bool
	// Containers are config.containers (multi-container machines), each
	// with its own image; config.image may then be empty.
	Containers []Container
	// Events are the machine's recent events as GET machine shows them,
	// newest first (absent from list summaries).
	Events []Event
	// SuspendBlocked is why Fly would not suspend the machine as
	// configured ("" when it would; actions.go).
	SuspendBlocked string
	// Env is config.env: a customer's values, which never print (Env).
	Env Env
}

// ImageRef is a machine's image_ref: registry, repository, tag, digest.
type ImageRef struct{ Registry, Repository, Tag, Digest string }

// Full is fly-go's FullImageRef: "registry/repository:tag@digest" (without
// the parts Fly did not report), what `fly image update` starts from.
func (r ImageRef) Full() string {
	m := fly.Machine{ImageRef: fly.MachineImageRef{Registry: r.Registry, Repository: r.Repository, Tag: r.Tag, Digest: r.Digest}}
	return m.FullImageRef()
}

// Container is one of config.containers.
type Container struct{ Name, Image string }

// ImageOf is the image an update with WithContainer(container) would
// change: config.image, or the named container's; a machine with
// containers and no container named (or one it does not have) is a
// *ContainersError.
func (m Machine) ImageOf(container string) (string, error) {
	cfg := &fly.MachineConfig{Image: m.Image}
	for _, c := range m.Containers {
		cfg.Containers = append(cfg.Containers, &fly.ContainerConfig{Name: c.Name, Image: c.Image})
	}
	return imageIn(m.App, m.ID, cfg, container)
}

// HostOK reports whether the machine's host is reachable (an empty status
// is read as ok, as Fly omits it in some answers).
func (m Machine) HostOK() bool {
	return m.HostStatus == "" || m.HostStatus == string(fly.HostStatusOk)
}

// New makes a Client. It makes no request.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var base *url.URL
	if cfg.BaseURL != "" {
		base, _ = url.Parse(cfg.BaseURL) // validated
	}
	rt := newTransport(&cfg, base)
	// fly-go's Logger stays nil: it would log whole bodies, machine env included.
	fc, err := flaps.NewWithOptions(ctx, flaps.NewClientOpts{
		Tokens:    tokens.Parse(cfg.Token),
		UserAgent: cfg.UserAgent,
		Transport: rt,
	})
	if err != nil {
		return nil, fmt.Errorf("flymachines: new client: %w", err)
	}
	return &Client{
		cfg:     cfg,
		flaps:   fc,
		direct:  &http.Client{Transport: rt},
		secrets: secretForms(cfg.Token),
		clk:     cfg.Clock,
		log:     cfg.Logger,
	}, nil
}

// secretForms lists the spellings of the token that must never be echoed.
func secretForms(tok string) []string {
	out := []string{tok}
	stripped := tokens.StripAuthorizationScheme(tok)
	out = append(out, stripped)
	for _, part := range strings.Split(stripped, ",") {
		if part = strings.TrimSpace(part); len(part) >= 8 {
			out = append(out, part)
		}
	}
	return out
}

// op returns ctx named for callrec and bounded by CallTimeout.
func (c *Client) op(ctx context.Context, kind, app, id string) (context.Context, context.CancelFunc) {
	return context.WithTimeout(callrec.WithOp(ctx, kind, target(app, id)), c.cfg.CallTimeout)
}

// ListApps lists the apps of organization org (its slug).
func (c *Client) ListApps(ctx context.Context, org string) ([]App, error) {
	const kind = "fly.list_apps"
	if err := checkName(kind, "org", org); err != nil {
		return nil, err
	}
	ctx, cancel := c.op(ctx, kind, org, "")
	defer cancel()
	apps, err := c.flaps.ListApps(ctx, flaps.ListAppsRequest{OrgSlug: org})
	if err != nil {
		return nil, c.apiError(kind, org, "", err)
	}
	out := make([]App, 0, len(apps))
	for _, a := range apps {
		o := a.Organization.Slug
		if o == "" {
			o = org
		}
		out = append(out, App{Name: a.Name, Org: o})
	}
	return out, nil
}

// ListMachines lists the machines of app, as Fly returns them.
func (c *Client) ListMachines(ctx context.Context, app string) ([]Machine, error) {
	const kind = "fly.list_machines"
	if err := checkName(kind, "app", app); err != nil {
		return nil, err
	}
	ctx, cancel := c.op(ctx, kind, app, "")
	defer cancel()
	ms, err := c.flaps.List(ctx, app, "")
	if err != nil {
		return nil, c.apiError(kind, app, "", err)
	}
	out := make([]Machine, 0, len(ms))
	for _, m := range ms {
		out = append(out, toMachine(app, m))
	}
	return out, nil
}

// GetMachine reads one machine.
func (c *Client) GetMachine(ctx context.Context, app, id string) (Machine, error) {
	m, err := c.getRaw(ctx, "fly.get", app, id)
	if err != nil {
		return Machine{}, err
	}
	return toMachine(app, m), nil
}

func (c *Client) getRaw(ctx context.Context, kind, app, id string) (*fly.Machine, error) {
	if err := checkTarget(kind, app, id); err != nil {
		return nil, err
	}
	ctx, cancel := c.op(ctx, kind, app, id)
	defer cancel()
	m, err := c.flaps.Get(ctx, app, id)
	if err != nil {
		return nil, c.apiError(kind, app, id, err)
	}
	return m, nil
}

// send makes one authenticated request, built by fly-go, without fly-go's
// retries (this package's transport still paces it and honours 429). An
// answer above 299 comes back as a *flaps.FlapsError, as fly-go would return.
func (c *Client) send(ctx context.Context, method, path string, in any, nonce string, out any) error {
	headers := make(map[string][]string)
	if nonce != "" {
		headers[flaps.NonceHeader] = []string{nonce}
	}
	req, err := c.flaps.NewRequest(ctx, method, path, in, headers)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", c.cfg.UserAgent)
	resp, err := c.direct.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, readErr := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if resp.StatusCode > 299 {
		msg := jsonErrorText(body)
		if msg == "" {
			msg = http.StatusText(resp.StatusCode)
		}
		return &flaps.FlapsError{
			OriginalError:      errors.New(msg),
			ResponseStatusCode: resp.StatusCode,
			ResponseBody:       body,
			FlyRequestId:       resp.Header.Get("Fly-Request-Id"),
		}
	}
	if readErr != nil {
		return fmt.Errorf("reading response: %w", readErr)
	}
	if out != nil && len(body) > 0 {
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("decoding response: %w", err)
		}
	}
	return nil
}

func toMachine(app string, m *fly.Machine) Machine {
	out := Machine{
		App:        app,
		ID:         m.ID,
		Name:       m.Name,
		Region:     m.Region,
		State:      m.State,
		InstanceID: m.InstanceID,
		PrivateIP:  m.PrivateIP,
		HostStatus: string(m.HostStatus),
		Incomplete: m.Config == nil,
		UpdatedAt:  parseTime(m.UpdatedAt),
		ImageRef: ImageRef{Registry: m.ImageRef.Registry, Repository: m.ImageRef.Repository,
			Tag: m.ImageRef.Tag, Digest: m.ImageRef.Digest},
		ReleaseCommand: m.IsReleaseCommandMachine(),
		Console:        m.IsFlyAppsConsole(),
	}
	if cfg := m.GetConfig(); cfg != nil {
		for _, c := range cfg.Containers {
			if c != nil {
				out.Containers = append(out.Containers, Container{Name: c.Name, Image: c.Image})
			}
		}
		out.Image = cfg.Image
		if len(cfg.Env) > 0 {
			out.Env = maps.Clone(Env(cfg.Env))
		}
		if len(cfg.Metadata) > 0 {
			out.Labels = make(map[string]string, len(cfg.Metadata))
			for k, v := range cfg.Metadata {
				out.Labels[k] = v
			}
		}
		out.ChecksConfigured = checksConfigured(cfg)
		out.SuspendBlocked = suspendBlocked(cfg)
	}
	out.Events = toEvents(m.Events)
	return out
}

// checksConfigured counts the checks Fly will report a status for: the
// named top-level checks and each service's checks.
func checksConfigured(cfg *fly.MachineConfig) int {
	if cfg == nil {
		return 0
	}
	n := len(cfg.Checks)
	for _, s := range cfg.Services {
		n += len(s.Checks)
	}
	return n
}

func parseTime(s string) time.Time {
	if s == "" {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

// checkName refuses values that would change the request path: fly-go puts
// app and machine names into URLs unescaped.
func checkName(op, what, v string) error {
	if v == "" {
		return fmt.Errorf("%s: %s is empty", op, what)
	}
	if len(v) > 255 || strings.ContainsAny(v, "/?#%\\ \t\r\n") {
		return fmt.Errorf("%s: invalid %s %q", op, what, v)
	}
	return nil
}

func checkTarget(op, app, id string) error {
	if err := checkName(op, "app", app); err != nil {
		return err
	}
	return checkName(op, "machine id", id)
}

func machinePath(app, id string) string { return "/apps/" + app + "/machines/" + id }
