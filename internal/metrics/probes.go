package metrics

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hermes-cloud/migrator/internal/health"
	"github.com/hermes-cloud/migrator/store"
)

// MaxScrapesInFlight bounds the /metrics requests served at once; more
// are answered 503 at once (promhttp's MaxRequestsInFlight). /metrics is
// open to every machine of the organization: a loop of requests must not
// pile up. A real scraper asks every 15 s or so.
const MaxScrapesInFlight = 2

// GatherEvery is how often the handler gathers its series at most; every
// scrape in between is served what was gathered last.
const GatherEvery = time.Second

// StoreSource is the Source and OnCallSource of serve's gauges: it reads
// the database through the store it is given (serve gives it the probes'
// pool, not the workers'), each value at most health.DefaultTTL old and
// read by one scrape at a time however many ask (health.Memo), so a flood
// of scrapes costs the database a few queries every two seconds.
type StoreSource struct {
	runs, slots, baking *health.Memo[any]
	onCall              *health.Memo[store.OnCallStatus]
}

var (
	_ Source       = (*StoreSource)(nil)
	_ OnCallSource = (*StoreSource)(nil)
)

// NewStoreSource reads st's gauges, memoised for ttl (0: health.DefaultTTL).
func NewStoreSource(st *store.Store, ttl time.Duration) *StoreSource {
	memo := func(fn func(context.Context) (any, error)) *health.Memo[any] { return health.NewMemo(ttl, 0, nil, fn) }
	return &StoreSource{
		runs:   memo(func(ctx context.Context) (any, error) { return st.Q().CountRunsByState(ctx) }),
		slots:  memo(func(ctx context.Context) (any, error) { return st.Q().SlotsInUse(ctx) }),
		baking: memo(func(ctx context.Context) (any, error) { return st.Q().CanariesBaking(ctx) }),
		onCall: health.NewMemo(ttl, 0, nil, func(ctx context.Context) (store.OnCallStatus, error) {
			return st.Q().ReadOnCallStatus(ctx)
		}),
	}
}

// RunsByState implements Source.
func (s *StoreSource) RunsByState(ctx context.Context) (map[string]int, error) {
	v, err := s.runs.Get(ctx)
	m, _ := v.(map[string]int)
	return m, err
}

// SlotsInUse implements Source.
func (s *StoreSource) SlotsInUse(ctx context.Context) (int, error) {
	v, err := s.slots.Get(ctx)
	n, _ := v.(int)
	return n, err
}

// CanariesBaking implements Source.
func (s *StoreSource) CanariesBaking(ctx context.Context) (int, error) {
	v, err := s.baking.Get(ctx)
	n, _ := v.(int)
	return n, err
}

// OnCallStatus implements OnCallSource.
func (s *StoreSource) OnCallStatus(ctx context.Context) (store.OnCallStatus, error) {
	return s.onCall.Get(ctx)
}

// WatchPool exports a pgx pool's statistics as migrator_db_pool_* series
// labelled pool=name (serve: "workers", the pool River and the machine
// steps share, and "probes", readiness and these gauges):
//
//	db_pool_acquires_total{pool}                   counter connections handed out
//	db_pool_empty_acquires_total{pool}             counter of those, the ones that had to wait for one (none idle)
//	db_pool_acquire_seconds_total{pool}            counter time spent acquiring, waits included
//	db_pool_empty_acquire_wait_seconds_total{pool} counter time spent waiting when none was idle
//	db_pool_canceled_acquires_total{pool}          counter acquires given up (their context ended)
//	db_pool_conns{pool,state}                      gauge   connections: acquired, idle, constructing
//	db_pool_max_conns{pool}                        gauge   the pool's size
//
// A rising empty_acquire_wait on the workers' pool is the workers waiting
// for the database.
func (m *Metrics) WatchPool(name string, p *pgxpool.Pool) error {
	return m.reg.Register(newPoolCollector(name, p))
}

type poolCollector struct {
	pool                                                               *pgxpool.Pool
	acquires, empty, acquireTime, emptyWait, canceled, conns, maxConns *prometheus.Desc
}

func newPoolCollector(name string, p *pgxpool.Pool) *poolCollector {
	// The pool's name is a constant label: each pool's collector has
	// descriptors of its own.
	d := func(n, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "db_pool", n), help, labels, prometheus.Labels{"pool": name})
	}
	return &poolCollector{pool: p,
		acquires:    d("acquires_total", "Connections handed out by this replica's pool."),
		empty:       d("empty_acquires_total", "Acquires that found no idle connection and waited for one."),
		acquireTime: d("acquire_seconds_total", "Seconds spent acquiring connections, waits included."),
		emptyWait:   d("empty_acquire_wait_seconds_total", "Seconds spent waiting for a connection when none was idle."),
		canceled:    d("canceled_acquires_total", "Acquires given up because their context ended."),
		conns:       d("conns", "Connections of the pool by state: acquired, idle, constructing.", "state"),
		maxConns:    d("max_conns", "The pool's size."),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.acquires, c.empty, c.acquireTime, c.emptyWait, c.canceled, c.conns, c.maxConns} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	counter(c.acquires, float64(s.AcquireCount()))
	counter(c.empty, float64(s.EmptyAcquireCount()))
	counter(c.acquireTime, s.AcquireDuration().Seconds())
	counter(c.emptyWait, s.EmptyAcquireWaitTime().Seconds())
	counter(c.canceled, float64(s.CanceledAcquireCount()))
	for state, n := range map[string]int32{"acquired": s.AcquiredConns(), "idle": s.IdleConns(), "constructing": s.ConstructingConns()} {
		ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(n), state)
	}
	ch <- prometheus.MustNewConstMetric(c.maxConns, prometheus.GaugeValue, float64(s.MaxConns()))
}
