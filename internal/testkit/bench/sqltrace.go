package bench

import (
	"context"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// StatementCounter is a pgx tracer (install it with store.WithQueryTracer)
// that counts every SQL statement sent on the pool's connections, River's
// included since River shares the pool: queries, execs, each query of a
// batch, and each COPY. BEGIN and COMMIT are statements too (a round trip
// each). Each statement is labelled by where it comes from (see Label).
type StatementCounter struct {
	total atomic.Int64
	mu    sync.Mutex
	by    map[string]int64
	took  map[string]time.Duration // time from send to result, queries and execs only
}

var (
	_ pgx.QueryTracer    = (*StatementCounter)(nil)
	_ pgx.BatchTracer    = (*StatementCounter)(nil)
	_ pgx.CopyFromTracer = (*StatementCounter)(nil)
)

// NewStatementCounter returns a counter at zero.
func NewStatementCounter() *StatementCounter {
	return &StatementCounter{by: map[string]int64{}, took: map[string]time.Duration{}}
}

// Total is the number of statements counted so far.
func (c *StatementCounter) Total() int64 { return c.total.Load() }

// ByLabel returns a copy of the counts by label.
func (c *StatementCounter) ByLabel() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int64, len(c.by))
	for k, v := range c.by {
		out[k] = v
	}
	return out
}

// Took returns a copy of the time statements took by label (round trip as
// the client saw it, from send to the last row; batch queries and COPY are
// not timed).
func (c *StatementCounter) Took() map[string]time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]time.Duration, len(c.took))
	for k, v := range c.took {
		out[k] = v
	}
	return out
}

func (c *StatementCounter) add(sql string) string {
	label := Label(sql, callers())
	c.total.Add(1)
	c.mu.Lock()
	c.by[label]++
	c.mu.Unlock()
	return label
}

type traceKey struct{}

type traceStart struct {
	label string
	at    time.Time
}

// TraceQueryStart implements pgx.QueryTracer.
func (c *StatementCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	return context.WithValue(ctx, traceKey{}, traceStart{label: c.add(d.SQL), at: time.Now()})
}

// TraceQueryEnd implements pgx.QueryTracer.
func (c *StatementCounter) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	if st, ok := ctx.Value(traceKey{}).(traceStart); ok {
		d := time.Since(st.at)
		c.mu.Lock()
		c.took[st.label] += d
		c.mu.Unlock()
	}
}

// TraceBatchStart implements pgx.BatchTracer.
func (c *StatementCounter) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}

// TraceBatchQuery implements pgx.BatchTracer: each query of a batch counts.
func (c *StatementCounter) TraceBatchQuery(_ context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	c.add(d.SQL)
}

// TraceBatchEnd implements pgx.BatchTracer.
func (c *StatementCounter) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// TraceCopyFromStart implements pgx.CopyFromTracer.
func (c *StatementCounter) TraceCopyFromStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceCopyFromStartData) context.Context {
	c.add("COPY " + d.TableName.Sanitize())
	return ctx
}

// TraceCopyFromEnd implements pgx.CopyFromTracer.
func (c *StatementCounter) TraceCopyFromEnd(context.Context, *pgx.Conn, pgx.TraceCopyFromEndData) {}

const modulePrefix = "github.com/hermes-cloud/migrator/"

// callers returns the function names of the caller's stack, innermost first.
func callers() []string {
	var pcs [64]uintptr
	n := runtime.Callers(3, pcs[:])
	frames := runtime.CallersFrames(pcs[:n])
	var out []string
	for {
		f, more := frames.Next()
		if f.Function != "" {
			out = append(out, f.Function)
		}
		if !more {
			return out
		}
	}
}

// Label names a statement for grouping, from its SQL and the stack that
// sent it (innermost first):
//   - River's queries (sqlc, "-- name: X") are "river X", with the first
//     migrator function outside package store that sent it, if any;
//   - BEGIN, COMMIT, ROLLBACK are "begin ← F" where F is the first migrator
//     function outside package store (who opened the transaction);
//   - other statements of migrator are its innermost function, e.g.
//     "store.(*Q).LoadMachineWork", with " (advisory lock)" for a
//     SELECT pg_advisory_…;
//   - anything else: its first five words.
func Label(sql string, stack []string) string {
	var inner, outer string // innermost migrator function; innermost outside store
	for _, fn := range stack {
		name, ok := strings.CutPrefix(fn, modulePrefix)
		if !ok || strings.HasPrefix(name, "internal/testkit/bench") {
			continue
		}
		name = trimClosure(name)
		if inner == "" {
			inner = name
		}
		if !strings.HasPrefix(name, "store.") {
			outer = name
			break
		}
	}
	via := func(s string) string {
		if outer == "" {
			return s
		}
		return s + " ← " + outer
	}
	if _, rest, ok := strings.Cut(sql, "-- name: "); ok {
		if f := strings.Fields(rest); len(f) > 0 {
			return via("river " + f[0])
		}
	}
	words := strings.Fields(stripComments(sql))
	if len(words) == 0 {
		return "(empty)"
	}
	switch v := strings.ToLower(words[0]); v {
	case "begin", "commit", "rollback":
		return via(v)
	}
	if inner != "" {
		// A function that takes an advisory lock first: the wait for the
		// lock is worth telling apart from the work under it.
		if len(words) > 1 && strings.HasPrefix(strings.ToLower(words[1]), "pg_advisory") {
			return inner + " (advisory lock)"
		}
		return inner
	}
	return strings.Join(words[:min(5, len(words))], " ")
}

// trimClosure turns "pkg.(*T).M.func1.2" into "pkg.(*T).M".
func trimClosure(name string) string {
	if i := strings.Index(name, ".func"); i >= 0 {
		return name[:i]
	}
	return name
}

func stripComments(sql string) string {
	var b strings.Builder
	for line := range strings.SplitSeq(sql, "\n") {
		if i := strings.Index(line, "--"); i >= 0 {
			line = line[:i]
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}

// LabelCount is one label's count.
type LabelCount struct {
	Label string
	Count int64
}

// sortedCounts orders counts by count, then label.
func sortedCounts(m map[string]int64) []LabelCount {
	out := make([]LabelCount, 0, len(m))
	for k, v := range m {
		if v != 0 {
			out = append(out, LabelCount{k, v})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Label < out[j].Label
	})
	return out
}

// diffCounts is b - a by label.
func diffCounts(a, b map[string]int64) map[string]int64 {
	out := make(map[string]int64, len(b))
	for k, v := range b {
		if d := v - a[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}
