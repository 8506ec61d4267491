package flymachines

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	fly "github.com/superfly/fly-go"
)

// Health is the verdict of the health gate on one machine.
type Health struct {
	Configured int // checks in the machine's config (top-level + service)
	Total      int // check results Fly reports
	Passing    int
	Warning    int
	Critical   int
	Fresh      bool // every result was updated after `since`
	OK         bool
	State      string // machine state when read
	Detail     string // one line for humans and the audit log
}

// CheckHealth reads the machine's check results. With checks configured it
// requires results for all of them (Total > 0: fly-go's AllPassing is true
// for zero results), all passing, and all updated after since (pass
// UpdateResult.UpdatedAt, Fly's own clock; zero skips that test). A machine
// with no checks configured is OK, and Detail says so.
func (c *Client) CheckHealth(ctx context.Context, app, id string, since time.Time) (Health, error) {
	m, err := c.getRaw(ctx, "fly.checks", app, id)
	if err != nil {
		return Health{}, err
	}
	return evaluateHealth(m, since), nil
}

// evaluateHealth is the pure decision behind CheckHealth.
func evaluateHealth(m *fly.Machine, since time.Time) Health {
	st := m.AllHealthChecks() // also drops Fly's bg_deployments compat checks
	h := Health{
		Configured: checksConfigured(m.GetConfig()),
		Total:      st.Total,
		Passing:    st.Passing,
		Warning:    st.Warn,
		Critical:   st.Critical,
		State:      m.State,
	}
	h.Fresh = h.Total > 0
	var stale, failing []string
	for _, chk := range m.Checks {
		if chk.UpdatedAt == nil || (!since.IsZero() && !chk.UpdatedAt.After(since)) {
			h.Fresh = false
			stale = append(stale, chk.Name)
		}
		if chk.Status != fly.Passing {
			failing = append(failing, chk.Name+"="+string(chk.Status))
		}
	}
	sort.Strings(stale)
	sort.Strings(failing)
	want := h.Configured
	switch {
	case want == 0 && h.Total == 0:
		h.OK, h.Detail = true, "no health checks configured"
		return h
	case want == 0:
		// Results without a config we can count (e.g. checks Fly adds):
		// judge the results themselves.
		want = h.Total
	}
	switch {
	case h.Total == 0:
		h.Detail = fmt.Sprintf("%d checks configured but no results reported yet", want)
	case h.Total < want:
		h.Detail = fmt.Sprintf("only %d of %d configured checks reported", h.Total, want)
	case h.Passing < h.Total:
		h.Detail = fmt.Sprintf("%d/%d checks passing; %s", h.Passing, h.Total, strings.Join(failing, ", "))
	case !h.Fresh:
		h.Detail = fmt.Sprintf("%d/%d checks passing but not updated since %s: %s",
			h.Passing, h.Total, since.UTC().Format(time.RFC3339), strings.Join(stale, ", "))
	default:
		h.OK = true
		h.Detail = fmt.Sprintf("%d/%d checks passing", h.Passing, h.Total)
		if !since.IsZero() {
			h.Detail += " since " + since.UTC().Format(time.RFC3339)
		}
	}
	return h
}

// Inspect reads the machine once and returns it with its health, evaluated
// as CheckHealth does: one call where a verifier needs both (which instance
// and image it runs, and whether its checks pass since the update).
func (c *Client) Inspect(ctx context.Context, app, id string, since time.Time) (Machine, Health, error) {
	m, err := c.getRaw(ctx, "fly.get", app, id)
	if err != nil {
		return Machine{}, Health{}, err
	}
	return toMachine(app, m), evaluateHealth(m, since), nil
}
