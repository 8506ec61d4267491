package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"
)

// pprofAddrEnv opts serve into Go's profiling endpoints (heap, CPU,
// goroutines) for an engineer on the host: loopback only, never on by
// default. Profiles show internals (symbols, goroutine stacks with their
// arguments' addresses), so they are never offered beyond loopback, with or
// without the web view's credentials.
const pprofAddrEnv = "MIGRATOR_PPROF_ADDR"

// listenPprof opens MIGRATOR_PPROF_ADDR if set: a loopback host (an IP
// literal or localhost) and a port. nil, nil when unset.
func listenPprof(e *env) (net.Listener, error) {
	v := strings.TrimSpace(e.getenv(pprofAddrEnv))
	if v == "" {
		return nil, nil
	}
	host, _, err := net.SplitHostPort(v)
	if err != nil {
		return nil, usagef("%s=%q: want a loopback address and port, e.g. 127.0.0.1:6060", pprofAddrEnv, v)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, usagef("%s=%q: profiles are served on loopback only (127.0.0.1, [::1] or localhost)", pprofAddrEnv, v)
	}
	ln, err := net.Listen("tcp", v)
	if err != nil {
		return nil, usagef("%s=%q: %v", pprofAddrEnv, v, err)
	}
	if !isLoopback(ln.Addr()) { // localhost resolved elsewhere
		_ = ln.Close()
		return nil, usagef("%s=%q: %s is not a loopback address", pprofAddrEnv, v, ln.Addr())
	}
	return ln, nil
}

// servePprof serves net/http/pprof's handlers on ln (its own mux: nothing
// else is reachable there, and nothing of it on serve's HTTP address).
func servePprof(ln net.Listener, log *slog.Logger) *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("pprof server", "error", err)
		}
	}()
	log.Info("pprof: Go profiles served on loopback", "pprof_addr", ln.Addr().String(),
		"heap", fmt.Sprintf("http://%s/debug/pprof/heap", ln.Addr()))
	return srv
}
