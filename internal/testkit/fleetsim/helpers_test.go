package fleetsim

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	fly "github.com/superfly/fly-go"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/drainsecret"
)

var t0 = time.Date(2026, 7, 1, 12, 0, 0, 0, time.UTC)

// harness is a started simulator on a manual clock, with one-line HTTP
// helpers for both APIs.
type harness struct {
	t   *testing.T
	sim *Sim
	clk *clock.Manual
	hc  *http.Client
}

// newHarness disables Fly's rate limits (which run on the wall clock) so
// tests can hammer one machine; newLimitedHarness keeps them.
func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	cfg.DisableRateLimits = true
	return newLimitedHarness(t, cfg)
}

func newLimitedHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	clk := clock.NewManual(t0)
	if cfg.Clock == nil {
		cfg.Clock = clk
	}
	if cfg.Apps == 0 {
		cfg.Apps = 2
	}
	if cfg.Seed == 0 {
		cfg.Seed = 42
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(s.Close)
	return &harness{t: t, sim: s, clk: clk, hc: &http.Client{Timeout: 10 * time.Second}}
}

// first returns the first machine of the first app.
func (h *harness) first() (string, string) {
	a := h.sim.Apps()[0]
	return a, h.sim.MachineIDs(a)[0]
}

type resp struct {
	code   int
	body   []byte
	header http.Header
}

func (r resp) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %q: %v", r.body, err)
	}
}

func (h *harness) do(method, url string, hdr map[string]string, body string) (resp, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := h.hc.Do(req)
	if err != nil {
		return resp{}, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return resp{code: res.StatusCode, body: b, header: res.Header}, err
}

func (h *harness) mustDo(method, url string, hdr map[string]string, body string) resp {
	h.t.Helper()
	r, err := h.do(method, url, hdr, body)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

// fly calls the Machines API with the simulator's token.
func (h *harness) fly(method, path string, hdr map[string]string, body any) resp {
	h.t.Helper()
	all := map[string]string{"Authorization": "Bearer " + h.sim.FlyToken()}
	for k, v := range hdr {
		all[k] = v
	}
	s := ""
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			h.t.Fatal(err)
		}
		s = string(b)
		all["Content-Type"] = "application/json"
	}
	return h.mustDo(method, h.sim.URL()+"/v1/apps/"+path, all, s)
}

func (h *harness) getMachine(app, id string) fly.Machine {
	h.t.Helper()
	r := h.fly("GET", app+"/machines/"+id, nil, nil)
	if r.code != 200 {
		h.t.Fatalf("get machine: %d %s", r.code, r.body)
	}
	var m fly.Machine
	r.json(h.t, &m)
	return m
}

// update recreates the machine on image, as migrator does: fresh config,
// image changed, everything else kept.
func (h *harness) update(app, id, image, nonce string) resp {
	h.t.Helper()
	m := h.getMachine(app, id)
	cfg := *m.Config
	cfg.Image = image
	hdr := map[string]string{}
	if nonce != "" {
		hdr["fly-machine-lease-nonce"] = nonce
	}
	return h.fly("POST", app+"/machines/"+id, hdr, fly.LaunchMachineInput{Config: &cfg, Region: m.Region})
}

func (h *harness) gatewayURL(app, id, route string) string {
	u := strings.NewReplacer("{app}", app, "{machine_id}", id).Replace(h.sim.GatewayURLTemplate())
	return u + route
}

func (h *harness) secret(app string) string { return drainsecret.Derive(h.sim.DrainKey(), app) }

// drain POSTs body to the drain route with the app's secret.
func (h *harness) drain(app, id, body string) resp {
	h.t.Helper()
	return h.mustDo("POST", h.gatewayURL(app, id, "/api/gateway/drain"),
		map[string]string{"Authorization": "Bearer " + h.secret(app), "Content-Type": "application/json"}, body)
}

type status struct {
	GatewayRunning      bool    `json:"gateway_running"`
	GatewayState        *string `json:"gateway_state"`
	ActiveAgents        int     `json:"active_agents"`
	GatewayBusy         bool    `json:"gateway_busy"`
	GatewayDrainable    bool    `json:"gateway_drainable"`
	RestartDrainTimeout int     `json:"restart_drain_timeout"`
	Version             string  `json:"version"`
}

func (h *harness) status(app, id string) status {
	h.t.Helper()
	r := h.mustDo("GET", h.gatewayURL(app, id, "/api/status"), nil, "")
	if r.code != 200 {
		h.t.Fatalf("status: %d %s", r.code, r.body)
	}
	var st status
	r.json(h.t, &st)
	return st
}

func (h *harness) state(app, id string) string {
	h.t.Helper()
	st := h.status(app, id)
	if st.GatewayState == nil {
		return "<null>"
	}
	return *st.GatewayState
}

// shutdownsOf filters the recorded shutdowns to one machine.
func (h *harness) shutdownsOf(id string) []Shutdown {
	var out []Shutdown
	for _, sd := range h.sim.Shutdowns() {
		if sd.MachineID == id {
			out = append(out, sd)
		}
	}
	return out
}

func compactJSON(b []byte) string {
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return string(b)
	}
	return buf.String()
}
