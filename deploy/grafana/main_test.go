package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"

	"github.com/hermes-cloud/migrator/internal/metrics/metricstest"
)

// migrator.json is what the generator makes: edit main.go, then
// `go generate ./deploy/grafana` (or `go run ./deploy/grafana`).
func TestCommittedDashboardIsGenerated(t *testing.T) {
	want, err := Render()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("migrator.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("deploy/grafana/migrator.json is not what deploy/grafana generates: run `go generate ./deploy/grafana` and commit it")
	}
	// It reads back as a Grafana dashboard (the SDK's own types, with the
	// panel and query plugins registered).
	plugins.RegisterDefaultPlugins()
	var back dashboard.Dashboard
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatalf("migrator.json does not decode as a dashboard: %v", err)
	}
	if back.Uid == nil || *back.Uid != UID || len(back.Panels) < 20 {
		t.Fatalf("decoded dashboard: uid %v, %d panels", back.Uid, len(back.Panels))
	}
}

type panel struct {
	ID      int    `json:"id"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Datasource struct {
		UID string `json:"uid"`
	} `json:"datasource"`
}

// Every query of the dashboard reads only series serve exports (its
// metrics registry), every panel has one, and the panels read the
// data source chosen at import.
func TestDashboardQueriesReadRealSeries(t *testing.T) {
	b, err := Render()
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID        string  `json:"uid"`
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name, Type string
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	exported, err := metricstest.Exported()
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Templating.List) == 0 || d.Templating.List[0].Name != "datasource" || d.Templating.List[0].Type != "datasource" {
		t.Fatalf("no datasource variable: %+v", d.Templating.List)
	}
	ids := map[int]bool{}
	var queries int
	for _, p := range d.Panels {
		if ids[p.ID] || p.ID == 0 {
			t.Errorf("panel %q: id %d is zero or used twice", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: %d queries, data source %q", p.Title, len(p.Targets), p.Datasource.UID)
		}
		for _, q := range p.Targets {
			queries++
			if err := metricstest.Check(exported, "panel "+p.Title, q.Expr); err != nil {
				t.Error(err)
			}
			if len(metricstest.MetricNames(q.Expr)) == 0 || !strings.Contains(q.Expr, "migrator_") {
				t.Errorf("panel %q: query %q reads no migrator series", p.Title, q.Expr)
			}
		}
	}
	// The panels: runs, the budget, drains by outcome, refused
	// turns, Fly and gateway calls and errors.
	for _, want := range []string{"Runs by state", "Disruption in use against the budget", "Drains ended, by outcome",
		"Refused-turn estimate", "Fly calls, by status class", "Fly errors, by call", "Gateway calls, by status class",
		"Gateway errors, by call"} {
		found := false
		for _, p := range d.Panels {
			found = found || p.Title == want
		}
		if !found {
			t.Errorf("no panel %q", want)
		}
	}
	if queries < 20 {
		t.Errorf("only %d queries checked", queries)
	}
}
