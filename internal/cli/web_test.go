package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// serve serves the web view on its HTTP address beside /metrics, behind the
// basic-auth setting when it is set (health and metrics stay open for Fly's
// checks and scrapes), with no secret in a page.
func TestServeWebView(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t, fleetsim.Config{Apps: 3, Seed: 12}, 50, webBasicAuthEnv+"=oncall:"+testWebPassword)
	p := w.startServe("web")
	base := "http://" + serveAddr(t, p)
	run, _, err := w.orch.CreateRun(context.Background(), orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: serveTestImage,
		MaxUnavailable: "3", RequestedBy: "test", Selector: store.Selector{Org: w.sim.Org()}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := w.waitRun(run.ID, 2*time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run %s: %s", r.State, r.StateReason)
	}
	for _, path := range []string{"/healthz", "/metrics"} {
		if code, _ := httpGet(t, base+path); code != http.StatusOK {
			t.Errorf("GET %s = %d without credentials, want 200", path, code)
		}
	}
	if code, _ := httpGet(t, base+"/runs"); code != http.StatusUnauthorized {
		t.Errorf("GET /runs without credentials = %d, want 401", code)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	for path, want := range map[string]string{
		"/runs":                         fmt.Sprintf(`<a href="/runs/%d">%d</a>`, run.ID, run.ID),
		fmt.Sprintf("/runs/%d", run.ID): "3/3 done",
		fmt.Sprintf("/runs/%d/timeline.json", run.ID): `"state":"succeeded"`,
		fmt.Sprintf("/history?run=%d", run.ID):        "quiesced",
		fmt.Sprintf("/history.csv?run=%d", run.ID):    "run_id,cause,requested_by",
		"/agents/" + w.sim.Apps()[0]:                  w.sim.Apps()[0],
		"/static/app.js":                              "textContent",
	} {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		req.SetBasicAuth("oncall", testWebPassword)
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, res)
		if res.StatusCode != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("GET %s = %d, want 200 with %q", path, res.StatusCode, want)
		}
		findSecrets(t, "GET "+path, body, w.secrets())
		if strings.Contains(body, testWebPassword) {
			t.Errorf("GET %s shows the basic-auth password", path)
		}
	}
}

func readAll(t *testing.T, res *http.Response) string {
	t.Helper()
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
