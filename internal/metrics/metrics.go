// Package metrics exposes what a migrator replica does as Prometheus
// metrics, on a registry of its own (never the global default).
//
// Two kinds of numbers:
//
//   - Events of this replica, counted as they happen: machine migrations by
//     outcome, drains by quiet flag and outcome with their wait, forced
//     drains, deferred machines, auto-update ticks, and every Fly and
//     gateway HTTP attempt by kind and status class. The orchestrator
//     reports through its Observer interface (Metrics implements it), the
//     adapters through their callrec Observe hooks (ObserveFly,
//     ObserveGateway). Sum them across replicas. Only machines a worker
//     walked count: those already up to date when the run was planned, or
//     cancelled before they started, are in the database, not here.
//   - Fleet-wide state, read from the database at scrape time through a
//     Source: runs by state and budget slots in use. Every replica reports
//     the same value; aggregate with max, not sum.
//
// Series (all prefixed migrator_):
//
//	runs{state}                          gauge     runs in each state
//	budget_slots_in_use                  gauge     machines holding a budget slot
//	fleet_cap                            gauge     the fleet-wide budget this replica enforces (0: none)
//	machine_migrations_total{outcome}    counter   machine migrations ended, by outcome
//	drains_total{quiet,outcome}          counter   drains ended (quiet="true": no home-channel broadcast)
//	drain_wait_seconds{quiet}            histogram first begin → quiescence, gateway down or deadline
//	drains_forced_total                  counter   drains forced at the deadline with work in flight
//	machines_deferred_total              counter   machines deferred (outside the window, never idle, or at the deadline)
//	peeks_total{result}                  counter   status reads before a drain: idle, busy, unreadable
//	idle_wait_seconds{result}            histogram first peek → idle (begun), busy_drained or busy_deferred
//	rollbacks_total{phase,signal}        counter   new instances given up, in verify or a canary's bake, by deciding signal
//	canary_bakes_total{result}           counter   canary bakes ended: clean, regressed, cut_short
//	canary_bake_seconds{result}          histogram how long a canary was watched before its bake ended
//	canaries_baking                      gauge     canaries in their bake now, fleet-wide
//	auto_update_ticks_total{outcome}     counter   auto-update ticks by what they did
//	fly_calls_total{kind,code}           counter   Fly Machines API attempts (code 2xx, 3xx, 4xx, 429, 5xx, or "error")
//	gateway_calls_total{kind,code}       counter   gateway drain endpoint attempts (same codes)
//	notification_deliveries_total{kind,result} counter notification delivery attempts by sink kind: delivered, retry, failed
//
// and, for the alert rules (deploy/prometheus/alerts.yml), fleet-wide from
// the database at scrape time through an OnCallSource:
//
//	run_paused_since_timestamp_seconds            gauge   when the run paused longest ago was paused (absent: none paused)
//	auto_update_last_success_timestamp_seconds    gauge   the last auto-update tick that did its job (absent before the first, or without auto-update)
//	auto_update_last_run_created_timestamp_seconds gauge  when the last auto-update run was created (absent: none yet, or without auto-update)
//	auto_update_first_tick_timestamp_seconds      gauge   the first auto-update tick ever, whatever it did (absent before the first, or without auto-update)
//	agents_left_draining                          gauge   machine migrations whose drain could not be cancelled in the last hour
//	lease_release_failures_total                  counter Fly lease releases that finally failed (every replica, ever)
//	notifications{kind,state}                     gauge   the notifications outbox by sink kind and state (pending, delivered, failed, dropped)
//	notification_oldest_pending_timestamp_seconds gauge   when the oldest undelivered notification was written (absent: none pending)
//
// the statistics of this replica's database pools (WatchPool: serve's
// "workers" and "probes"), db_pool_acquires_total, db_pool_empty_acquires_total,
// db_pool_acquire_seconds_total, db_pool_empty_acquire_wait_seconds_total,
// db_pool_canceled_acquires_total, db_pool_conns{state}, db_pool_max_conns,
// all labelled pool (probes.go),
//
// plus the Go runtime and process collectors. The database gauges are read
// at most every two seconds (StoreSource) and at most MaxScrapesInFlight
// scrapes are served at once: /metrics is open to the whole private network.
package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/hermes-cloud/migrator/internal/callrec"
	"github.com/hermes-cloud/migrator/internal/health"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/store"
)

const namespace = "migrator"

// Source reads fleet-wide state at scrape time (orchestrator.Orchestrator).
type Source interface {
	RunsByState(ctx context.Context) (map[string]int, error)
	SlotsInUse(ctx context.Context) (int, error)
	CanariesBaking(ctx context.Context) (int, error)
}

var _ Source = (*orchestrator.Orchestrator)(nil)

// OnCallSource reads what the alert rules need at scrape time
// (orchestrator.Orchestrator).
type OnCallSource interface {
	OnCallStatus(ctx context.Context) (store.OnCallStatus, error)
}

var _ OnCallSource = (*orchestrator.Orchestrator)(nil)

// Config configures Metrics.
type Config struct {
	// Source feeds the runs and budget gauges. Optional: without it those
	// series are absent.
	Source Source
	// OnCall feeds the on-call gauges (paused runs, auto-update, agents
	// left draining, lease release failures, notifications). Optional.
	OnCall OnCallSource
	// FleetCap is the replica's fleet-wide budget (MIGRATOR_FLEET_CAP; 0:
	// no cap), exported as migrator_fleet_cap so dashboards draw the slots
	// in use against it.
	FleetCap int
	// AutoUpdate says this replica runs the auto-update cron: only then
	// are the auto-update gauges exported (an alert on a cron that is not
	// configured would fire forever).
	AutoUpdate bool
	// ScrapeTimeout bounds the Source's reads of one scrape. Default 5s.
	ScrapeTimeout time.Duration
	// Logger receives scrape errors. Default: discard.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.ScrapeTimeout == 0 {
		c.ScrapeTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	if c.ScrapeTimeout < 0 {
		return fmt.Errorf("scrape timeout %s is negative", c.ScrapeTimeout)
	}
	return nil
}

// Metrics holds one replica's collectors. Its methods are safe for
// concurrent use.
type Metrics struct {
	reg      *prometheus.Registry
	log      *slog.Logger
	machines *prometheus.CounterVec
	drains   *prometheus.CounterVec
	wait     *prometheus.HistogramVec
	forced   prometheus.Counter
	deferred prometheus.Counter
	ticks    *prometheus.CounterVec
	fly      *prometheus.CounterVec
	gateway  *prometheus.CounterVec
	peeks    *prometheus.CounterVec
	idleWait *prometheus.HistogramVec
	notify   *prometheus.CounterVec
	rollback *prometheus.CounterVec
	bakes    *prometheus.CounterVec
	bakeTime *prometheus.HistogramVec
}

var _ orchestrator.Observer = (*Metrics)(nil)

// Known label values, set to zero up front so every series exists (and
// rate() works) before the first event.
var (
	runStates = labels(store.RunPending, store.RunRunning, store.RunPaused, store.RunCancelling,
		store.RunSucceeded, store.RunFailed, store.RunCancelled)
	outcomes = labels(store.OutcomeMigrated, store.OutcomeRolledBack, store.OutcomeFailed,
		store.OutcomeSkippedUpToDate, store.OutcomeDeferred, store.OutcomeCancelled)
	drainOutcomes = labels(store.DrainQuiesced, store.DrainGatewayDown, store.DrainDeadlineForced,
		store.DrainDeadlineDeferred, store.DrainCancelled, store.DrainFailed)
	tickOutcomes = []string{orchestrator.AutoUpdateCreated, orchestrator.AutoUpdateExists,
		orchestrator.AutoUpdateInProgress, orchestrator.AutoUpdateUpToDate, orchestrator.AutoUpdateNoMachines,
		orchestrator.AutoUpdateNoChannel, "error"}
	// sinkKinds and notifyStates are notify.Kinds and the outbox states
	// (not imported: notify does not need metrics, nor metrics notify).
	sinkKinds    = []string{"slack", "pagerduty", "webhook"}
	notifyStates = store.NotifyStates
)

// DrainWaitBuckets span a drain's possible waits: seconds to the policy's
// 24h maximum.
var DrainWaitBuckets = []float64{1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 2700, 3600, 7200, 14400, 43200, 86400}

// New returns Metrics with every collector registered.
func New(cfg Config) (*Metrics, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("metrics config: %w", err)
	}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		log: cfg.Logger,
		machines: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "machine_migrations_total",
			Help: "Machine migrations ended on this replica, by outcome."}, []string{"outcome"}),
		drains: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "drains_total",
			Help: "Drains ended on this replica, by quiet flag (true: no home-channel broadcast) and outcome."},
			[]string{"quiet", "outcome"}),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: "drain_wait_seconds",
			Help:    "Seconds from a drain's first begin to quiescence, the gateway stopping, or the deadline.",
			Buckets: DrainWaitBuckets}, []string{"quiet"}),
		forced: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "drains_forced_total",
			Help: "Drains forced at the deadline with agents possibly still working."}),
		deferred: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "machines_deferred_total",
			Help: "Machine migrations deferred (outside the maintenance window, never idle, or at the deadline)."}),
		ticks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "auto_update_ticks_total",
			Help: "Auto-update ticks worked on this replica, by what they did."}, []string{"outcome"}),
		fly: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "fly_calls_total",
			Help: "Fly Machines API HTTP attempts, by operation and status class (error: no response)."},
			[]string{"kind", "code"}),
		gateway: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "gateway_calls_total",
			Help: "Gateway drain endpoint HTTP attempts, by operation and status class (error: no response)."},
			[]string{"kind", "code"}),
		peeks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "peeks_total",
			Help: "Status reads of an agent before its drain (idle-first begin), by what they found."}, []string{"result"}),
		idleWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: "idle_wait_seconds",
			Help:    "Seconds from the first status read before a drain to the end of the wait for an idle moment, by how it ended.",
			Buckets: DrainWaitBuckets}, []string{"result"}),
		notify: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "notification_deliveries_total",
			Help: "Notification delivery attempts on this replica, by sink kind and result (delivered, retry, failed)."},
			[]string{"kind", "result"}),
		rollback: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "rollbacks_total",
			Help: "New instances given up on this replica, in verify or in a canary's bake, by the signal that decided."},
			[]string{"phase", "signal"}),
		bakes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "canary_bakes_total",
			Help: "Canary bakes ended on this replica: clean (the run widens), regressed (rolled back, run paused), cut_short (run cancelled)."},
			[]string{"result"}),
		bakeTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: "canary_bake_seconds",
			Help:    "Seconds a canary was watched in its bake, by how the bake ended.",
			Buckets: DrainWaitBuckets}, []string{"result"}),
	}
	for _, r := range []string{orchestrator.BakeClean, orchestrator.BakeRegressed, orchestrator.BakeCut} {
		m.bakes.WithLabelValues(r)
		m.bakeTime.WithLabelValues(r)
	}
	for _, o := range outcomes {
		m.machines.WithLabelValues(o)
	}
	for _, r := range []string{orchestrator.PeekIdle, orchestrator.PeekBusy, orchestrator.PeekQuietWait, orchestrator.PeekUnreadable} {
		m.peeks.WithLabelValues(r)
	}
	for _, r := range []string{orchestrator.IdleFound, orchestrator.IdleBusyDrained, orchestrator.IdleBusyDeferred} {
		m.idleWait.WithLabelValues(r)
	}
	for _, q := range []string{"true", "false"} {
		m.wait.WithLabelValues(q)
		for _, o := range drainOutcomes {
			m.drains.WithLabelValues(q, o)
		}
	}
	for _, o := range tickOutcomes {
		m.ticks.WithLabelValues(o)
	}
	for _, k := range sinkKinds {
		for _, r := range []string{"delivered", "retry", "failed"} {
			m.notify.WithLabelValues(k, r)
		}
	}
	cs := []prometheus.Collector{m.machines, m.drains, m.wait, m.forced, m.deferred, m.ticks, m.fly, m.gateway, m.peeks, m.idleWait,
		m.notify, m.rollback, m.bakes, m.bakeTime,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})}
	if cfg.Source != nil {
		cs = append(cs, newStateCollector(cfg.Source, cfg.ScrapeTimeout))
	}
	if cfg.OnCall != nil {
		cs = append(cs, newOnCallCollector(cfg.OnCall, cfg.AutoUpdate, cfg.ScrapeTimeout))
	}
	fleetCap := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "fleet_cap",
		Help: "Most machines disrupted at once across all runs and replicas (MIGRATOR_FLEET_CAP; 0: no cap)."})
	fleetCap.Set(float64(cfg.FleetCap))
	cs = append(cs, fleetCap)
	for _, c := range cs {
		if err := m.reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

// Registry is the registry the collectors are on (tests, extra collectors).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the text exposition format. A failed database read leaves
// out the fleet-wide gauges and is logged; the other series are served.
// The handler gathers at most once every GatherEvery, for however many
// requests (health.Memo): /metrics is open to the whole private network,
// and a gather (the Go runtime's and /proc's series, the database gauges)
// costs about a millisecond of CPU, so a flood must not buy one per
// request. A scraper asking every 15 s never sees the difference.
func (m *Metrics) Handler() http.Handler {
	gathered := health.NewMemo(GatherEvery, 0, nil, func(context.Context) ([]*dto.MetricFamily, error) { return m.reg.Gather() })
	g := prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return gathered.Get(context.Background()) })
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:      printlnLogger{m.log},
		ErrorHandling: promhttp.ContinueOnError,
		Timeout:       30 * time.Second,
		// Open to every machine of the organization: a flood is answered
		// 503 beyond a few scrapes at once (probes.go), and buys no gzip
		// (three quarters of a scrape's CPU; the page is ~20 KB).
		MaxRequestsInFlight: MaxScrapesInFlight,
		DisableCompression:  true,
	})
}

// labels are the store's states or outcomes as label values.
func labels[T ~string](vs ...T) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = string(v)
	}
	return out
}

// MachineDone implements orchestrator.Observer.
func (m *Metrics) MachineDone(outcome store.Outcome) {
	m.machines.WithLabelValues(string(outcome)).Inc()
	if outcome == store.OutcomeDeferred {
		m.deferred.Inc()
	}
}

// DrainEnded implements orchestrator.Observer.
func (m *Metrics) DrainEnded(quiet bool, outcome store.DrainOutcome, wait time.Duration) {
	q := strconv.FormatBool(quiet)
	m.drains.WithLabelValues(q, string(outcome)).Inc()
	m.wait.WithLabelValues(q).Observe(wait.Seconds())
	if outcome == store.DrainDeadlineForced {
		m.forced.Inc()
	}
}

// AutoUpdateTick implements orchestrator.Observer.
func (m *Metrics) AutoUpdateTick(outcome string) { m.ticks.WithLabelValues(outcome).Inc() }

// Peeked implements orchestrator.Observer.
func (m *Metrics) Peeked(result string) { m.peeks.WithLabelValues(result).Inc() }

// IdleWaitEnded implements orchestrator.Observer.
func (m *Metrics) IdleWaitEnded(result string, wait time.Duration) {
	m.idleWait.WithLabelValues(result).Observe(wait.Seconds())
}

// NotificationDelivery counts one notification delivery attempt
// (notify.Config.Observe).
func (m *Metrics) NotificationDelivery(kind, result string) {
	m.notify.WithLabelValues(kind, result).Inc()
}

// RollbackStarted implements orchestrator.Observer.
func (m *Metrics) RollbackStarted(phase, signal string) {
	m.rollback.WithLabelValues(phase, signal).Inc()
}

// BakeEnded implements orchestrator.Observer.
func (m *Metrics) BakeEnded(result string, d time.Duration) {
	m.bakes.WithLabelValues(result).Inc()
	m.bakeTime.WithLabelValues(result).Observe(d.Seconds())
}

// ObserveFly counts one Fly API attempt (flymachines.Config.Observe).
func (m *Metrics) ObserveFly(c callrec.Call) { m.fly.WithLabelValues(c.Kind, codeClass(c)).Inc() }

// ObserveGateway counts one gateway attempt (gateway.Config.Observe).
func (m *Metrics) ObserveGateway(c callrec.Call) {
	m.gateway.WithLabelValues(c.Kind, codeClass(c)).Inc()
}

// codeClass keeps the label set small: "2xx" … "5xx", "429" apart from
// the other 4xx (rate limiting is what the alert rules watch), or "error"
// when no response arrived.
func codeClass(c callrec.Call) string {
	if c.Status < 100 || c.Status > 599 {
		return "error"
	}
	if c.Status == 429 {
		return "429"
	}
	return strconv.Itoa(c.Status/100) + "xx"
}

// stateCollector reads the fleet-wide gauges from the database per scrape,
// so they are never stale and cost nothing between scrapes.
type stateCollector struct {
	src     Source
	timeout time.Duration
	runs    *prometheus.Desc
	slots   *prometheus.Desc
	baking  *prometheus.Desc
}

func newStateCollector(src Source, timeout time.Duration) *stateCollector {
	return &stateCollector{src: src, timeout: timeout,
		runs: prometheus.NewDesc(prometheus.BuildFQName(namespace, "", "runs"),
			"Runs in each state, fleet-wide (the same on every replica).", []string{"state"}, nil),
		slots: prometheus.NewDesc(prometheus.BuildFQName(namespace, "", "budget_slots_in_use"),
			"Machines holding a disruption budget slot, fleet-wide (the same on every replica).", nil, nil),
		baking: prometheus.NewDesc(prometheus.BuildFQName(namespace, "", "canaries_baking"),
			"Canaries in their bake, holding their runs back, fleet-wide (the same on every replica).", nil, nil),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.runs
	ch <- c.slots
	ch <- c.baking
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	byState, err := c.src.RunsByState(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.runs, fmt.Errorf("read runs by state: %w", err))
	} else {
		for _, s := range runStates {
			ch <- prometheus.MustNewConstMetric(c.runs, prometheus.GaugeValue, float64(byState[s]), s)
		}
		for s, n := range byState { // a state added later still shows
			if !slices.Contains(runStates, s) {
				ch <- prometheus.MustNewConstMetric(c.runs, prometheus.GaugeValue, float64(n), s)
			}
		}
	}
	slots, err := c.src.SlotsInUse(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.slots, fmt.Errorf("read budget slots: %w", err))
	} else {
		ch <- prometheus.MustNewConstMetric(c.slots, prometheus.GaugeValue, float64(slots))
	}
	baking, err := c.src.CanariesBaking(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.baking, fmt.Errorf("count baking canaries: %w", err))
		return
	}
	ch <- prometheus.MustNewConstMetric(c.baking, prometheus.GaugeValue, float64(baking))
}

// printlnLogger adapts slog to promhttp's error log.
type printlnLogger struct{ log *slog.Logger }

func (l printlnLogger) Println(v ...any) {
	l.log.Warn("metrics scrape", "error", fmt.Sprint(v...))
}

// onCallCollector reads the on-call gauges from the database per scrape.
type onCallCollector struct {
	src                                                                             OnCallSource
	autoUpdate                                                                      bool
	timeout                                                                         time.Duration
	paused, autoOK, autoRun, autoFirst, leftDraining, leaseFails, notes, oldestNote *prometheus.Desc
}

func newOnCallCollector(src OnCallSource, autoUpdate bool, timeout time.Duration) *onCallCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
	}
	return &onCallCollector{src: src, autoUpdate: autoUpdate, timeout: timeout,
		paused: d("run_paused_since_timestamp_seconds",
			"When the run paused longest ago was paused, Unix seconds; absent when no run is paused (fleet-wide)."),
		autoOK: d("auto_update_last_success_timestamp_seconds",
			"When the last auto-update tick that did its job (created a run, found one open, or nothing to do) ran, Unix seconds; absent before the first (fleet-wide)."),
		autoRun: d("auto_update_last_run_created_timestamp_seconds",
			"When the last auto-update run was created, Unix seconds; absent before the first (fleet-wide)."),
		autoFirst: d("auto_update_first_tick_timestamp_seconds",
			"When the first auto-update tick ever recorded ran, whatever it did, Unix seconds; absent before the first (fleet-wide)."),
		leftDraining: d("agents_left_draining",
			"Machine migrations whose drain could not be cancelled in the last hour: their agents may still refuse turns (fleet-wide)."),
		leaseFails: d("lease_release_failures_total",
			"Fly lease releases that finally failed (the lease then expires by itself), fleet-wide, ever."),
		notes: d("notifications",
			"Notifications in the outbox by sink kind and state: pending, delivered, failed, dropped (fleet-wide).", "kind", "state"),
		oldestNote: d("notification_oldest_pending_timestamp_seconds",
			"When the oldest undelivered notification was written, Unix seconds; absent when none is pending (fleet-wide)."),
	}
}

func (c *onCallCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.paused, c.autoOK, c.autoRun, c.autoFirst, c.leftDraining, c.leaseFails, c.notes, c.oldestNote} {
		ch <- d
	}
}

func (c *onCallCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	st, err := c.src.OnCallStatus(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.paused, fmt.Errorf("read on-call status: %w", err))
		return
	}
	stamp := func(d *prometheus.Desc, t time.Time) {
		if !t.IsZero() {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(t.UnixNano())/1e9)
		}
	}
	stamp(c.paused, st.OldestPausedAt)
	if c.autoUpdate {
		stamp(c.autoOK, st.LastAutoUpdateOK)
		stamp(c.autoRun, st.LastAutoUpdateRun)
		stamp(c.autoFirst, st.FirstAutoUpdateTick)
	}
	ch <- prometheus.MustNewConstMetric(c.leftDraining, prometheus.GaugeValue, float64(st.AgentsLeftDraining))
	ch <- prometheus.MustNewConstMetric(c.leaseFails, prometheus.CounterValue, float64(st.LeaseReleaseFailures))
	counts := map[[2]string]int{}
	for _, n := range st.Notifications {
		counts[[2]string{n.Kind, n.State}] += n.N
	}
	for _, k := range sinkKinds {
		for _, s := range notifyStates {
			ch <- prometheus.MustNewConstMetric(c.notes, prometheus.GaugeValue, float64(counts[[2]string{k, s}]), k, s)
		}
	}
	stamp(c.oldestNote, st.OldestPendingNotification)
}
