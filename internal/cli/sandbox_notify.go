//go:build !release

package cli

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hermes-cloud/migrator/internal/notify"
)

// sandboxSink is the sandbox's local notification sink: a webhook
// receiver on a loopback port standing in for Slack and PagerDuty. serve's
// delivery path sends it what on-call would get (signed, with idempotency
// keys); it checks the Standard Webhooks signature and keeps each message
// once.
type sandboxSink struct {
	url    string
	secret string
	mu     sync.Mutex
	seen   map[string]bool
	got    []sandboxNote
	bad    []string // what did not verify
}

// sandboxNote is one notification the sink received.
type sandboxNote struct {
	at   time.Time
	body notify.WebhookBody
}

func (sb *sandbox) startSink() (*sandboxSink, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("sandbox: notification sink: %w", err)
	}
	// A Standard Webhooks secret, as an operator would make one.
	s := &sandboxSink{secret: "whsec_" + base64.StdEncoding.EncodeToString(key), seen: map[string]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("sandbox: notification sink: %w", err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(s.serve)}
	go func() { _ = srv.Serve(ln) }()
	sb.onCleanup(func() { _ = srv.Close() })
	s.url = "http://" + ln.Addr().String() + "/notifications"
	return s, nil
}

func (s *sandboxSink) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "read", http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature.
	if err := notify.Verify(s.secret, r.Header, body, time.Now(), 5*time.Minute); err != nil {
		s.bad = append(s.bad, err.Error())
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var b notify.WebhookBody
	if err := json.Unmarshal(body, &b); err != nil {
		s.bad = append(s.bad, err.Error())
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	if !s.seen[b.ID] { // a redelivery carries the same key
		s.seen[b.ID] = true
		s.got = append(s.got, sandboxNote{at: time.Now(), body: b})
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *sandboxSink) notes() []sandboxNote {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sandboxNote(nil), s.got...)
}

// printNotifications waits (a few seconds at most) for the outbox to be
// delivered, then prints what the sink received.
func (sb *sandbox) printNotifications(ctx context.Context) []sandboxNote {
	out := sb.e.stdout
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		var pending int
		if err := sb.comp.pool.QueryRow(ctx, `SELECT count(*) FROM notifications WHERE state = 'pending'`).Scan(&pending); err != nil || pending == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	notes := sb.sink.notes()
	fmt.Fprintf(out, "\nNotifications the runs sent (to a local sink, as Slack or PagerDuty would get them; see `migrator notify --help`):\n")
	if len(notes) == 0 {
		fmt.Fprintln(out, "  none")
	}
	for _, n := range notes {
		fmt.Fprintf(out, "  %-8s %-20s %s\n", n.body.Severity, n.body.Event, n.body.Summary)
	}
	if len(sb.sink.bad) > 0 {
		fmt.Fprintf(out, "  (%d requests did not verify: %s)\n", len(sb.sink.bad), strings.Join(sb.sink.bad, "; "))
	}
	return notes
}

// sandboxCheckNotes says what the notifications lack: the auto-update run
// fails on its rollback, so on-call hears of the rollback and of the
// failed run (once each, whatever the redeliveries), and nothing of the
// operator run, which went well.
func sandboxCheckNotes(runs []sandboxRun, notes []sandboxNote, crashed int) []string {
	count := map[string]int{}
	for _, n := range notes {
		id, _ := n.body.Details["run_id"].(float64)
		count[fmt.Sprintf("%d %s", int64(id), n.body.Event)]++
	}
	auto, op := runs[0].run.ID, runs[1].run.ID
	var p []string
	if crashed > 0 {
		if c := count[fmt.Sprintf("%d run.failed", auto)]; c != 1 {
			p = append(p, fmt.Sprintf("%d run.failed notifications for run %d, want 1", c, auto))
		}
		if c := count[fmt.Sprintf("%d machine.rolled_back", auto)]; c != crashed {
			p = append(p, fmt.Sprintf("%d machine.rolled_back notifications for run %d, want %d", c, auto, crashed))
		}
	}
	for k, c := range count {
		if strings.HasPrefix(k, fmt.Sprintf("%d ", op)) {
			p = append(p, fmt.Sprintf("the operator run, which went well, sent %d %s", c, k))
		}
	}
	return p
}
