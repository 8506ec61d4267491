package fleetsim

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	fly "github.com/superfly/fly-go"
)

// DrainSecretName is the app secret a Hermes agent reads its drain secret from.
const DrainSecretName = "HERMES_DASHBOARD_DRAIN_SECRET"

// appSecret is one app secret as Fly keeps it: the value never leaves the
// simulator; the digest is a fingerprint of it.
type appSecret struct {
	value                string
	digest               string
	createdAt, updatedAt time.Time
}

// secretDigest is the simulator's stand-in for Fly's opaque digest: equal
// values give equal digests. Clients must not assume how it is computed.
func secretDigest(v string) string {
	sum := sha256.Sum256([]byte("fleetsim-secret-digest:" + v))
	return hex.EncodeToString(sum[:8])
}

// setSecret writes one secret and returns the app's new secrets version;
// call with s.mu held.
func (a *app) setSecret(name, value string, now time.Time) *appSecret {
	if a.secrets == nil {
		a.secrets = map[string]*appSecret{}
	}
	sec := a.secrets[name]
	if sec == nil {
		sec = &appSecret{createdAt: now}
		a.secrets[name] = sec
	}
	sec.value, sec.digest, sec.updatedAt = value, secretDigest(value), now
	return sec
}

func (a *app) drainSecretValue() string {
	if sec := a.secrets[DrainSecretName]; sec != nil {
		return sec.value
	}
	return ""
}

func secretJSON(name string, sec *appSecret) fly.AppSecret {
	c, u := sec.createdAt.UTC().Format(time.RFC3339), sec.updatedAt.UTC().Format(time.RFC3339)
	return fly.AppSecret{Name: name, Digest: sec.digest, CreatedAt: &c, UpdatedAt: &u}
}

// appForSecrets finds the request's app with s.mu held, or answers 404 and
// unlocks.
func (s *Sim) appForSecrets(w http.ResponseWriter, r *http.Request) (*app, bool) {
	s.mu.Lock()
	a := s.appByName[r.PathValue("app")]
	if a == nil {
		s.mu.Unlock()
		errAppNotFound(w)
		return nil, false
	}
	return a, true
}

// handleListSecrets is GET /v1/apps/{app}/secrets: names, digests and
// times, never values (show_secrets is not honoured).
func (s *Sim) handleListSecrets(w http.ResponseWriter, r *http.Request) {
	a, ok := s.appForSecrets(w, r)
	if !ok {
		return
	}
	out := fly.ListAppSecretsResp{Secrets: []fly.AppSecret{}}
	names := make([]string, 0, len(a.secrets))
	for n := range a.secrets {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		out.Secrets = append(out.Secrets, secretJSON(n, a.secrets[n]))
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

func validSecretName(n string) bool {
	if n == "" || len(n) > 256 {
		return false
	}
	for i, c := range n {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// handleSetSecret is POST /v1/apps/{app}/secrets/{name} {"value":…}: a new
// secrets version, seen by a machine only when it is next updated with
// min_secrets_version.
func (s *Sim) handleSetSecret(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var in fly.SetAppSecretRequest
	if !validSecretName(name) {
		writeJSON(w, http.StatusBadRequest, flyError{Error: "invalid secret name"})
		return
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&in); err != nil {
		writeJSON(w, http.StatusBadRequest, flyError{Error: "invalid request body"})
		return
	}
	a, ok := s.appForSecrets(w, r)
	if !ok {
		return
	}
	now := s.clk.Now()
	sec := a.setSecret(name, in.Value, now)
	a.secretsVersion++
	out := fly.SetAppSecretResp{AppSecret: secretJSON(name, sec), Version: a.secretsVersion}
	s.mu.Unlock()
	s.cfg.Logger.Debug("fleetsim: secret set", "app", a.name, "name", name, "version", out.Version)
	writeJSON(w, http.StatusCreated, out)
}

// handleUpdateSecrets is POST /v1/apps/{app}/secrets {"values":{name: value|null}}.
func (s *Sim) handleUpdateSecrets(w http.ResponseWriter, r *http.Request) {
	var in fly.UpdateAppSecretsRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&in); err != nil || len(in.Values) == 0 {
		writeJSON(w, http.StatusBadRequest, flyError{Error: "invalid request body"})
		return
	}
	for n := range in.Values {
		if !validSecretName(n) {
			writeJSON(w, http.StatusBadRequest, flyError{Error: "invalid secret name"})
			return
		}
	}
	a, ok := s.appForSecrets(w, r)
	if !ok {
		return
	}
	now := s.clk.Now()
	out := fly.UpdateAppSecretsResp{Secrets: []fly.AppSecret{}}
	for n, v := range in.Values {
		if v == nil {
			delete(a.secrets, n)
			continue
		}
		out.Secrets = append(out.Secrets, secretJSON(n, a.setSecret(n, *v, now)))
	}
	a.secretsVersion++
	out.Version = a.secretsVersion
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// handleDeleteSecret is DELETE /v1/apps/{app}/secrets/{name}.
func (s *Sim) handleDeleteSecret(w http.ResponseWriter, r *http.Request) {
	a, ok := s.appForSecrets(w, r)
	if !ok {
		return
	}
	name := r.PathValue("name")
	if _, ok := a.secrets[name]; !ok {
		s.mu.Unlock()
		writeJSON(w, http.StatusNotFound, flyError{Error: "secret not found"})
		return
	}
	delete(a.secrets, name)
	a.secretsVersion++
	out := fly.DeleteAppSecretResp{Version: a.secretsVersion}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// checkMinSecrets refuses an update that asks for a secrets version the app
// does not have yet (Fly answers 412 before anything changes). Call with
// s.mu held.
func (s *Sim) checkMinSecrets(m *machine, min *uint64) error {
	if min != nil && *min > m.app.secretsVersion {
		return fmt.Errorf("min_secrets_version %d is newer than the app's secrets (version %d)", *min, m.app.secretsVersion)
	}
	return nil
}

// applySecrets gives an updated machine the app's secrets when the update
// asks for at least a version the app has (checkMinSecrets passed); without
// min_secrets_version the new instance keeps the secrets its machine had.
// Call with s.mu held, once the new instance replaces the running one.
func (s *Sim) applySecrets(m *machine, min *uint64) {
	if min == nil {
		return
	}
	a := m.app
	m.drainSecret, m.secretsVersion = a.drainSecretValue(), a.secretsVersion
}

// SecretsVersion returns the app's current secrets version.
func (s *Sim) SecretsVersion(appName string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mustApp(appName).secretsVersion
}

// AppDrainSecretIs reports whether the app's HERMES_DASHBOARD_DRAIN_SECRET
// is set and equals want.
func (s *Sim) AppDrainSecretIs(appName, want string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mustApp(appName).drainSecretValue() == want
}

func (s *Sim) mustApp(appName string) *app {
	a := s.appByName[appName]
	if a == nil {
		panic(fmt.Sprintf("fleetsim: no app %s", appName))
	}
	return a
}

// hasDrainRoute: a Hermes image without the drain route answers 404.
func (s *Sim) hasDrainRoute(image string) bool {
	return !slices.Contains(s.cfg.LegacyImages, image)
}
