package gateway

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/drainsecret"
	"github.com/hermes-cloud/migrator/internal/testkit/logbuf"
)

// testKey is distinctive so a leak is easy to find in captured output.
var testKey = []byte("TESTdrainKEYQQ/VSbyvwff621cArdct9Dyb6XvDQvvUQkbVirYf3E7b")

var testTarget = Target{App: "hermes-a", MachineID: "m1", Region: "fra", PrivateIP: "fdaa:0:1::5", InstanceID: "01HX"}

func testSecret(app string) string { return drainsecret.Derive(testKey, app) }

type recorded struct {
	Method, Path, EscapedPath string
	Header                    http.Header
	Body                      []byte
	At                        time.Time
}

// server is a fake dashboard over real loopback HTTP. The handler gets the
// 0-based index of the request.
type server struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []recorded
}

func newServer(t *testing.T, h func(w http.ResponseWriter, r *http.Request, n int)) *server {
	t.Helper()
	s := &server{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		n := len(s.reqs)
		s.reqs = append(s.reqs, recorded{Method: r.Method, Path: r.URL.Path, EscapedPath: r.URL.EscapedPath(), Header: r.Header.Clone(), Body: body, At: time.Now()})
		s.mu.Unlock()
		h(w, r, n)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *server) requests() []recorded {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]recorded(nil), s.reqs...)
}

func reply(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// newClient returns a client on tmpl with fast retries and a debug logger
// writing to the returned buffer.
func newClient(t *testing.T, tmpl string, mod func(*Config)) (*Client, *logbuf.Buffer) {
	t.Helper()
	logs := &logbuf.Buffer{}
	cfg := Config{
		URLTemplate:  tmpl,
		DrainKey:     testKey,
		CallTimeout:  2 * time.Second,
		RetryWaitMin: time.Millisecond,
		RetryWaitMax: 5 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, logs
}

// prefixTemplate puts every agent under a path prefix of s, like the fleet
// simulator and proxies do.
func prefixTemplate(s *server) string { return s.URL + "/agents/{app}/{machine_id}" }
