//go:build !release

package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/internal/api"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// The sandbox's last act: a customer edits their agent's Telegram bot
// token in the dashboard, and NAS asks migrator to apply it through the
// API (internal/api), exactly as it would: a token of its own (api:NAS,
// allowed env-edit and profile-change), POST /api/v1/runs with an
// Idempotency-Key, then the callback on its webhook sink (a sink with
// requested_by api:NAS) when the run ends.

const (
	sandboxAPIKey   = "nas-sandbox-edit-1"
	sandboxEditKey  = "TELEGRAM_BOT_TOKEN"
	sandboxNASSink  = "nas"
	sandboxNASURL   = "SANDBOX_NAS_WEBHOOK_URL"
	sandboxNASToken = "SANDBOX_NAS_WEBHOOK_SECRET"
)

// sandboxAPIRun is the customer's edit as the sandbox saw it.
type sandboxAPIRun struct {
	sandboxRun
	app, machineID string
	status         int    // the create's HTTP status
	answer         string // GET /api/v1/runs/{id} at the end, one machine
	callback       *sandboxNote
	served         bool // the agent booted with the new value
	leaked         bool // the value was in an answer or the callback
}

// startAPI serves the API on a loopback port of its own with a generated
// token, as serve does with MIGRATOR_API_TOKEN_NAS and
// MIGRATOR_API_CAUSES_NAS=env-edit,profile-change.
func (sb *sandbox) startAPI() (base, token string, err error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", "", err
	}
	token = base64.RawURLEncoding.EncodeToString(b)
	h, err := newAPI(sb.workerEnv, sb.comp, []api.Token{{Name: "NAS", Secret: token,
		Causes: []policy.Cause{policy.EnvEdit, policy.ProfileChange}}}, sb.comp.log)
	if err != nil {
		return "", "", fmt.Errorf("sandbox: API: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", "", fmt.Errorf("sandbox: API: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	sb.onCleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String(), token, nil
}

// customerEdit is the last act: NAS's env edit of one agent through the
// API, followed to its end, and its callback.
func (sb *sandbox) customerEdit(ctx context.Context, agent fleetsim.MachineView) (sandboxAPIRun, error) {
	out := sb.e.stdout
	res := sandboxAPIRun{app: agent.App, machineID: agent.ID}
	base, token, err := sb.startAPI()
	if err != nil {
		return res, err
	}
	vb := make([]byte, 18)
	if _, err := rand.Read(vb); err != nil {
		return res, err
	}
	value := "7071914:" + base64.RawURLEncoding.EncodeToString(vb) // the customer's new bot token
	body, _ := json.Marshal(map[string]any{"cause": "env-edit", "apps": []string{agent.App}, "env": map[string]string{sandboxEditKey: value},
		"reason": "customer edited their Telegram bot token in the dashboard"})
	fmt.Fprintf(out, "\nA customer edits %s's Telegram bot token; NAS asks migrator through the API (token api:NAS, on %s):\n", agent.App, base)
	fmt.Fprintf(out, "  POST /api/v1/runs  Idempotency-Key: %s  {\"cause\": \"env-edit\", \"apps\": [%q], \"env\": {%q: \"…\"}}\n",
		sandboxAPIKey, agent.App, sandboxEditKey)
	before, turns0 := len(sb.sim.Shutdowns()), sb.sim.Activity()
	status, raw, err := sandboxHTTP(ctx, http.MethodPost, base+"/api/v1/runs", token, body)
	if err != nil {
		return res, err
	}
	res.status = status
	res.leaked = strings.Contains(raw, value)
	var created struct {
		ID     int64  `json:"id"`
		State  string `json:"state"`
		Lane   string `json:"lane"`
		Change struct {
			EnvSet []string `json:"env_set"`
		} `json:"change"`
	}
	if status != http.StatusCreated || json.Unmarshal([]byte(raw), &created) != nil {
		return res, fmt.Errorf("sandbox: the API answered %d: %s", status, strings.TrimSpace(raw))
	}
	fmt.Fprintf(out, "  → 201 run %d (%s, %s lane, env set %s; the value is kept sealed, never shown)\n", created.ID, created.State,
		created.Lane, strings.Join(created.Change.EnvSet, ", "))
	// NAS retries (a timeout on its side): the same run, not another.
	if status, raw, err := sandboxHTTP(ctx, http.MethodPost, base+"/api/v1/runs", token, body); err != nil {
		return res, err
	} else if !strings.Contains(raw, fmt.Sprintf(`"id":%d,`, created.ID)) || status != http.StatusOK {
		return res, fmt.Errorf("sandbox: a retry with the same Idempotency-Key answered %d: %s", status, strings.TrimSpace(raw))
	}
	fmt.Fprintf(out, "  a retry with the same Idempotency-Key → 200, run %d again\n", created.ID)

	ferr := followRun(ctx, sb.followEnv, sb.comp.store, created.ID, false)
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	end, err := sb.comp.store.Q().GetRun(ctx, created.ID)
	if err != nil {
		return res, fmt.Errorf("sandbox: %w", err)
	}
	if !store.RunTerminal(end.State) {
		return res, fmt.Errorf("sandbox: run %d is still %s: %v", end.ID, end.State, ferr)
	}
	all, turns1 := sb.sim.Shutdowns(), sb.sim.Activity()
	res.sandboxRun = sandboxRun{run: end, label: "customer env edit (API)", shutdowns: all[before:],
		turns: fleetsim.ActivityStats{Refused: turns1.Refused - turns0.Refused, Interrupted: turns1.Interrupted - turns0.Interrupted}}
	_, got, err := sandboxHTTP(ctx, http.MethodGet, fmt.Sprintf("%s/api/v1/runs/%d", base, end.ID), token, nil)
	if err != nil {
		return res, err
	}
	res.answer, res.leaked = got, res.leaked || strings.Contains(got, value)
	res.served = sb.sim.Machine(agent.App, agent.ID).Env[sandboxEditKey] == value
	// The callback: NAS's webhook sink hears of the run's end.
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil && res.callback == nil {
		for _, n := range sb.nasSink.notes() {
			if id, _ := n.body.Details["run_id"].(float64); int64(id) == end.ID {
				res.callback = &n
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if res.callback != nil {
		b, _ := json.Marshal(res.callback.body)
		res.leaked = res.leaked || bytes.Contains(b, []byte(value))
	}
	return res, nil
}

// printCustomerEdit prints the edit's part of the summary and returns
// what differs from the story: the run succeeded, its one machine was
// drained (loud, per the env-edit policy) and migrated, the agent serves
// the new value, the callback came once, and the value was nowhere.
func (sb *sandbox) printCustomerEdit(r sandboxAPIRun) []string {
	out := sb.e.stdout
	var m struct {
		Machines []struct {
			App     string `json:"app"`
			Outcome string `json:"outcome"`
			Drain   *struct {
				Quiet   bool   `json:"quiet"`
				Outcome string `json:"outcome"`
			} `json:"drain"`
		} `json:"machines"`
		Change struct {
			EnvSet []string `json:"env_set"`
		} `json:"change"`
	}
	_ = json.Unmarshal([]byte(r.answer), &m)
	var p []string
	fmt.Fprintf(out, "\nCustomer env edit through the API (GET /api/v1/runs/%d; NAS's webhook sink):\n", r.run.ID)
	drain, outcome := "none", "?"
	if len(m.Machines) == 1 {
		outcome = m.Machines[0].Outcome
		if d := m.Machines[0].Drain; d != nil {
			drain = map[bool]string{true: "quiet", false: "loud"}[d.Quiet] + ", " + strings.ReplaceAll(d.Outcome, "_", " ")
		}
	}
	fmt.Fprintf(out, "  run %d %s by api:NAS: %s env set %s; drain %s; %s; %s\n", r.run.ID, r.run.Cause, r.app, strings.Join(m.Change.EnvSet, ", "),
		drain, strings.ReplaceAll(outcome, "_", " "), r.run.State)
	served := "the agent serves the new value"
	if !r.served {
		served = "the agent does NOT serve the new value"
	}
	fmt.Fprintf(out, "  %s; turns refused %d, interrupted %d\n", served, r.turns.Refused, r.turns.Interrupted)
	if c := r.callback; c != nil {
		fmt.Fprintf(out, "  callback (signature verified): %s %s run %v, idempotency key %v\n", c.body.Severity, c.body.Event,
			c.body.Details["run_id"], c.body.Details["idempotency_key"])
	} else {
		fmt.Fprintln(out, "  callback: none arrived")
	}
	if r.run.State != store.RunSucceeded {
		p = append(p, fmt.Sprintf("the customer's edit (run %d) ended %s, want succeeded", r.run.ID, r.run.State))
	}
	if outcome != string(store.OutcomeMigrated) || !strings.HasPrefix(drain, "loud") {
		p = append(p, fmt.Sprintf("the customer's edit: %s, drain %s; want migrated after a loud drain (the env-edit policy)", outcome, drain))
	}
	if !r.served {
		p = append(p, r.app+" does not serve the customer's new value")
	}
	if c := r.callback; c == nil || c.body.Event != "run.succeeded" || c.body.Details["idempotency_key"] != sandboxAPIKey {
		p = append(p, "NAS's webhook sink got no run.succeeded callback with its idempotency key")
	}
	if n := len(sb.nasSink.notes()); n != 1 {
		p = append(p, fmt.Sprintf("NAS's webhook sink got %d notifications, want 1 (its run's end, and nothing of the other runs)", n))
	}
	if r.leaked {
		p = append(p, "the customer's env value was in an API answer or the callback")
	}
	return p
}

// sandboxHTTP is one API call as NAS makes it.
func sandboxHTTP(ctx context.Context, method, url, token string, body []byte) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", sandboxAPIKey)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("sandbox: %s %s: %w", method, url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	return res.StatusCode, string(b), err
}
