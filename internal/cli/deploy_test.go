package cli

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// flyConfig is the part of fly.toml migrator's deployment uses. Decoding is
// strict (every key must be known here), so a misspelt key fails the test
// instead of being ignored by Fly.
type flyConfig struct {
	App           string `toml:"app"`
	PrimaryRegion string `toml:"primary_region"`
	KillSignal    string `toml:"kill_signal"`
	KillTimeout   string `toml:"kill_timeout"`
	Build         struct {
		Dockerfile string `toml:"dockerfile"`
	} `toml:"build"`
	Deploy struct {
		ReleaseCommand string `toml:"release_command"`
		Strategy       string `toml:"strategy"`
	} `toml:"deploy"`
	Env       map[string]string `toml:"env"`
	Processes map[string]string `toml:"processes"`
	Checks    map[string]struct {
		Type        string   `toml:"type"`
		Port        int      `toml:"port"`
		Method      string   `toml:"method"`
		Path        string   `toml:"path"`
		Interval    string   `toml:"interval"`
		Timeout     string   `toml:"timeout"`
		GracePeriod string   `toml:"grace_period"`
		Processes   []string `toml:"processes"`
	} `toml:"checks"`
	Metrics []struct {
		Port      int      `toml:"port"`
		Path      string   `toml:"path"`
		Processes []string `toml:"processes"`
	} `toml:"metrics"`
	VM []struct {
		Memory    string   `toml:"memory"`
		CPUs      int      `toml:"cpus"`
		Processes []string `toml:"processes"`
	} `toml:"vm"`
}

// repoFile reads a file at the repository root (tests run in cmd/migrator).
func repoFile(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func loadFlyConfig(t *testing.T) flyConfig {
	t.Helper()
	var cfg flyConfig
	md, err := toml.Decode(repoFile(t, "fly.toml"), &cfg)
	if err != nil {
		t.Fatalf("fly.toml: %v", err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		t.Fatalf("fly.toml: keys this test does not know (misspelt?): %v", u)
	}
	return cfg
}

// dockerImage is what the Dockerfile's final stage runs.
type dockerImage struct {
	entrypoint, cmd []string
	user            string
	expose          []string
	binary          string // where the final stage copies the binary
	stages          []string
	buildLine       string
	autoToolchain   bool // the build stage sets GOTOOLCHAIN=auto
}

var dockerJSONInstr = regexp.MustCompile(`^(ENTRYPOINT|CMD)\s+(\[.*\])\s*$`)

// pinnedImage is a base image named by tag and pinned by digest.
var pinnedImage = regexp.MustCompile(`^[a-z0-9./-]+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}$`)

func parseDockerfile(t *testing.T) dockerImage {
	t.Helper()
	var img dockerImage
	// Join continuation lines, drop comments.
	text := strings.ReplaceAll(repoFile(t, "Dockerfile"), "\\\n", " ")
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		instr, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(instr) {
		case "FROM":
			// A new stage starts over: only the final one's settings count.
			img = dockerImage{stages: append(img.stages, rest), buildLine: img.buildLine, autoToolchain: img.autoToolchain}
		case "ENV":
			if strings.ReplaceAll(rest, " ", "") == "GOTOOLCHAIN=auto" && len(img.stages) == 1 {
				img.autoToolchain = true
			}
		case "ENTRYPOINT", "CMD":
			m := dockerJSONInstr.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("Dockerfile: %s must be in exec (JSON) form, so signals reach migrator: %q", instr, line)
			}
			var argv []string
			if err := json.Unmarshal([]byte(m[2]), &argv); err != nil {
				t.Fatalf("Dockerfile: %s: %v", line, err)
			}
			if strings.ToUpper(instr) == "CMD" {
				img.cmd = argv
			} else {
				img.entrypoint = argv
			}
		case "USER":
			img.user = rest
		case "EXPOSE":
			img.expose = append(img.expose, strings.Fields(rest)...)
		case "COPY":
			if f := strings.Fields(rest); len(f) == 3 && strings.HasPrefix(f[0], "--from=") {
				img.binary = f[2]
			}
		case "RUN":
			if strings.Contains(rest, "go build") {
				img.buildLine = rest
			}
		}
	}
	return img
}

// subcommand resolves argv (as the container runs it) to a migrator
// command, as the binary would: argv[0] must be the binary the image holds.
func subcommand(t *testing.T, img dockerImage, argv []string) string {
	t.Helper()
	if len(argv) == 0 || argv[0] != img.binary {
		t.Fatalf("%q does not start with the image's binary %s", argv, img.binary)
	}
	e := &env{getenv: func(string) string { return "" }, stdout: io.Discard, stderr: io.Discard}
	root := newRoot(e)
	cmd, rest, err := root.Find(argv[1:])
	if err != nil || cmd == root || !cmd.Runnable() {
		t.Fatalf("%q is not a migrator command (found %q): %v", argv, cmd.CommandPath(), err)
	}
	// Its flags and arguments must be accepted too.
	if err := cmd.ParseFlags(rest); err != nil {
		t.Fatalf("%q: %v", argv, err)
	}
	if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
		t.Fatalf("%q: %v", argv, err)
	}
	return cmd.CommandPath()
}

// The image runs `migrator serve` by default, as non-root, from a static
// build.
func TestDeployDockerfile(t *testing.T) {
	img := parseDockerfile(t)
	if len(img.stages) < 2 || !strings.HasPrefix(img.stages[0], "golang:1.26") {
		t.Errorf("stages %q: want a golang:1.26 builder and a separate final stage", img.stages)
	}
	// Every base pinned by digest (the tag beside it says what it is).
	for _, st := range img.stages {
		ref := strings.Fields(st)[0]
		if !pinnedImage.MatchString(ref) {
			t.Errorf("FROM %s: want IMAGE:TAG@sha256:<64 hex digits>, a base pinned by digest", ref)
		}
	}
	// The builder image sets GOTOOLCHAIN=local; the build must honour
	// go.mod's toolchain line (what CI tests and govulncheck scans).
	if !img.autoToolchain {
		t.Error("the build stage does not set ENV GOTOOLCHAIN=auto: go.mod's toolchain line would be ignored")
	}
	if !regexp.MustCompile(`(?m)^toolchain go1\.26\.\d+$`).MatchString(repoFile(t, "go.mod")) {
		t.Error("go.mod names no go1.26 toolchain for the build stage to use")
	}
	if got := subcommand(t, img, append(img.entrypoint, img.cmd...)); got != "migrator serve" {
		t.Errorf("the image runs %q by default, want migrator serve", got)
	}
	if u := img.user; u == "" || u == "root" || u == "0" || strings.HasPrefix(u, "root:") || strings.HasPrefix(u, "0:") {
		t.Errorf("final stage USER %q: want a non-root user", u)
	}
	if len(img.expose) != 1 || img.expose[0] != "8080" {
		t.Errorf("EXPOSE %q, want 8080 (serve's default MIGRATOR_HTTP_ADDR)", img.expose)
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-tags release", "-s -w", "-X main.version=", "./cmd/migrator"} {
		if !strings.Contains(img.buildLine, want) {
			t.Errorf("build line %q lacks %q", img.buildLine, want)
		}
	}
}

// fly.toml's release command, process and checks name what the image's
// binary really has and serves.
func TestDeployFlyToml(t *testing.T) {
	cfg := loadFlyConfig(t)
	img := parseDockerfile(t)
	if cfg.Build.Dockerfile != "Dockerfile" {
		t.Errorf("[build] dockerfile = %q", cfg.Build.Dockerfile)
	}
	// Fly runs a release or process command as the image's CMD: after the
	// ENTRYPOINT (flyctl puts it in the machine's init.cmd).
	if got := subcommand(t, img, append(img.entrypoint, strings.Fields(cfg.Deploy.ReleaseCommand)...)); got != "migrator db upgrade" {
		t.Errorf("release_command runs %q, want migrator db upgrade", got)
	}
	if len(cfg.Processes) == 0 {
		t.Fatal("no [processes]")
	}
	for name, command := range cfg.Processes {
		if got := subcommand(t, img, append(img.entrypoint, strings.Fields(command)...)); got != "migrator serve" {
			t.Errorf("process %s runs %q, want migrator serve", name, got)
		}
	}
	// No secret inline: these come from `fly secrets set`.
	for _, k := range []string{databaseURLEnv, flyTokenEnv, drainKeyEnv, sealKeyEnv, notifySlackURLEnv, notifyPDKeyEnv, notifyHookURLEnv, notifyHookSecret, notifyHookPrevious} {
		if _, ok := cfg.Env[k]; ok {
			t.Errorf("[env] sets the secret %s; it belongs in fly secrets", k)
		}
	}
	if err := checkWebURL(cfg.Env[webURLEnv]); err != nil {
		t.Errorf("[env] %s: %v", webURLEnv, err)
	}
	secretsLine := regexp.MustCompile(`(?m)^#\s+fly secrets set (.*)$`).FindStringSubmatch(repoFile(t, "fly.toml"))
	for _, k := range []string{databaseURLEnv, flyTokenEnv, drainKeyEnv, sealKeyEnv} {
		if secretsLine == nil || !strings.Contains(secretsLine[1], k+"=") {
			t.Errorf("fly.toml does not document `fly secrets set … %s=…` in a comment", k)
		}
	}
	port := strings.TrimPrefix(cfg.Env[httpAddrEnv], ":")
	if port != "8080" {
		t.Errorf("[env] %s = %q, want :8080 (the port the checks use)", httpAddrEnv, cfg.Env[httpAddrEnv])
	}
	// Every machine of the organization reaches that address (the
	// customers' agents too): as deployed, the web view is served with
	// credentials from fly secrets, or not at all; never open.
	for _, k := range []string{webTokenEnv, webBasicAuthEnv, webOpenEnv} {
		if v, ok := cfg.Env[k]; ok {
			t.Errorf("[env] sets %s=%q: the web view's credentials belong in fly secrets, and it is never open on Fly", k, v)
		}
	}
	if !regexp.MustCompile(`(?m)^#\s+fly secrets set ` + webTokenEnv + `=`).MatchString(repoFile(t, "fly.toml")) {
		t.Errorf("fly.toml does not document `fly secrets set %s=…` in a comment", webTokenEnv)
	}
	ln, err := net.Listen("tcp", strings.TrimSuffix(cfg.Env[httpAddrEnv], port)+"0")
	if err != nil {
		t.Fatal(err)
	}
	access, err := loadWebAccess(&env{getenv: func(k string) string { return cfg.Env[k] }})
	if mode := access.mode(ln.Addr()); err != nil || mode != webOff {
		t.Errorf("fly.toml's [env] on %s: web view %s (%v), want off without the secret", ln.Addr(), mode, err)
	}
	ln.Close()

	// Every path Fly calls is served by serve's handler. /healthz needs no
	// database, so the handler is built without one.
	srv := httptest.NewServer(healthHandler(&components{}))
	defer srv.Close()
	var paths []string
	if len(cfg.Checks) == 0 {
		t.Fatal("no [checks]: Fly would not know when a replica is healthy")
	}
	for name, c := range cfg.Checks {
		if c.Type != "http" || c.Port != 8080 || c.Path == "" {
			t.Errorf("check %s: %+v, want an http check on port 8080", name, c)
		}
		if c.Path != "/healthz" {
			t.Errorf("check %s on %s: want /healthz (process up; /readyz fails while the database is away)", name, c.Path)
		}
		paths = append(paths, c.Path)
	}
	for _, m := range cfg.Metrics {
		if m.Port != 8080 {
			t.Errorf("[[metrics]] on port %d, want 8080", m.Port)
		}
		paths = append(paths, m.Path)
	}
	for _, p := range paths {
		res, err := http.Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %d, want 200 (fly.toml has Fly call it)", p, res.StatusCode)
		}
	}
}
