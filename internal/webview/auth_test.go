package webview

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/store"
)

// refusingStore is never reached by these tests' requests: they are
// refused before a page is looked up, or ask for a static file. Any call is
// a failure of the test.
type refusingStore struct{ Store }

func (refusingStore) RunSummaries(context.Context, store.RunListFilter) ([]store.RunSummary, error) {
	panic("the store was reached")
}

const (
	testToken = "tok-0123456789abcdef"
	testUser  = "oncall"
	testPass  = "pw-0123456789abcdef"
)

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newAuthView(t *testing.T, clk clock.Clock, cfg Config) (*View, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	cfg.Store, cfg.Clock = refusingStore{}, clk
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	if !cfg.Open && cfg.BearerToken == "" && cfg.BasicUser == "" {
		cfg.BearerToken, cfg.BasicUser, cfg.BasicPassword = testToken, testUser, testPass
	}
	v, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v, logs
}

// request sends GET path from remote with the Authorization header auth
// ("" for none) and returns the response.
func request(v *View, remote, path, auth string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, path, nil)
	r.RemoteAddr = remote
	if auth != "" {
		r.Header.Set("Authorization", auth)
	}
	w := httptest.NewRecorder()
	v.ServeHTTP(w, r)
	return w
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// Either credential opens the view, compared whole: a prefix, an
// extension, a right user with a wrong password or the right secret under
// another scheme is refused; no header is a 401 with the browser's
// challenge. A view is Open or has credentials, never neither nor both.
func TestAuthCredentials(t *testing.T) {
	v, _ := newAuthView(t, clock.NewManual(time.Unix(1e9, 0)), Config{AuthBurst: 1000})
	cases := []struct {
		name, auth string
		want       int
	}{
		{"no header", "", http.StatusUnauthorized},
		{"bearer", "Bearer " + testToken, http.StatusOK},
		{"bearer, scheme in lower case", "bearer " + testToken, http.StatusOK},
		{"bearer, surrounding spaces", "Bearer  " + testToken + " ", http.StatusOK},
		{"basic", basic(testUser, testPass), http.StatusOK},
		{"bearer, wrong", "Bearer wrong", http.StatusUnauthorized},
		{"bearer, prefix", "Bearer " + testToken[:len(testToken)-1], http.StatusUnauthorized},
		{"bearer, extended", "Bearer " + testToken + "x", http.StatusUnauthorized},
		{"bearer, empty", "Bearer ", http.StatusUnauthorized},
		{"the token under another scheme", "Token " + testToken, http.StatusUnauthorized},
		{"the token as basic password", basic(testUser, testToken), http.StatusUnauthorized},
		{"basic, wrong password", basic(testUser, "wrong"), http.StatusUnauthorized},
		{"basic, wrong user", basic("root", testPass), http.StatusUnauthorized},
		{"basic, swapped", basic(testPass, testUser), http.StatusUnauthorized},
		{"the password as bearer", "Bearer " + testPass, http.StatusUnauthorized},
		{"basic, garbage", "Basic !!!", http.StatusUnauthorized},
	}
	for _, tc := range cases {
		w := request(v, "192.0.2.10:40000", "/static/app.js", tc.auth)
		if w.Code != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, w.Code, tc.want)
		}
		if w.Code == http.StatusUnauthorized && !strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "Basic ") {
			t.Errorf("%s: 401 without the basic-auth challenge", tc.name)
		}
	}
	// A bearer-only view asks no browser for a password.
	bv, _ := newAuthView(t, clock.Real(), Config{BearerToken: testToken})
	if w := request(bv, "192.0.2.10:1", "/runs", ""); w.Code != http.StatusUnauthorized || w.Header().Get("WWW-Authenticate") != "" {
		t.Errorf("bearer-only view without a token: %d, challenge %q", w.Code, w.Header().Get("WWW-Authenticate"))
	}
	ov, _ := newAuthView(t, clock.Real(), Config{Open: true})
	if w := request(ov, "192.0.2.10:1", "/static/app.js", ""); w.Code != http.StatusOK {
		t.Errorf("open view: %d", w.Code)
	}
	for _, bad := range []Config{{}, {Open: true, BearerToken: testToken}, {Open: true, BasicUser: "u", BasicPassword: "p"}} {
		bad.Store = refusingStore{}
		if _, err := New(bad); err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("New(open %v, token %v, basic %v) = %v, want a one-line error", bad.Open, bad.BearerToken != "", bad.BasicUser != "", err)
		}
	}
}

// Wrong credentials from one source are slowed: after the burst, that
// source (and only it) gets 429 with Retry-After, the right token
// included, until one attempt refills; requests without credentials guess
// nothing and do not count. Each wrong attempt is logged with the source
// and path, never with what was presented.
func TestAuthWrongCredentialsSlowedPerSource(t *testing.T) {
	clk := clock.NewManual(time.Unix(1e9, 0))
	v, logs := newAuthView(t, clk, Config{AuthBurst: 3, AuthRefill: 10 * time.Second})
	const (
		tenant = "[fdaa:0:1:a7b:aa:bb:cc:2]:41000"
		oncall = "[fdaa:0:1:a7b:dd:ee:ff:2]:52000" // another machine (another /112)
	)
	guess := func(i int) string { return fmt.Sprintf("Bearer guess-%d-zz", i) }

	for i := range 20 { // no credentials: not counted
		if w := request(v, tenant, "/history.csv", ""); w.Code != http.StatusUnauthorized {
			t.Fatalf("request %d without credentials: %d, want 401", i, w.Code)
		}
	}
	for i := range 3 {
		if w := request(v, tenant, "/history.csv", guess(i)); w.Code != http.StatusUnauthorized {
			t.Fatalf("wrong attempt %d: %d, want 401", i, w.Code)
		}
	}
	// Out of attempts: even the right token is not looked at.
	for _, auth := range []string{guess(3), "Bearer " + testToken, ""} {
		w := request(v, tenant, "/runs", auth)
		if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "10" {
			t.Errorf("after the burst (credentials: %v): %d, Retry-After %q; want 429, 10", auth != "", w.Code, w.Header().Get("Retry-After"))
		}
	}
	// The same Machine under another address of its /112: the same bucket.
	if w := request(v, "[fdaa:0:1:a7b:aa:bb:cc:9999]:41001", "/runs", guess(4)); w.Code != http.StatusTooManyRequests {
		t.Errorf("another address of the same /112: %d, want 429", w.Code)
	}
	// Another source is not slowed by it.
	if w := request(v, oncall, "/static/app.js", "Bearer "+testToken); w.Code != http.StatusOK {
		t.Errorf("another source with the token: %d, want 200", w.Code)
	}
	if w := request(v, "192.0.2.77:1234", "/runs", guess(5)); w.Code != http.StatusUnauthorized {
		t.Errorf("an IPv4 source's first wrong attempt: %d, want 401", w.Code)
	}

	clk.Advance(4 * time.Second)
	if w := request(v, tenant, "/runs", guess(6)); w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "6" {
		t.Errorf("4s later: %d, Retry-After %q; want 429, 6", w.Code, w.Header().Get("Retry-After"))
	}
	clk.Advance(6 * time.Second) // one attempt back
	if w := request(v, tenant, "/static/app.js", "Bearer "+testToken); w.Code != http.StatusOK {
		t.Errorf("10s later with the token: %d, want 200", w.Code)
	}
	if w := request(v, tenant, "/runs", guess(7)); w.Code != http.StatusUnauthorized {
		t.Errorf("10s later, a wrong guess: %d, want 401", w.Code)
	}
	if w := request(v, tenant, "/runs", guess(8)); w.Code != http.StatusTooManyRequests {
		t.Errorf("and the next: %d, want 429", w.Code)
	}

	// The log: one line per wrong attempt that was looked at (3 + 1 from
	// the tenant, 1 from the IPv4 source), naming source and path, and one
	// each time the tenant ran out; never a presented value nor the token.
	text := logs.String()
	for i := range 9 {
		if strings.Contains(text, fmt.Sprintf("guess-%d-zz", i)) {
			t.Errorf("the log holds presented credential %d", i)
		}
	}
	for _, secret := range []string{testToken, testPass, base64.StdEncoding.EncodeToString([]byte(testUser + ":" + testPass))} {
		if strings.Contains(text, secret) {
			t.Errorf("the log holds a configured secret")
		}
	}
	var wrong, slowed int
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		var l map[string]any
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		switch l["msg"] {
		case "web view: wrong credentials":
			wrong++
			if l["source_addr"] == nil || l["path"] == nil || l["scheme"] != "bearer" {
				t.Errorf("wrong-credentials line without source, path or scheme: %s", line)
			}
		case "web view: too many wrong credentials; answering 429 until the source's attempts refill":
			slowed++
		}
	}
	if wrong != 5 || slowed != 2 {
		t.Errorf("%d wrong-credential lines and %d slowdown lines, want 5 and 2:\n%s", wrong, slowed, text)
	}
	if !strings.Contains(text, `"source_addr":"fdaa:0:1:a7b:aa:bb:cc:2","method":"GET","path":"/history.csv"`) {
		t.Errorf("no line names the tenant's address and path:\n%s", text)
	}
}

// However many sources guess, the limiter remembers at most AuthSources
// of them; a source that is out of attempts stays so while newer ones
// come, as long as older ones can be dropped instead.
func TestAuthLimiterMemoryBounded(t *testing.T) {
	clk := clock.NewManual(time.Unix(1e9, 0))
	v, _ := newAuthView(t, clk, Config{AuthBurst: 2, AuthRefill: time.Minute, AuthSources: 100})
	const slowed = "198.51.100.1:1"
	for range 2 {
		request(v, slowed, "/runs", "Bearer nope")
	}
	for i := range 5000 {
		clk.Advance(time.Millisecond)
		if i%50 == 0 { // the slowed source keeps trying, so it is never the oldest
			if w := request(v, slowed, "/runs", "Bearer nope"); w.Code != http.StatusTooManyRequests {
				t.Fatalf("the slowed source after %d others: %d, want 429", i, w.Code)
			}
		}
		remote := fmt.Sprintf("10.%d.%d.%d:1", i>>16&255, i>>8&255, i&255)
		request(v, remote, "/runs", "Bearer nope")
		if n := v.limiter.Tracked(); n > 100 {
			t.Fatalf("%d sources remembered after %d, want at most 100", n, i+1)
		}
	}
	// Sources whose buckets refilled are dropped first.
	clk.Advance(time.Hour)
	request(v, "203.0.113.9:1", "/runs", "Bearer nope")
	if n := v.limiter.Tracked(); n != 1 {
		t.Errorf("%d sources remembered an hour later, want 1 (the new one)", n)
	}
}
