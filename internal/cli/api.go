package cli

import (
	"log/slog"
	"net/http"
	"regexp"
	"slices"
	"strings"

	"github.com/hermes-cloud/migrator/internal/api"
	"github.com/hermes-cloud/migrator/internal/secretcheck"
	"github.com/hermes-cloud/migrator/policy"
)

// The API for NAS (internal/api) on serve's listener, under /api/v1/.
// Each caller has a token of its own:
//
//	MIGRATOR_API_TOKEN_<NAME>   the token (at least 32 random characters); runs are requested by "api:<NAME>"
//	MIGRATOR_API_CAUSES_<NAME>  optional: the causes it may ask for, comma-separated (default: all)
//
// The API is mounted only when a token is configured, on any address: it
// writes (it creates and cancels runs), so unlike the read-only web view
// it is never open, not even on loopback.
const (
	apiTokenPrefix  = "MIGRATOR_API_TOKEN_"
	apiCausesPrefix = "MIGRATOR_API_CAUSES_"
)

var apiTokenName = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)

// loadAPITokens reads the API's tokens from the environment. A bad one is
// a one-line configuration error that never shows a token.
func loadAPITokens(e *env) ([]api.Token, error) {
	if e.environ == nil {
		return nil, nil
	}
	tokens := map[string]*api.Token{}
	causes := map[string]string{}
	for _, kv := range e.environ() {
		k, v, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, apiTokenPrefix):
			name := strings.TrimPrefix(k, apiTokenPrefix)
			if !apiTokenName.MatchString(name) {
				return nil, usagef("%s: the name after %s must be letters, digits and _ (at most 64)", k, apiTokenPrefix)
			}
			tok := strings.TrimSpace(v)
			if err := secretcheck.Text("the token", tok, api.MinTokenLength); err != nil {
				return nil, usagef("%s: %v: use a random one, e.g. `openssl rand -base64 32`", k, err)
			}
			if strings.IndexFunc(tok, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0 {
				return nil, usagef("%s: want printable ASCII without spaces (it is sent as \"Authorization: Bearer …\")", k)
			}
			for other := range tokens {
				if strings.EqualFold(other, name) {
					return nil, usagef("%s and %s%s name the same caller (names are compared without case)", k, apiTokenPrefix, other)
				}
			}
			tokens[name] = &api.Token{Name: name, Secret: tok}
		case strings.HasPrefix(k, apiCausesPrefix):
			causes[strings.TrimPrefix(k, apiCausesPrefix)] = v
		}
	}
	for name, list := range causes {
		t := tokens[name]
		if t == nil {
			return nil, usagef("%s%s is set but %s%s is not: set the token, or remove the causes", apiCausesPrefix, name, apiTokenPrefix, name)
		}
		for _, c := range strings.Split(list, ",") {
			c = strings.TrimSpace(c)
			if c == "" {
				continue
			}
			cause, err := policy.ParseCause(c)
			if err != nil {
				return nil, usagef("%s%s: %v", apiCausesPrefix, name, err)
			}
			if !slices.Contains(t.Causes, cause) {
				t.Causes = append(t.Causes, cause)
			}
		}
		if len(t.Causes) == 0 {
			return nil, usagef("%s%s is empty: name the causes the token may ask for (e.g. env-edit,profile-change), or unset it for all", apiCausesPrefix, name)
		}
	}
	out := make([]api.Token, 0, len(tokens))
	for _, name := range slicesSortedKeys(tokens) {
		out = append(out, *tokens[name])
	}
	return out, nil
}

func slicesSortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// newAPI is serve's API over c (nil without tokens).
func newAPI(e *env, c *components, tokens []api.Token, log *slog.Logger) (http.Handler, error) {
	if len(tokens) == 0 {
		return nil, nil
	}
	if c.seal == nil {
		return nil, usagef("the API needs %s (env values are kept sealed, and idempotent requests digested, under it)", sealKeyEnv)
	}
	a, err := api.New(api.Config{Runs: c.orch, Store: api.StoreReader(c.store), Tokens: tokens, Digest: c.seal,
		Pin: imagePinner(e).Resolve, Logger: log, Clock: c.clock})
	if err != nil {
		return nil, usagef("%v", err)
	}
	return a, nil
}

// logAPIMode says once, at start-up, whether the API is served and to whom.
func logAPIMode(log *slog.Logger, tokens []api.Token) {
	if len(tokens) == 0 {
		log.Info("API off: no token configured", "enable", "set "+apiTokenPrefix+"<NAME> (and optionally "+apiCausesPrefix+"<NAME>)")
		return
	}
	var callers []string
	for _, t := range tokens {
		c := "all causes"
		if len(t.Causes) > 0 {
			names := make([]string, len(t.Causes))
			for i, x := range t.Causes {
				names[i] = string(x)
			}
			c = strings.Join(names, ",")
		}
		callers = append(callers, "api:"+t.Name+" ("+c+")")
	}
	log.Info("API on "+api.Prefix, "callers", callers)
}
