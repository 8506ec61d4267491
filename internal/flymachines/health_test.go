package flymachines

import (
	"context"
	"strings"
	"testing"
	"time"

	fly "github.com/superfly/fly-go"
)

func TestEvaluateHealth(t *testing.T) {
	t.Parallel()
	since := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	after, before := since.Add(10*time.Second), since.Add(-10*time.Second)
	port := 9119
	oneCheck := &fly.MachineConfig{Checks: map[string]fly.MachineCheck{"alive": {Port: &port}}}
	svcCheck := &fly.MachineConfig{
		Checks:   map[string]fly.MachineCheck{"alive": {Port: &port}},
		Services: []fly.MachineService{{InternalPort: port, Checks: []fly.MachineServiceCheck{{Port: &port}}}},
	}
	res := func(name string, s fly.ConsulCheckStatus, at *time.Time) *fly.MachineCheckStatus {
		return &fly.MachineCheckStatus{Name: name, Status: s, UpdatedAt: at}
	}
	tests := []struct {
		name       string
		cfg        *fly.MachineConfig
		checks     []*fly.MachineCheckStatus
		since      time.Time
		ok, fresh  bool
		configured int
		detail     string
	}{
		{"no checks configured", &fly.MachineConfig{}, nil, since, true, false, 0, "no health checks configured"},
		{"configured, zero results: no vacuous pass", oneCheck, nil, since, false, false, 1, "no results"},
		{"passing and fresh", oneCheck, []*fly.MachineCheckStatus{res("alive", fly.Passing, &after)}, since, true, true, 1, "1/1 checks passing"},
		{"passing but stale", oneCheck, []*fly.MachineCheckStatus{res("alive", fly.Passing, &before)}, since, false, false, 1, "not updated since"},
		{"passing, no timestamp", oneCheck, []*fly.MachineCheckStatus{res("alive", fly.Passing, nil)}, since, false, false, 1, "not updated since"},
		{"critical", oneCheck, []*fly.MachineCheckStatus{res("alive", fly.Critical, &after)}, since, false, true, 1, "alive=critical"},
		{"warning", oneCheck, []*fly.MachineCheckStatus{res("alive", fly.Warning, &after)}, since, false, true, 1, "0/1 checks passing"},
		{"only some configured checks reported", svcCheck, []*fly.MachineCheckStatus{res("alive", fly.Passing, &after)}, since, false, true, 2, "only 1 of 2"},
		{"service and top-level checks all passing", svcCheck, []*fly.MachineCheckStatus{
			res("alive", fly.Passing, &after), res("servicecheck-00-tcp-9119", fly.Passing, &after)}, since, true, true, 2, "2/2"},
		{"fly's compat checks are ignored", oneCheck, []*fly.MachineCheckStatus{
			res("alive", fly.Passing, &after), res("bg_deployments_compat", fly.Critical, &before)}, since, true, true, 1, "1/1"},
		{"zero since skips freshness", oneCheck, []*fly.MachineCheckStatus{res("alive", fly.Passing, &before)}, time.Time{}, true, true, 1, "1/1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := evaluateHealth(&fly.Machine{State: "started", Config: tt.cfg, Checks: tt.checks}, tt.since)
			if h.OK != tt.ok || h.Fresh != tt.fresh || h.Configured != tt.configured || !strings.Contains(h.Detail, tt.detail) {
				t.Errorf("health = %+v; want ok=%v fresh=%v configured=%d detail~%q", h, tt.ok, tt.fresh, tt.configured, tt.detail)
			}
		})
	}
}

func TestCheckHealthOverHTTP(t *testing.T) {
	t.Parallel()
	f := newFake(t, testToken)
	m := f.addMachine("app1", "m1", "started", "img:1")
	port := 9119
	now := time.Now().UTC()
	m.Config.Checks = map[string]fly.MachineCheck{"alive": {Port: &port}}
	m.Checks = []*fly.MachineCheckStatus{{Name: "alive", Status: fly.Passing, UpdatedAt: &now}}
	c, _ := newTestClient(t, f, testToken, nil)
	h, err := c.CheckHealth(context.Background(), "app1", "m1", now.Add(-time.Minute))
	if err != nil || !h.OK || h.Total != 1 || h.Passing != 1 {
		t.Fatalf("CheckHealth = %+v, %v", h, err)
	}
	h, err = c.CheckHealth(context.Background(), "app1", "m1", now.Add(time.Minute))
	if err != nil || h.OK || h.Fresh {
		t.Fatalf("results older than since: %+v, %v; want not OK", h, err)
	}
}
