package flymachines

import (
	"context"
	"fmt"
	"net/http"

	fly "github.com/superfly/fly-go"
)

// Start, stop and suspend: a canary that was down is started on the new
// image by its update, and put back down afterwards the way it was; an
// instance put down before it showed its platforms is started once to
// finish its verification. Each is one request (fly-go's flaps would retry
// a 502/503), under the lease nonce when one is held; Fly's answer while
// the machine is between states is a 409/412, which IsBusy reports.

// Start starts a stopped or suspended machine (a suspended one resumes
// from its snapshot: the same process). Starting a started machine
// changes nothing.
func (c *Client) Start(ctx context.Context, app, id, nonce string) error {
	return c.action(ctx, "fly.start", app, id, "start", nil, nonce)
}

// Stop stops a running machine (a SIGTERM to its process; a suspended
// one loses its snapshot).
func (c *Client) Stop(ctx context.Context, app, id, nonce string) error {
	return c.action(ctx, "fly.stop", app, id, "stop", fly.StopMachineInput{ID: id}, nonce)
}

// Suspend freezes a running machine to a snapshot. Fly suspends only
// machines that meet its requirements (Machine.SuspendBlocked says why
// one does not); a refusal is a permanent *APIError.
func (c *Client) Suspend(ctx context.Context, app, id, nonce string) error {
	return c.action(ctx, "fly.suspend", app, id, "suspend", nil, nonce)
}

func (c *Client) action(ctx context.Context, kind, app, id, what string, in any, nonce string) error {
	if err := checkTarget(kind, app, id); err != nil {
		return err
	}
	ctx, cancel := c.op(ctx, kind, app, id)
	defer cancel()
	if err := c.send(ctx, http.MethodPost, machinePath(app, id)+"/"+what, in, nonce, nil); err != nil {
		return c.apiError(kind, app, id, err)
	}
	return nil
}

// suspendBlocked is why Fly would not suspend a machine with config cfg
// ("" when it would): Fly's suspend-resume reference lists the
// requirements (memory at most 2 GB, no swap, no schedule, no GPU, and
// an update since 2024-06-20, which any machine migrator moved has had).
func suspendBlocked(cfg *fly.MachineConfig) string {
	switch {
	case cfg == nil:
		return "config unknown"
	case cfg.Guest != nil && cfg.Guest.MemoryMB > 2048:
		return fmt.Sprintf("memory %d MB is over 2 GB", cfg.Guest.MemoryMB)
	case cfg.Guest != nil && (cfg.Guest.GPUKind != "" || cfg.Guest.GPUs > 0):
		return "a GPU is configured"
	case cfg.Schedule != "":
		return "a schedule is configured"
	case cfg.Init.SwapSizeMB != nil && *cfg.Init.SwapSizeMB > 0:
		return "swap is configured"
	}
	return ""
}
