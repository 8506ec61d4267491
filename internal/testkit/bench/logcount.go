package bench

import (
	"context"
	"log/slog"
	"sync"
)

// warnCounter is a slog handler that counts warnings and errors and keeps
// the first few messages, so a benchmark shows whether the system under
// load complained (a retry, a failed refresh) without a log file.
type warnCounter struct {
	mu    *sync.Mutex
	n     *int
	first *[]string
}

const keepWarnings = 5

func newWarnCounter() *warnCounter {
	return &warnCounter{mu: &sync.Mutex{}, n: new(int), first: new([]string)}
}

func (h *warnCounter) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h *warnCounter) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.n++
	if len(*h.first) < keepWarnings {
		msg := r.Message
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "error" {
				msg += ": " + a.Value.String()
			}
			return true
		})
		*h.first = append(*h.first, msg)
	}
	return nil
}

func (h *warnCounter) WithAttrs([]slog.Attr) slog.Handler { return h }

func (h *warnCounter) WithGroup(string) slog.Handler { return h }

func (h *warnCounter) count() (int, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return *h.n, append([]string(nil), *h.first...)
}
