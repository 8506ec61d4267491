package fleetsim

import (
	"net/http"

	fly "github.com/superfly/fly-go"
)

// Changes other than an image, as Fly applies them:
//
//   - config.env: an update stores the config as sent (handleUpdate), and
//     the new instance boots with it: the agent sees its new env after the
//     recreate (MachineView.Env). An agent can be made to fail with a
//     given env: RejectEnv parks a platform (state "fatal", the gateway
//     "degraded") on every gateway booted with that value, as Telegram
//     refusing a bad bot token makes hermes-agent park telegram
//     (gateway/run_startup.py: a non-retryable platform error at boot).
//   - App secrets (secrets.go): one version per app, answered only by
//     writes (fly-go v0.9.3 secrets_types.go: SetAppSecretResp,
//     UpdateAppSecretsResp and DeleteAppSecretResp carry "version";
//     ListAppSecretsResp does not); an update with min_secrets_version N
//     gives the new instance the app's secrets (412 when N is newer than
//     the app's).
//   - A restart: POST /v1/apps/{app}/machines/{id}/restart (fly-go's
//     flaps.Restart: ?force_stop=&timeout=&signal=, no body, no
//     min_secrets_version in fly.RestartMachineInput) stops the running
//     VM (a SIGTERM, honouring the drain marker as any stop does) and
//     starts the same instance again: the instance id is kept (Fly's
//     docs, "Restart apps or Machines": restarting reboots the root file
//     system afresh, as `fly deploy` or `fly machine update` does, without
//     updating anything), the config and secrets version are kept, and the
//     boot is a new epoch (a new gateway process). Fly records it in the
//     machine's events; the simulator writes an exit (requested) and a
//     "restart" event from source "user", then the start. An update, by
//     contrast, always makes a new instance id, even of an unchanged
//     config. A machine that is not running (stopped, suspended) or is on
//     its way between states is answered 412 like a start: no source says
//     what Fly does with those, so the simulator refuses rather than
//     inventing a behaviour.

// envReject is a value a platform rejects at boot.
type envReject struct {
	key, value, platform, code string
}

// RejectEnv makes gateways booted with config.env[key] == value fail
// platform at boot with a non-retryable error (state "fatal", errorCode,
// the gateway "degraded"): a bot token Telegram refuses. errorCode
// defaults to "<platform>_token_invalid".
func (s *Sim) RejectEnv(key, value, platform, errorCode string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if errorCode == "" {
		errorCode = platform + "_token_invalid"
	}
	s.rejectEnv = append(s.rejectEnv, envReject{key: key, value: value, platform: platform, code: errorCode})
}

// envRejected reports whether platform rejects m's env, with its error
// code. Call with s.mu held.
func (s *Sim) envRejected(m *machine, platform string) (string, bool) {
	for _, r := range s.rejectEnv {
		if r.platform == platform && m.config.Env[r.key] == r.value {
			if _, ok := m.config.Env[r.key]; ok {
				return r.code, true
			}
		}
	}
	return "", false
}

// handleRestart is POST …/{id}/restart: the same instance, stopped and
// started again (a new epoch, the same config and instance id).
func (s *Sim) handleRestart(w http.ResponseWriter, r *http.Request) {
	m, now, ok := s.mutableMachine(w, r)
	if !ok {
		return
	}
	if m.state != vmStarted {
		state := apiState(m)
		s.mu.Unlock()
		writeJSON(w, http.StatusPreconditionFailed, flyError{Error: "unable to restart machine: machine is " + state})
		return
	}
	s.sigterm(m, now, "restart") // the signal flaps may name is not modelled: a stop is a SIGTERM
	m.addEvent(&fly.MachineEvent{Type: "restart", Status: "restarting", Source: "user", Timestamp: now.UnixMilli()})
	s.boot(m, now, "starting")
	s.touched(m, now)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}
