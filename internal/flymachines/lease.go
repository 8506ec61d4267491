package flymachines

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	fly "github.com/superfly/fly-go"
	"github.com/superfly/fly-go/flaps"
)

// Lease is a held Fly machine lease. Mutating calls must carry its Nonce.
type Lease struct {
	Nonce     string
	ExpiresAt time.Time
	Owner     string
	// Description is what the holder said the lease is for (FindLease).
	Description string
	// Version is the machine's instance_id when the lease was taken: if it
	// differs from what was read before, re-read under the lease.
	Version string
}

// leaseBody is the optional body of a lease request (Fly's API reference).
type leaseBody struct {
	Description string `json:"description,omitempty"`
	TTL         int    `json:"ttl,omitempty"`
}

// AcquireLease takes the machine's lease for ttl, in ONE request. (fly-go's
// AcquireLease retries every error for about a minute.) A lease held by
// someone else answers *LeaseHeldError at once.
func (c *Client) AcquireLease(ctx context.Context, app, id string, ttl time.Duration, description string) (Lease, error) {
	return c.leasePost(ctx, "fly.lease_acquire", app, id, ttl, description, "")
}

// RefreshLease extends the lease we hold (nonce) to ttl from now. If the
// lease expired and someone else took it, the answer is *LeaseHeldError.
func (c *Client) RefreshLease(ctx context.Context, app, id, nonce string, ttl time.Duration) (Lease, error) {
	if nonce == "" {
		return Lease{}, fmt.Errorf("fly.lease_refresh %s: nonce is empty", target(app, id))
	}
	return c.leasePost(ctx, "fly.lease_refresh", app, id, ttl, "", nonce)
}

func (c *Client) leasePost(ctx context.Context, kind, app, id string, ttl time.Duration, description, nonce string) (Lease, error) {
	if err := checkTarget(kind, app, id); err != nil {
		return Lease{}, err
	}
	secs := int((ttl + time.Second - 1) / time.Second)
	if secs < 1 {
		return Lease{}, fmt.Errorf("%s %s: lease ttl must be at least 1s, got %s", kind, target(app, id), ttl)
	}
	var in any
	if description != "" {
		in = leaseBody{Description: description, TTL: secs}
	}
	ctx, cancel := c.op(ctx, kind, app, id)
	defer cancel()
	var out fly.MachineLease
	err := c.send(ctx, http.MethodPost, fmt.Sprintf("%s/lease?ttl=%d", machinePath(app, id), secs), in, nonce, &out)
	if err != nil {
		var fe *flaps.FlapsError
		if errors.As(err, &fe) && fe.ResponseStatusCode == http.StatusConflict {
			return Lease{}, c.leaseHeld(kind, app, id, fe)
		}
		return Lease{}, c.apiError(kind, app, id, err)
	}
	if out.Data == nil || out.Data.Nonce == "" {
		return Lease{}, &APIError{Op: kind, App: app, MachineID: id, Status: http.StatusOK, Msg: "lease response carries no nonce"}
	}
	return Lease{
		Nonce:     out.Data.Nonce,
		ExpiresAt: unixTime(out.Data.ExpiresAt),
		Owner:     out.Data.Owner,
		Version:   out.Data.Version,
	}, nil
}

// leaseHeld reads who holds the lease from a 409 body when Fly says: either
// the lease shape ({data:{owner, expires_at}}) or those fields at the top.
func (c *Client) leaseHeld(kind, app, id string, fe *flaps.FlapsError) *LeaseHeldError {
	var body struct {
		Data      *fly.MachineLeaseData `json:"data"`
		Owner     string                `json:"owner"`
		ExpiresAt int64                 `json:"expires_at"`
		Code      string                `json:"code"`
	}
	_ = json.Unmarshal(fe.ResponseBody, &body) // best effort: the 409 is what counts
	e := &LeaseHeldError{Op: kind, App: app, MachineID: id, RequestID: fe.FlyRequestId,
		Owner: body.Owner, ExpiresAt: unixTime(body.ExpiresAt), Msg: c.scrub(serverText(fe)), Code: c.scrub(body.Code)}
	if d := body.Data; d != nil {
		if d.Owner != "" {
			e.Owner = d.Owner
		}
		if d.ExpiresAt != 0 {
			e.ExpiresAt = unixTime(d.ExpiresAt)
		}
	}
	if e.Owner == "" || e.ExpiresAt.IsZero() {
		// Fly's 409 carries no fields, only the text: "machine ID X lease
		// currently held by OWNER, expires at T". Classification stays the
		// 409; the text only fills in who and until when, so the caller
		// can wait until the lease runs out instead of polling.
		if m := heldByText.FindStringSubmatch(serverText(fe)); m != nil {
			if e.Owner == "" {
				e.Owner = m[1]
			}
			if at, ok := parseLeaseExpiry(m[2]); ok && e.ExpiresAt.IsZero() {
				e.ExpiresAt = at
			}
		}
	}
	e.Owner = c.scrub(e.Owner)
	return e
}

// heldByText matches the owner and expiry in Fly's lease-conflict message.
var heldByText = regexp.MustCompile(`held by ([^\s,]+),? expires at (.+?)\s*$`)

// leaseExpiryLayouts are the forms Fly has written a lease's expiry in: RFC
// 3339 ("2026-05-14T10:41:08Z", in 409s logged this year) and Go's
// time.Time.String without monotonic part ("2022-10-20 19:59:06 +0000 UTC",
// in Fly's API reference, reference/machines/_lease_resp.erb, beside
// "code":"invalid").
var leaseExpiryLayouts = []string{time.RFC3339Nano, "2006-01-02 15:04:05.999999999 -0700 MST"}

// parseLeaseExpiry reads a 409's expiry in either form; false when it is
// neither (the caller then asks FindLease, whose expires_at is a number).
func parseLeaseExpiry(s string) (time.Time, bool) {
	s = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "."))
	for _, layout := range leaseExpiryLayouts {
		if at, err := time.Parse(layout, s); err == nil {
			return at.UTC(), true
		}
	}
	return time.Time{}, false
}

// leaseRead is GET …/lease: fly-go's MachineLeaseData has no description.
type leaseRead struct {
	Data *struct {
		Nonce       string `json:"nonce"`
		ExpiresAt   int64  `json:"expires_at"`
		Owner       string `json:"owner"`
		Description string `json:"description"`
		Version     string `json:"version"`
	} `json:"data"`
}

// FindLease reads the machine's current lease, nonce included (Fly shows
// it to any holder of the token: flyctl's `machine leases clear` reads it
// and releases). One request, like AcquireLease (fly-go's FindLease goes
// through its retries); no lease is an error for which IsNotFound is true.
func (c *Client) FindLease(ctx context.Context, app, id string) (Lease, error) {
	const kind = "fly.lease_get"
	if err := checkTarget(kind, app, id); err != nil {
		return Lease{}, err
	}
	ctx, cancel := c.op(ctx, kind, app, id)
	defer cancel()
	var out leaseRead
	if err := c.send(ctx, http.MethodGet, machinePath(app, id)+"/lease", nil, "", &out); err != nil {
		return Lease{}, c.apiError(kind, app, id, err)
	}
	if out.Data == nil || out.Data.Nonce == "" {
		return Lease{}, &APIError{Op: kind, App: app, MachineID: id, Status: http.StatusOK, Msg: "lease answer carries no nonce"}
	}
	d := out.Data
	return Lease{Nonce: d.Nonce, ExpiresAt: unixTime(d.ExpiresAt), Owner: c.scrub(d.Owner),
		Description: d.Description, Version: d.Version}, nil
}

// releaseTries bounds the DELETEs of one ReleaseLease.
const releaseTries = 4

// ReleaseLease gives the lease back. A lease that is already gone (404, or
// 409/410: it expired and is no longer ours) counts as released. A
// transient failure (5xx, no answer; a 429 is already waited out by the
// transport, honouring Retry-After) is tried again after 1, 2, 4 s (clock
// time), up to releaseTries sends in all and never past ctx: a lease left
// behind blocks every other deployer of the machine until it expires.
// Repeating is safe: a release that landed answers 404 the next time.
func (c *Client) ReleaseLease(ctx context.Context, app, id, nonce string) error {
	const kind = "fly.lease_release"
	if err := checkTarget(kind, app, id); err != nil {
		return err
	}
	if nonce == "" {
		return fmt.Errorf("%s %s: nonce is empty", kind, target(app, id))
	}
	backoff := time.Second
	for try := 1; ; try++ {
		err := c.releaseOnce(ctx, kind, app, id, nonce)
		if err == nil || !IsTransient(err) || try >= releaseTries || ctx.Err() != nil {
			return err
		}
		c.log.Warn("fly lease release failed; trying again", "app", app, "machine_id", id, "status", Status(err), "try", try)
		if sleep(ctx, c.clk.Wall(backoff)) != nil {
			return err
		}
		backoff *= 2
	}
}

func (c *Client) releaseOnce(ctx context.Context, kind, app, id, nonce string) error {
	ctx, cancel := c.op(ctx, kind, app, id)
	defer cancel()
	err := c.send(ctx, http.MethodDelete, machinePath(app, id)+"/lease", nil, nonce, nil)
	switch Status(err) {
	case http.StatusNotFound, http.StatusConflict, http.StatusGone:
		c.log.Debug("fly lease already gone", "app", app, "machine_id", id, "status", Status(err))
		return nil
	}
	return c.apiError(kind, app, id, err)
}

func unixTime(sec int64) time.Time {
	if sec <= 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0).UTC()
}
