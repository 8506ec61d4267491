package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/internal/webview"
	"github.com/hermes-cloud/migrator/store"
)

// The web view's optional credentials (secrets: environment only).
const (
	webTokenEnv     = "MIGRATOR_WEB_TOKEN"      // accepted as "Authorization: Bearer …"
	webBasicAuthEnv = "MIGRATOR_WEB_BASIC_AUTH" // "user:password", for browsers
)

// newWebView is the read-only web view over st, with the credentials the
// environment sets (none: open to whoever reaches the address).
func newWebView(e *env, st *store.Store, log *slog.Logger) (http.Handler, error) {
	cfg := webview.Config{Store: st.Q(), Logger: log, BearerToken: strings.TrimSpace(e.getenv(webTokenEnv))}
	if v := e.getenv(webBasicAuthEnv); v != "" {
		user, pass, ok := strings.Cut(v, ":")
		if !ok || user == "" || pass == "" {
			return nil, usagef("%s: want user:password", webBasicAuthEnv)
		}
		cfg.BasicUser, cfg.BasicPassword = user, pass
	}
	v, err := webview.New(cfg)
	if err != nil {
		return nil, usagef("%v", err)
	}
	return v, nil
}

// withWebView serves health and metrics as before and the web view on
// every other path.
func withWebView(health, web http.Handler) http.Handler {
	mux := http.NewServeMux()
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		mux.Handle(p, health)
	}
	mux.Handle("/", web)
	return mux
}

// startWebView serves the web view of the sandbox's database on a free
// local port until cleanup, and returns its URL.
func (sb *sandbox) startWebView(log *slog.Logger) (string, error) {
	web, err := newWebView(sb.e, sb.comp.store, log)
	if err != nil {
		return "", err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("sandbox: web view: %w", err)
	}
	srv := &http.Server{Handler: web, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	sb.defer_(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String(), nil
}
