package api

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"unicode"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// createBody is POST /api/v1/runs's body.
type createBody struct {
	Cause          string            `json:"cause"`
	Apps           []string          `json:"apps"`
	Image          string            `json:"image,omitempty"`
	Env            map[string]string `json:"env,omitempty"`
	UnsetEnv       []string          `json:"unset_env,omitempty"`
	SecretsVersion uint64            `json:"secrets_version,omitempty"`
	Restart        bool              `json:"restart,omitempty"`
	Reason         string            `json:"reason,omitempty"`
}

// Bounds of a request beyond the orchestrator's (orchestrator.MaxEnvKeys
// and MaxEnvValueLen, which Config.MaxBody keeps far from anyway).
const (
	maxApps      = 100
	maxReasonLen = 1000
	maxKeyLen    = 255
)

// flyApp is a Fly app name (flyctl: lower-case letters, digits, dashes).
var flyApp = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// runs is /api/v1/runs: GET lists, POST creates.
func (a *API) runs(w http.ResponseWriter, r *http.Request, t *token) int64 {
	if r.Method == http.MethodGet {
		a.listRuns(w, r, t)
		return 0
	}
	return a.createRun(w, r, t)
}

func (a *API) createRun(w http.ResponseWriter, r *http.Request, t *token) int64 {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			writeError(w, http.StatusUnsupportedMediaType, "", "Content-Type: want application/json")
			return 0
		}
	}
	key := r.Header.Get("Idempotency-Key")
	if _, given := r.Header["Idempotency-Key"]; given {
		if len(key) == 0 || len(key) > maxKeyLen || strings.IndexFunc(key, func(c rune) bool { return c < 0x21 || c > 0x7e }) >= 0 {
			writeError(w, http.StatusBadRequest, "Idempotency-Key", fmt.Sprintf("want 1 to %d printable ASCII characters without spaces", maxKeyLen))
			return 0
		}
	}
	body, status, field, msg := a.readBody(w, r)
	if status != 0 {
		writeError(w, status, field, msg)
		return 0
	}
	req, field, msg := t.request(body, key)
	if msg != "" {
		writeError(w, http.StatusBadRequest, field, msg)
		return 0
	}
	if err := orchestrator.ValidateRequest(req); err != nil {
		writeFieldError(w, err)
		return 0
	}
	if !t.may(req.Cause) {
		t.forbidden(w, string(req.Cause), "ask for")
		return 0
	}
	req.RequestDigest = a.digest(body)
	ctx := r.Context()
	if req.IdempotencyKey != "" {
		prev, err := a.cfg.Store.RunByIdempotencyKey(ctx, req.IdempotencyKey)
		switch {
		case err == nil:
			return a.repeated(w, r, t, prev, req.RequestDigest, key)
		case !errors.Is(err, store.ErrNotFound):
			a.internalError(w, r, "read the run of the idempotency key", err)
			return 0
		}
	}
	if req.Image != "" && a.cfg.Pin != nil {
		pinned, err := a.cfg.Pin(ctx, req.Image)
		if err != nil {
			var te *transport.Error
			if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
				writeError(w, http.StatusBadRequest, "image", fmt.Sprintf("%s is not in its registry", req.Image))
			} else {
				writeError(w, http.StatusBadGateway, "image", oneLine(err.Error()))
			}
			return 0
		}
		req.Image = pinned
	}
	run, created, err := a.cfg.Runs.CreateRun(ctx, req, nil)
	if err != nil {
		a.createError(w, r, req, err)
		return 0
	}
	if !created {
		// Another create with the same key won the race.
		return a.repeated(w, r, t, run, req.RequestDigest, key)
	}
	w.Header().Set("Location", fmt.Sprintf("%sruns/%d", Prefix, run.ID))
	a.writeRun(w, r, http.StatusCreated, run.ID)
	return run.ID
}

// readBody reads and decodes the body, strictly; the messages are ours,
// never the decoder's (which may quote the input: an env value).
func (a *API) readBody(w http.ResponseWriter, r *http.Request) (createBody, int, string, string) {
	var body createBody
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, a.cfg.MaxBody))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return body, http.StatusRequestEntityTooLarge, "", fmt.Sprintf("body over %d bytes", a.cfg.MaxBody)
	case err != nil:
		return body, http.StatusBadRequest, "", "could not read the body"
	case len(bytes.TrimSpace(raw)) == 0:
		return body, http.StatusBadRequest, "", "no body: want a JSON object"
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syn):
			return body, http.StatusBadRequest, "", fmt.Sprintf("the body is not JSON (at byte %d)", syn.Offset)
		case errors.As(err, &typ):
			field := typ.Field
			if f, _, ok := strings.Cut(field, "."); ok {
				field = f // env.KEY: the field is env
			}
			if field == "" {
				return body, http.StatusBadRequest, "", "want a JSON object"
			}
			return body, http.StatusBadRequest, field, fmt.Sprintf("%s: want %s", field, wantOf(field))
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
			return body, http.StatusBadRequest, name, fmt.Sprintf("unknown field %q (known: cause, apps, image, env, unset_env, secrets_version, restart, reason)",
				clip(name, 40))
		}
		return body, http.StatusBadRequest, "", "the body is not a JSON object of a run request"
	}
	if dec.More() {
		return body, http.StatusBadRequest, "", "the body holds more than one JSON value"
	}
	return body, 0, "", ""
}

// wantOf is what a field holds, for a type error.
func wantOf(field string) string {
	switch field {
	case "apps", "unset_env":
		return "a list of strings"
	case "env":
		return `an object of strings, {"KEY": "VALUE"}`
	case "secrets_version":
		return "a whole number ≥ 0"
	case "restart":
		return "true or false"
	}
	return "a string"
}

// request turns a body into the orchestrator's request, checking what
// the orchestrator leaves to its faces (the apps, the reason).
func (t *token) request(b createBody, key string) (orchestrator.RunRequest, string, string) {
	req := orchestrator.RunRequest{Cause: policy.Cause(b.Cause), TargetImage: b.Image, Image: b.Image, Env: b.Env,
		UnsetEnv: b.UnsetEnv, SecretsVersion: b.SecretsVersion, Restart: b.Restart, RequestedBy: t.name, Reason: b.Reason}
	if len(req.Env) == 0 {
		req.Env = nil
	}
	if key != "" {
		req.IdempotencyKey = t.name + ":" + key
	}
	if b.Cause == "" {
		return req, "cause", "required: one of " + causeNames()
	}
	if len(b.Apps) == 0 {
		return req, "apps", "required: the apps whose machines to change"
	}
	if len(b.Apps) > maxApps {
		return req, "apps", fmt.Sprintf("%d apps: at most %d in one request", len(b.Apps), maxApps)
	}
	seen := map[string]bool{}
	for _, app := range b.Apps {
		if !flyApp.MatchString(app) {
			return req, "apps", fmt.Sprintf("%q is not a Fly app name (lower-case letters, digits and -, at most 63)", clip(app, 70))
		}
		if seen[app] {
			return req, "apps", app + " is listed twice"
		}
		seen[app] = true
	}
	req.Selector = store.Selector{Apps: slices.Clone(b.Apps)}
	if len(b.Reason) > maxReasonLen {
		return req, "reason", fmt.Sprintf("%d bytes: at most %d", len(b.Reason), maxReasonLen)
	}
	if strings.IndexFunc(b.Reason, func(r rune) bool { return unicode.IsControl(r) }) >= 0 {
		return req, "reason", "holds a control character"
	}
	return req, "", ""
}

func causeNames() string {
	causes := policy.Causes()
	names := make([]string, len(causes))
	for i, c := range causes {
		names[i] = string(c)
	}
	return strings.Join(names, ", ")
}

// digestDomain keeps the request digest's MAC apart from any other use of
// the seal key.
const digestDomain = "migrator-api-request/v1"

// digest is the keyed digest of the request as asked (the image before
// it is pinned, the apps and unset keys as sets): "<key id>:<hex>".
func (a *API) digest(b createBody) string {
	apps := slices.Sorted(slices.Values(b.Apps))
	unset := slices.Sorted(slices.Values(b.UnsetEnv))
	env := b.Env
	if len(env) == 0 {
		env = nil
	}
	canon, _ := json.Marshal(struct { // json.Marshal sorts map keys
		Cause          string            `json:"cause"`
		Apps           []string          `json:"apps"`
		Image          string            `json:"image"`
		Env            map[string]string `json:"env"`
		UnsetEnv       []string          `json:"unset_env"`
		SecretsVersion uint64            `json:"secrets_version"`
		Restart        bool              `json:"restart"`
		Reason         string            `json:"reason"`
	}{b.Cause, apps, b.Image, env, unset, b.SecretsVersion, b.Restart, b.Reason})
	return a.cfg.Digest.ID() + ":" + hex.EncodeToString(a.cfg.Digest.MAC(digestDomain, canon))
}

// repeated answers a create whose idempotency key already made run prev:
// 200 with it when the request is the same, 422 when it is not.
func (a *API) repeated(w http.ResponseWriter, r *http.Request, t *token, prev store.Run, digest, key string) int64 {
	keyID, _, _ := strings.Cut(prev.RequestDigest, ":")
	switch {
	case prev.RequestedBy != t.name || prev.RequestDigest == "":
		// Not this caller's create (run create --idempotency-key
		// "api:NAME:…" from a shell): never hand it another's run.
		writeError(w, http.StatusUnprocessableEntity, "Idempotency-Key",
			fmt.Sprintf("Idempotency-Key %q was used for run %d, which %s did not create through the API: use another key", clip(key, 80), prev.ID, t.name))
		return 0
	case prev.RequestDigest != digest && keyID == a.cfg.Digest.ID():
		writeError(w, http.StatusUnprocessableEntity, "Idempotency-Key",
			fmt.Sprintf("Idempotency-Key %q was used for run %d with a different request: send the same request to get that run, or use a new key for a new one", clip(key, 80), prev.ID))
		return 0
	case prev.RequestDigest != digest:
		// Digested under another seal key (rotated since): the requests
		// cannot be compared; the key says it is the same.
		a.cfg.Logger.Warn("api: idempotency key's run was digested under another seal key: answering with it uncompared",
			"run_id", prev.ID, "key_id", keyID)
	}
	a.writeRun(w, r, http.StatusOK, prev.ID)
	return prev.ID
}

// writeFieldError answers a *orchestrator.FieldError with 400 naming its
// field; its text never holds an env value.
func writeFieldError(w http.ResponseWriter, err error) {
	var fe *orchestrator.FieldError
	if errors.As(err, &fe) {
		writeError(w, http.StatusBadRequest, fe.Field, oneLine(fe.Error()))
		return
	}
	writeError(w, http.StatusBadRequest, "", oneLine(err.Error()))
}

// createError answers CreateRun's errors: the request's (400), Fly's
// (502, or 400 for an app Fly does not know), or ours (500).
func (a *API) createError(w http.ResponseWriter, r *http.Request, req orchestrator.RunRequest, err error) {
	var fe *orchestrator.FieldError
	var only *orchestrator.ExcludedOnlyError
	switch {
	case errors.As(err, &fe):
		writeFieldError(w, err)
	case errors.As(err, &only):
		writeError(w, http.StatusBadRequest, "apps", oneLine(err.Error()))
	case errors.Is(err, orchestrator.ErrNothingSelected):
		writeError(w, http.StatusBadRequest, "apps", fmt.Sprintf("%s: no machines", strings.Join(req.Selector.Apps, ", ")))
	case flymachines.IsNotFound(err):
		writeError(w, http.StatusBadRequest, "apps", "Fly knows no such app: "+oneLine(err.Error()))
	case errors.Is(err, orchestrator.ErrNoSealKey):
		a.internalError(w, r, "create the run", err)
	case isFly(err):
		writeError(w, http.StatusBadGateway, "", "the Fly API: "+oneLine(err.Error()))
	default:
		a.internalError(w, r, "create the run", err)
	}
}

func isFly(err error) bool {
	var ae *flymachines.APIError
	return errors.As(err, &ae)
}

// oneLine is err's text on one bounded line.
func oneLine(s string) string {
	return clip(strings.Join(strings.Fields(s), " "), 500)
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func utf8RuneStart(b byte) bool { return b&0xC0 != 0x80 }
