package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

const testAPIToken = "Qm9va3MtYXJlLWZvci1yZWFkaW5nLTIwMjYtMTItMDc"

func TestLoadAPITokens(t *testing.T) {
	envOf := func(kv ...string) *env {
		return &env{getenv: func(string) string { return "" }, environ: func() []string { return kv }}
	}
	toks, err := loadAPITokens(envOf("MIGRATOR_API_TOKEN_NAS="+testAPIToken, "MIGRATOR_API_CAUSES_NAS=env-edit, profile-change",
		"MIGRATOR_API_TOKEN_OPS="+testAPIToken+"x", "HOME=/root"))
	if err != nil {
		t.Fatal(err)
	}
	if len(toks) != 2 || toks[0].Name != "NAS" || fmt.Sprint(toks[0].Causes) != "[env-edit profile-change]" || toks[1].Name != "OPS" ||
		len(toks[1].Causes) != 0 {
		t.Fatalf("tokens %+v", toks)
	}
	if toks, err := loadAPITokens(&env{getenv: os.Getenv}); err != nil || toks != nil {
		t.Fatalf("no environ: %v %v", toks, err)
	}
	for name, kv := range map[string][]string{
		"short":           {"MIGRATOR_API_TOKEN_NAS=abc"},
		"made up":         {"MIGRATOR_API_TOKEN_NAS=" + strings.Repeat("password", 5)},
		"space":           {"MIGRATOR_API_TOKEN_NAS=" + testAPIToken[:20] + " " + testAPIToken[20:]},
		"bad name":        {"MIGRATOR_API_TOKEN_N-S=" + testAPIToken},
		"empty name":      {"MIGRATOR_API_TOKEN_=" + testAPIToken},
		"causes alone":    {"MIGRATOR_API_CAUSES_NAS=env-edit"},
		"unknown cause":   {"MIGRATOR_API_TOKEN_NAS=" + testAPIToken, "MIGRATOR_API_CAUSES_NAS=env-edit,nope"},
		"empty causes":    {"MIGRATOR_API_TOKEN_NAS=" + testAPIToken, "MIGRATOR_API_CAUSES_NAS= , "},
		"same name twice": {"MIGRATOR_API_TOKEN_NAS=" + testAPIToken, "MIGRATOR_API_TOKEN_nas=" + testAPIToken + "y"},
	} {
		_, err := loadAPITokens(envOf(kv...))
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if strings.Contains(err.Error(), testAPIToken) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %q shows the token or is not one line", name, err)
		}
	}
}

// serve beyond loopback: without a token the API is not there (404, one
// start-up line says how to enable it); with one, an env edit is created
// through it, runs, and is read back; the serve log holds neither the
// token nor the env value.
func TestServeAPI(t *testing.T) {
	t.Parallel()
	listen := beyondLoopback(t)
	w := newSimWorld(t, fleetsim.Config{Apps: 3, Seed: 21}, 50, httpAddrEnv+"="+listen)
	closed := w.startServe("api-closed")
	base := "http://" + dialable(serveAddr(t, closed))
	if code, _, body := do(t, base+"/api/v1/runs", "Bearer "+testAPIToken); code != http.StatusNotFound || !strings.Contains(body, "MIGRATOR_API_TOKEN_") {
		t.Fatalf("no token: /api/v1/runs = %d %s, want 404 saying how to enable it", code, body)
	}
	if off := logLines(t, closed, "API off"); len(off) != 1 {
		t.Errorf("start-up lines about the API: %v", off)
	}

	p := w.startServe("api", "MIGRATOR_API_TOKEN_NAS="+testAPIToken, "MIGRATOR_API_CAUSES_NAS=env-edit,profile-change")
	base = "http://" + dialable(serveAddr(t, p))
	const value = "tg-0123456789-never-logged"
	body, _ := json.Marshal(map[string]any{"cause": "env-edit", "apps": []string{w.sim.Apps()[0]}, "env": map[string]string{"TELEGRAM_BOT_TOKEN": value}})
	post := func(tok string, b []byte) (int, map[string]any) {
		req, _ := http.NewRequest(http.MethodPost, base+"/api/v1/runs", bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", "serve-test-1")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(res.Body).Decode(&m)
		return res.StatusCode, m
	}
	code, m := post(testAPIToken, body)
	if code != http.StatusCreated || m["requested_by"] != "api:NAS" {
		t.Fatalf("create: %d %v", code, m)
	}
	id := int64(m["id"].(float64))
	if code, again := post(testAPIToken, body); code != http.StatusOK || int64(again["id"].(float64)) != id {
		t.Fatalf("retry: %d %v", code, again)
	}
	if code, _ := post(testAPIToken+"x", body); code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d", code)
	}
	img, _ := json.Marshal(map[string]any{"cause": string(policy.ImageMigration), "apps": []string{w.sim.Apps()[0]}, "image": "registry.fly.io/hermes-agent:v9"})
	if code, _ := post(testAPIToken, img); code != http.StatusForbidden {
		t.Fatalf("a cause the token may not ask for: %d", code)
	}
	if r := w.waitRun(id, 2*time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run %d: %s %s", id, r.State, r.StateReason)
	}
	code, _, got := do(t, fmt.Sprintf("%s/api/v1/runs/%d", base, id), "Bearer "+testAPIToken)
	if code != http.StatusOK || !strings.Contains(got, `"state":"succeeded"`) || !strings.Contains(got, `"TELEGRAM_BOT_TOKEN"`) ||
		strings.Contains(got, value) {
		t.Fatalf("GET: %d %s", code, got)
	}
	if on := logLines(t, p, "API on"); len(on) != 1 || !strings.Contains(fmt.Sprint(on[0]["callers"]), "api:NAS (env-edit,profile-change)") {
		t.Errorf("start-up lines about the API: %v", on)
	}
	if reqs := logLines(t, p, "api request"); len(reqs) < 4 {
		t.Errorf("%d request lines, want one per request", len(reqs))
	}
	data, err := os.ReadFile(p.log)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte(value)) || bytes.Contains(data, []byte(testAPIToken)) {
		t.Fatal("serve's log holds the env value or the token")
	}
}
