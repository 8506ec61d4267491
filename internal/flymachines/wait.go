package flymachines

import (
	"context"
	"fmt"
	"time"

	fly "github.com/superfly/fly-go"
	"github.com/superfly/fly-go/flaps"

	"github.com/hermes-cloud/migrator/internal/callrec"
)

// WaitOnce makes one /wait call: does the machine reach state (default
// "started") on instance instanceID (empty: any) within timeout? timeout is
// clamped to [1s, WaitStep]; Fly clamps to 60 s anyway. Fly's 408 (not
// reached in time) is reached=false with a nil error.
func (c *Client) WaitOnce(ctx context.Context, app, id, instanceID, state string, timeout time.Duration) (reached bool, err error) {
	const kind = "fly.wait"
	if err := checkTarget(kind, app, id); err != nil {
		return false, err
	}
	if state == "" {
		state = fly.MachineStateStarted
	}
	if timeout <= 0 {
		timeout = c.cfg.WaitStep
	}
	// Ask Fly for no more than ctx leaves, so a wait ends in a clean 408
	// rather than a client-side abort.
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, c.clockDuration(time.Until(dl)-time.Second))
	}
	timeout = min(max(timeout, time.Second), c.cfg.WaitStep)
	// The server holds the call for up to timeout (in the clock's timeline);
	// the client deadline allows that plus an ordinary call's time.
	ctx = callrec.WithOp(ctx, kind, target(app, id))
	ctx, cancel := context.WithTimeout(ctx, c.clk.Wall(timeout)+c.cfg.CallTimeout)
	defer cancel()
	opts := []flaps.WaitOption{flaps.WithWaitStates(state), flaps.WithWaitTimeout(timeout)}
	if instanceID != "" {
		opts = append(opts, flaps.WithWaitVersion(instanceID))
	}
	err = c.flaps.Wait(ctx, app, id, opts...)
	if err == nil {
		return true, nil
	}
	if Status(err) == 408 {
		return false, nil
	}
	return false, c.apiError(kind, app, id, err)
}

// WaitForInstance waits until the machine is started on instanceID, in /wait
// calls of at most WaitStep, until ctx is done; then it verifies the machine
// runs instanceID with image. Between waits it reads the machine: flyd's
// silent revert (the old version started again) never reaches instanceID and
// is reported at once as *RevertedError. Give ctx the deadline you will wait.
func (c *Client) WaitForInstance(ctx context.Context, app, id, instanceID, image string) (Machine, error) {
	return c.WaitForInstanceState(ctx, app, id, instanceID, image, fly.MachineStateStarted)
}

// WaitForInstanceState is WaitForInstance for another target state, e.g.
// "stopped" after an update that did not launch (UpdateResult.Launched false).
func (c *Client) WaitForInstanceState(ctx context.Context, app, id, instanceID, image, state string) (Machine, error) {
	const kind = "fly.wait"
	if err := checkTarget(kind, app, id); err != nil {
		return Machine{}, err
	}
	if instanceID == "" || image == "" {
		return Machine{}, fmt.Errorf("%s %s: instance id and image are required", kind, target(app, id))
	}
	backoff := time.Second
	for {
		reached, werr := c.WaitOnce(ctx, app, id, instanceID, state, c.cfg.WaitStep)
		if reached {
			return c.VerifyInstance(ctx, app, id, instanceID, image)
		}
		gaveUp := func() error {
			return &APIError{Op: kind, App: app, MachineID: id, Err: ctx.Err(), temporary: true,
				Msg: fmt.Sprintf("instance %s not %s before the deadline", instanceID, state)}
		}
		if ctx.Err() != nil {
			return Machine{}, gaveUp()
		}
		raw, gerr := c.getRaw(ctx, "fly.get", app, id)
		if gerr == nil {
			m := toMachine(app, raw)
			ours := m.InstanceID == instanceID && m.Image == image
			switch {
			case ours && m.State == state:
				return m, nil
			case !ours && settled(m.State):
				return m, reverted(app, id, m, instanceID, image)
			}
		}
		var err error
		switch {
		case werr != nil && !IsTransient(werr):
			return Machine{}, werr
		case gerr != nil && !IsTransient(gerr):
			return Machine{}, gerr
		case werr != nil:
			err = werr
		default:
			err = gerr
		}
		if err == nil {
			backoff = time.Second
			continue // a plain 408: wait again at once
		}
		c.log.Debug("fly wait failed; retrying", "app", app, "machine_id", id, "status", Status(err))
		if sleep(ctx, c.clk.Wall(backoff)) != nil {
			return Machine{}, gaveUp()
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// VerifyInstance reads the machine and checks that it runs instanceID with
// image; otherwise *RevertedError.
func (c *Client) VerifyInstance(ctx context.Context, app, id, instanceID, image string) (Machine, error) {
	m, err := c.GetMachine(ctx, app, id)
	if err != nil {
		return Machine{}, err
	}
	if m.InstanceID != instanceID || m.Image != image {
		return m, reverted(app, id, m, instanceID, image)
	}
	return m, nil
}

func reverted(app, id string, m Machine, instanceID, image string) *RevertedError {
	return &RevertedError{
		App: app, MachineID: id,
		WantInstance: instanceID, GotInstance: m.InstanceID,
		WantImage: image, GotImage: m.Image,
		State: m.State,
	}
}

// clockDuration converts a wall-clock duration to the clock's timeline.
func (c *Client) clockDuration(wall time.Duration) time.Duration {
	w := c.clk.Wall(time.Second)
	if w <= 0 {
		return wall
	}
	return time.Duration(float64(wall) * float64(time.Second) / float64(w))
}
