package cli

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
)

// scrapeSeries reads serve's /metrics (retrying the 503 a flood may get)
// and returns the value of every series whose name and labels start with
// one of prefixes.
func scrapeSeries(t *testing.T, base string, prefixes ...string) map[string]float64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusCode == http.StatusServiceUnavailable && time.Now().Before(deadline) {
			res.Body.Close()
			time.Sleep(10 * time.Millisecond)
			continue
		}
		defer res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("GET /metrics = %d", res.StatusCode)
		}
		out := map[string]float64{}
		sc := bufio.NewScanner(res.Body)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			for _, p := range prefixes {
				if strings.HasPrefix(line, p) {
					i := strings.LastIndexByte(line, ' ')
					v, err := strconv.ParseFloat(line[i+1:], 64)
					if err != nil {
						t.Fatalf("metrics line %q: %v", line, err)
					}
					out[line[:i]] = v
				}
			}
		}
		return out
	}
}

// A flood of /readyz and /metrics from one client, many requests at once,
// never takes a connection of the workers' pool: readiness and the
// database gauges read through the probes' pool (at most two connections,
// seen in pg_stat_activity by its application_name), each at most every two
// seconds whatever the rate; the workers' pool hands out no more
// connections than River's own polling asks for. (Before, every /readyz
// took two of the workers' connections' turns.) A benchmark measures the
// effect on a run's latency (bench --scenario flood).
func TestServeFloodTakesNoWorkerConnection(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t, fleetsim.Config{Apps: 4, Seed: 3}, 50)
	p := w.startServe("a")
	base := "http://" + serveAddr(t, p)
	const (
		workers = `migrator_db_pool_acquires_total{pool="workers"}`
		probes  = `migrator_db_pool_acquires_total{pool="probes"}`
	)
	before := scrapeSeries(t, base, "migrator_db_pool_acquires_total")
	if _, ok := before[workers]; !ok {
		t.Fatalf("no workers' pool series in /metrics: %v", before)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	var sent, ready, busy atomic.Int64
	var bad sync.Map
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 5 * time.Second}
	var wg sync.WaitGroup
	for i := range 32 {
		path := "/readyz"
		if i%2 == 1 {
			path = "/metrics"
		}
		wg.Go(func() {
			for ctx.Err() == nil {
				res, err := client.Get(base + path)
				if err != nil {
					if ctx.Err() == nil {
						bad.Store(path+": "+err.Error(), true)
					}
					return
				}
				body, _ := io.ReadAll(res.Body)
				res.Body.Close()
				sent.Add(1)
				switch {
				case path == "/readyz" && res.StatusCode == http.StatusOK && strings.TrimSpace(string(body)) == "ready":
					ready.Add(1)
				case path == "/metrics" && res.StatusCode == http.StatusServiceUnavailable:
					busy.Add(1) // more scrapes at once than MaxScrapesInFlight
				case res.StatusCode != http.StatusOK:
					bad.Store(path+": HTTP "+strconv.Itoa(res.StatusCode), true)
				}
			}
		})
	}
	// Meanwhile: the probes' connections, as PostgreSQL sees them.
	peakProbes := 0
	for ctx.Err() == nil {
		var n int
		if err := w.st.Pool().QueryRow(context.Background(),
			`SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()`, probesAppName).Scan(&n); err != nil {
			t.Fatal(err)
		}
		peakProbes = max(peakProbes, n)
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	bad.Range(func(k, _ any) bool { t.Errorf("flood request: %v", k); return true })
	after := scrapeSeries(t, base, "migrator_db_pool_acquires_total")
	n, dWorkers, dProbes := sent.Load(), after[workers]-before[workers], after[probes]-before[probes]
	t.Logf("%d requests in 4s (%d ready, %d metrics refused as busy); workers' pool +%.0f acquires, probes' +%.0f; probes' connections at most %d",
		n, ready.Load(), busy.Load(), dWorkers, dProbes, peakProbes)
	switch {
	case n < 1000:
		t.Fatalf("only %d requests: not a flood", n)
	case ready.Load() == 0:
		t.Fatal("/readyz never answered ready")
	case peakProbes > probeConns:
		t.Errorf("the probes' pool held %d connections, more than its %d", peakProbes, probeConns)
	case dProbes > 100:
		t.Errorf("the flood cost the probes' pool %.0f acquires in 4s: readiness and the gauges are not read at most every 2s", dProbes)
	case dWorkers > float64(n)/10:
		t.Errorf("the workers' pool handed out %.0f connections during %d requests: the flood reaches it", dWorkers, n)
	}
}
