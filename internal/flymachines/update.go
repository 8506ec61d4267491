package flymachines

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	fly "github.com/superfly/fly-go"
	"github.com/superfly/fly-go/flaps"
)

// UpdateResult describes an update to a new image.
type UpdateResult struct {
	FromImage, ToImage           string
	FromInstanceID, ToInstanceID string // wait for ToInstanceID
	State                        string // machine state in Fly's answer
	// Launched: the machine was started/starting/failed and Fly launches the
	// new instance; otherwise only its config changed (SkipLaunch).
	Launched bool
	// AlreadyApplied: the machine's config already named the image; nothing
	// was sent. (A job re-run after a crash lands here.)
	AlreadyApplied bool
	UpdatedAt      time.Time // Fly's updated_at: pass it to CheckHealth as since
}

// UpdateOption adjusts an UpdateImage call.
type UpdateOption func(*updateOptions)

type updateOptions struct {
	minSecretsVersion *uint64
	launch            *bool
	container         string
	stillDown         bool
	metadata          map[string]string
	env               *EnvChange
	fromInstance      string
}

// WithEnv sets and unsets keys of config.env with the image (the rest of
// config.env is kept as read). Its values never appear in an error, a log
// or a call record.
func WithEnv(c EnvChange) UpdateOption {
	return func(o *updateOptions) { o.env = &c }
}

// WithFromInstance names the instance the caller read before deciding the
// update. A machine whose config already holds the change is then updated
// anyway while it still runs that instance (a restart, or picking up app
// secrets, changes nothing in the config: the update makes the new
// instance), and found AlreadyApplied only once it runs another one (the
// update landed in an earlier attempt).
func WithFromInstance(id string) UpdateOption {
	return func(o *updateOptions) { o.fromInstance = id }
}

// WithMinSecretsVersion makes the update carry min_secrets_version v, so
// the new instance gets at least that version of the app's secrets.
func WithMinSecretsVersion(v uint64) UpdateOption {
	return func(o *updateOptions) { o.minSecretsVersion = &v }
}

// WithLaunch says whether Fly launches the new instance (skip_launch is
// its negation). A caller that decided it from the machine as it read it
// (under its lease) passes that one decision here, for the update and the
// rollback alike: flyctl decides once, from the machine as captured
// before its deploy, and never again during retries
// (internal/command/deploy/plan.go, updateProcessGroup). Without it the
// adapter applies flyctl's rule (shouldSkipLaunch) to the fresh read.
func WithLaunch(launch bool) UpdateOption {
	return func(o *updateOptions) { o.launch = &launch }
}

// WithContainer moves the named container's image instead of config.image,
// as flyctl's `machine update --container` does (a machine without
// containers then gets config.image, as there). Without it, a machine with
// config.containers is refused (*ContainersError): changing config.image
// alone would leave every container on its old image.
func WithContainer(name string) UpdateOption {
	return func(o *updateOptions) { o.container = name }
}

// WithMetadata sets these config.metadata keys in the update (the rest of
// the machine's metadata is kept): the Fly release the update belongs to
// (fly_release_id, fly_release_version), as flyctl's
// setMachineReleaseData writes them into every machine it deploys.
func WithMetadata(md map[string]string) UpdateOption {
	return func(o *updateOptions) { o.metadata = md }
}

// IfStillDown refuses the update, sending nothing, when the fresh read
// shows the machine running (started, starting, replacing) although the
// caller decided on a machine that was down: Fly Proxy may have started it
// for a user since. The answer is *StateChangedError; an update with
// skip_launch would stop that user's agent without a drain and leave it
// down.
func IfStillDown() UpdateOption {
	return func(o *updateOptions) { o.stillDown = true }
}

const (
	// maxUpdateSends bounds how often one UpdateImage sends the update when
	// its outcome stays unknown.
	maxUpdateSends = 3
	// maxSettleReads bounds the re-reads waiting for an in-flight update.
	maxSettleReads = 5
)

// launchAfterUpdate is flyctl's rule (shouldSkipLaunch in
// internal/command/deploy/machines_launchinput.go, and its TestSkipLaunch:
// "stopped stays stopped", "suspended stays stopped"): relaunch only a
// machine that was running (or trying to); stopped and suspended machines
// just get the config.
func launchAfterUpdate(state string) bool {
	switch state {
	case fly.MachineStateStarted, "starting", "failed":
		return true
	}
	return false
}

// running states are those of a machine that is (or is about to be) up.
func running(state string) bool {
	switch state {
	case fly.MachineStateStarted, "starting", "replacing", "updating", "restarting":
		return true
	}
	return false
}

// imageIn is the image an update to container would change: config.image,
// or the named container's. A machine with containers needs a container
// named (changing config.image alone would leave them on their images);
// one without containers takes config.image whatever is named, as flyctl's
// `machine update --container` does.
func imageIn(app, id string, cfg *fly.MachineConfig, container string) (string, error) {
	if len(cfg.Containers) == 0 {
		return cfg.Image, nil
	}
	names := containerNames(cfg.Containers)
	if container == "" {
		return "", &ContainersError{App: app, MachineID: id, Containers: names}
	}
	for _, ct := range cfg.Containers {
		if ct != nil && ct.Name == container {
			return ct.Image, nil
		}
	}
	return "", &ContainersError{App: app, MachineID: id, Containers: names, Want: container}
}

// setImage changes image where imageIn read it.
func setImage(cfg *fly.MachineConfig, container, image string) {
	if len(cfg.Containers) == 0 {
		cfg.Image = image
		return
	}
	for _, ct := range cfg.Containers {
		if ct != nil && ct.Name == container {
			ct.Image = image
		}
	}
}

func containerNames(cs []*fly.ContainerConfig) []string {
	out := make([]string, 0, len(cs))
	for _, ct := range cs {
		if ct != nil {
			out = append(out, ct.Name)
		}
	}
	return out
}

// settled states are those a machine rests in; others mean work in flight.
func settled(state string) bool {
	switch state {
	case fly.MachineStateStarted, fly.MachineStateStopped, fly.MachineStateSuspended, "failed", fly.MachineStateDestroyed:
		return true
	}
	return false
}

// UpdateImage moves the machine to image: it reads the machine fresh, sends
// its full config with only Image changed (mounts, env, services, metadata
// kept; region and name unchanged), under the lease nonce. WithEnv changes
// keys of config.env too; WithFromInstance makes an update of a config
// that already holds the change (a restart, app secrets to pick up) a new
// instance all the same.
//
// WithMinSecretsVersion asks Fly to start the new instance with at least
// that version of the app's secrets (the version `secret sync` recorded);
// without it the update carries no min_secrets_version, as flyctl sends
// none when it has not itself set the app's secrets.
//
// The update is sent without fly-go's retries. When its outcome is unknown
// (408, 5xx, no response) the machine is read again: if it already names
// image, the update landed and is not sent twice; if it is still changing,
// the read is repeated; otherwise the update is sent again (at most
// maxUpdateSends times in all).
func (c *Client) UpdateImage(ctx context.Context, app, id, image, nonce string, opts ...UpdateOption) (UpdateResult, error) {
	return c.updateImage(ctx, app, id, image, nonce, opts)
}

func (c *Client) updateImage(ctx context.Context, app, id, image, nonce string, opts []UpdateOption) (UpdateResult, error) {
	var o updateOptions
	for _, opt := range opts {
		opt(&o)
	}
	const kind = "fly.update"
	if err := checkTarget(kind, app, id); err != nil {
		return UpdateResult{}, err
	}
	if image == "" {
		return UpdateResult{}, fmt.Errorf("%s %s: image is empty", kind, target(app, id))
	}
	m, err := c.getRaw(ctx, "fly.get", app, id)
	if err != nil {
		return UpdateResult{}, err
	}
	res := UpdateResult{FromInstanceID: m.InstanceID}
	var (
		sent     bool // an update was sent whose outcome is unknown
		launched bool
	)
	for sends := 0; ; {
		cfg := m.Config
		if cfg == nil || m.HostStatus != "" && m.HostStatus != fly.HostStatusOk {
			// host_status is not ok: only a partial config is readable,
			// and calls on the machine fail.
			return res, &HostUnavailableError{App: app, MachineID: id, HostStatus: string(m.HostStatus)}
		}
		current, err := imageIn(app, id, cfg, o.container)
		if err != nil {
			return res, err
		}
		if res.FromImage == "" && !sent {
			res.FromImage = current
		}
		has := current == image && (o.env == nil || HasEnv(cfg.Env, *o.env))
		if has && (o.fromInstance == "" || m.InstanceID != o.fromInstance) {
			res.ToImage, res.ToInstanceID, res.State = image, m.InstanceID, m.State
			res.UpdatedAt = parseTime(m.UpdatedAt)
			res.AlreadyApplied = !sent
			res.Launched = sent && launched
			return res, nil
		}
		if o.stillDown && !sent && running(m.State) {
			return res, &StateChangedError{App: app, MachineID: id, State: m.State}
		}
		launched = launchAfterUpdate(m.State)
		if o.launch != nil {
			launched = *o.launch
		}
		setImage(cfg, o.container, image) // the change: the rest is the fresh config as read
		if len(o.metadata) > 0 {
			md := make(map[string]string, len(cfg.Metadata)+len(o.metadata))
			for k, v := range cfg.Metadata {
				md[k] = v
			}
			for k, v := range o.metadata {
				md[k] = v
			}
			cfg.Metadata = md
		}
		if o.env != nil {
			cfg.Env = applyEnv(cfg.Env, *o.env)
		}
		in := fly.LaunchMachineInput{
			ID:         id,
			Name:       m.Name,
			Region:     m.Region,
			Config:     cfg,
			SkipLaunch: !launched,
			// The machine's secrets are only refreshed when it is
			// recreated: this is the moment a synced secret reaches it.
			MinSecretsVersion: o.minSecretsVersion,
		}
		out, err := c.postUpdate(ctx, app, id, in, nonce)
		sends++
		if err == nil {
			res.ToImage, res.ToInstanceID, res.State = image, out.InstanceID, out.State
			if out.Config != nil && out.Config.Image != "" {
				res.ToImage = out.Config.Image
			}
			res.UpdatedAt = parseTime(out.UpdatedAt)
			res.Launched = launched
			return res, nil
		}
		if o.stillDown && !sent && Status(err) == http.StatusConflict && ctx.Err() == nil {
			// Woken between the read and the send: Fly answers an update
			// of a machine that is starting 409 "concurrent update in
			// progress (machine is starting)". A fresh read tells a wake
			// (the caller decides again) from another conflict.
			if now, rerr := c.getRaw(ctx, "fly.get", app, id); rerr == nil && running(now.State) {
				return res, &StateChangedError{App: app, MachineID: id, State: now.State}
			}
		}
		if !ambiguous(err, sent) || sends >= maxUpdateSends || ctx.Err() != nil {
			return res, c.apiError(kind, app, id, err, o.env.values()...)
		}
		sent = true
		c.log.Warn("fly update outcome unknown; re-reading the machine before any retry",
			"app", app, "machine_id", id, "status", Status(err), "send", sends)
		if m, err = c.settle(ctx, app, id, image, o.container); err != nil {
			return res, err
		}
	}
}

func (c *Client) postUpdate(ctx context.Context, app, id string, in fly.LaunchMachineInput, nonce string) (*fly.Machine, error) {
	ctx, cancel := c.op(ctx, "fly.update", app, id)
	defer cancel()
	out := new(fly.Machine)
	if err := c.send(ctx, http.MethodPost, machinePath(app, id), in, nonce, out); err != nil {
		return nil, err
	}
	return out, nil
}

// ambiguous reports whether an update error leaves its outcome unknown. After
// an ambiguous send, a 409/412 most likely means Fly is still applying that
// first update ("concurrent update in progress"), so it is ambiguous too.
func ambiguous(err error, sentBefore bool) bool {
	var fe *flaps.FlapsError
	if errors.As(err, &fe) {
		s := fe.ResponseStatusCode
		switch {
		case s == http.StatusRequestTimeout, s >= 500:
			return true
		case sentBefore && (s == http.StatusConflict || s == http.StatusPreconditionFailed):
			return true
		}
		return false
	}
	// No response: it may or may not have reached flyd (a decode failure on
	// a 200 even means it did). Re-reading tells.
	return !errors.Is(err, context.Canceled)
}

// settle re-reads the machine until it names image or rests in a settled
// state, backing off between reads.
func (c *Client) settle(ctx context.Context, app, id, image, container string) (*fly.Machine, error) {
	wait := time.Second
	for i := 0; ; i++ {
		m, err := c.getRaw(ctx, "fly.get", app, id)
		if err != nil {
			return nil, err
		}
		if cur, _ := imageIn(app, id, m.GetConfig(), container); cur == image || settled(m.State) || i+1 >= maxSettleReads {
			return m, nil
		}
		if err := sleep(ctx, c.clk.Wall(wait)); err != nil {
			return nil, c.apiError("fly.update", app, id, err)
		}
		wait = min(wait*2, 10*time.Second)
	}
}

// sleep waits d of wall time or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
