package cli

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Profiles are opt-in and loopback only: any other address refuses to
// start (one line, exit 2); on loopback the heap profile is served there and
// nowhere else.
func TestPprofLoopbackOnly(t *testing.T) {
	envOf := func(v string) *env {
		return &env{getenv: func(k string) string {
			if k == pprofAddrEnv {
				return v
			}
			return ""
		}}
	}
	if ln, err := listenPprof(envOf("")); ln != nil || err != nil {
		t.Fatalf("unset: %v %v, want nothing", ln, err)
	}
	for _, bad := range []string{"0.0.0.0:0", ":6060", "10.1.2.3:6060", "[::]:0", "example.com:6060", "6060", "127.0.0.1"} {
		ln, err := listenPprof(envOf(bad))
		if ln != nil {
			ln.Close()
		}
		var ue usageError
		if !errors.As(err, &ue) || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), pprofAddrEnv) {
			t.Errorf("%q: %v, want a one-line usage error naming %s", bad, err, pprofAddrEnv)
		}
	}
	ln, err := listenPprof(envOf("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	srv := servePprof(ln, slog.New(slog.NewJSONHandler(&logs, nil)))
	defer srv.Close()
	client := &http.Client{Timeout: 10 * time.Second}
	res, err := client.Get("http://" + ln.Addr().String() + "/debug/pprof/heap?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("heap profile:")) {
		t.Fatalf("heap profile: %d %.200s", res.StatusCode, body)
	}
	if !strings.Contains(logs.String(), ln.Addr().String()) {
		t.Errorf("the start line does not say where: %s", logs.String())
	}
	// serve's own address never serves them.
	hr := healthHandler(&components{})
	rec := &recorder{header: http.Header{}}
	req, _ := http.NewRequest(http.MethodGet, "/debug/pprof/heap", nil)
	hr.ServeHTTP(rec, req)
	if rec.code != http.StatusNotFound {
		t.Errorf("serve's HTTP address answers /debug/pprof/heap with %d", rec.code)
	}
}

type recorder struct {
	header http.Header
	code   int
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *recorder) WriteHeader(c int)           { r.code = c }
