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
}

// WithMinSecretsVersion makes the update carry min_secrets_version v, so
// the new instance gets at least that version of the app's secrets.
func WithMinSecretsVersion(v uint64) UpdateOption {
	return func(o *updateOptions) { o.minSecretsVersion = &v }
}

const (
	// maxUpdateSends bounds how often one UpdateImage sends the update when
	// its outcome stays unknown.
	maxUpdateSends = 3
	// maxSettleReads bounds the re-reads waiting for an in-flight update.
	maxSettleReads = 5
)

// launchAfterUpdate is flyctl's rule: relaunch only a machine that was
// running (or trying to); stopped and suspended machines just get the config.
func launchAfterUpdate(state string) bool {
	switch state {
	case fly.MachineStateStarted, "starting", "failed":
		return true
	}
	return false
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
// kept; region and name unchanged), under the lease nonce.
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
	return c.updateImage(ctx, app, id, image, nonce, false, opts)
}

// RollbackImage is UpdateImage for putting back the image a running machine
// had before an update that failed: the machine is launched on it even if
// it is stopped now (the failed new instance exited), since it was running
// before. Use UpdateImage for a machine that was stopped before. It takes
// the same options as UpdateImage (so either can be called through one
// func value); a rollback to the old image passes none, since the old image
// does not need the secrets synced for the new one.
func (c *Client) RollbackImage(ctx context.Context, app, id, image, nonce string, opts ...UpdateOption) (UpdateResult, error) {
	return c.updateImage(ctx, app, id, image, nonce, true, opts)
}

func (c *Client) updateImage(ctx context.Context, app, id, image, nonce string, launch bool, opts []UpdateOption) (UpdateResult, error) {
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
	res := UpdateResult{FromImage: imageOf(m), FromInstanceID: m.InstanceID}
	var (
		sent     bool // an update was sent whose outcome is unknown
		launched bool
	)
	for sends := 0; ; {
		cfg := m.Config
		if cfg == nil {
			// host_status is not ok: only a partial config is readable.
			return res, &HostUnavailableError{App: app, MachineID: id, HostStatus: string(m.HostStatus)}
		}
		if cfg.Image == image {
			res.ToImage, res.ToInstanceID, res.State = image, m.InstanceID, m.State
			res.UpdatedAt = parseTime(m.UpdatedAt)
			res.AlreadyApplied = !sent
			res.Launched = sent && launched
			return res, nil
		}
		launched = launch || launchAfterUpdate(m.State)
		cfg.Image = image // the only change: the rest is the fresh config as read
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
		if !ambiguous(err, sent) || sends >= maxUpdateSends || ctx.Err() != nil {
			return res, c.apiError(kind, app, id, err)
		}
		sent = true
		c.log.Warn("fly update outcome unknown; re-reading the machine before any retry",
			"app", app, "machine_id", id, "status", Status(err), "send", sends)
		if m, err = c.settle(ctx, app, id, image); err != nil {
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
func (c *Client) settle(ctx context.Context, app, id, image string) (*fly.Machine, error) {
	wait := time.Second
	for i := 0; ; i++ {
		m, err := c.getRaw(ctx, "fly.get", app, id)
		if err != nil {
			return nil, err
		}
		if imageOf(m) == image || settled(m.State) || i+1 >= maxSettleReads {
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
