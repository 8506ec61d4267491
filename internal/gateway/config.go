package gateway

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/internal/callrec"
	"github.com/hermes-cloud/migrator/internal/drainsecret"
)

// DefaultURLTemplate reaches the dashboard over Fly's private network.
const DefaultURLTemplate = "http://{machine_id}.vm.{app}.internal:9119"

// Defaults applied by New to zero Config fields.
const (
	DefaultCallTimeout   = 10 * time.Second
	DefaultRetryMax      = 4
	DefaultRetryWaitMin  = 200 * time.Millisecond
	DefaultRetryWaitMax  = 5 * time.Second
	DefaultRetryAfterMax = 30 * time.Second
)

// Config configures a Client. Zero fields take the documented defaults.
type Config struct {
	// URLTemplate is the agent's dashboard base URL with placeholders {app}
	// {machine_id} {region} {private_ip} {instance_id}. It may carry a path
	// prefix; the routes are appended. Default DefaultURLTemplate.
	URLTemplate string
	// DrainKey derives each agent's drain secret (drainsecret.Derive).
	// Required, at least drainsecret.MinKeyBytes bytes.
	DrainKey []byte
	// CallTimeout bounds each HTTP attempt. Default 10s.
	CallTimeout time.Duration
	// RetryMax is how many times a retryable failure is retried. Default 4;
	// negative means a single attempt.
	RetryMax int
	// RetryWaitMin and RetryWaitMax bound the exponential backoff (with
	// jitter) between attempts. Defaults 200ms and 5s.
	RetryWaitMin, RetryWaitMax time.Duration
	// RetryAfterMax is the longest Retry-After (on 429 or 503) the client
	// waits out itself; a longer one ends the call with an *HTTPError
	// carrying RetryAfter, so the caller can reschedule. Default 30s.
	RetryAfterMax time.Duration
	// Transport is the base transport. Default: a clone of
	// http.DefaultTransport.
	Transport http.RoundTripper
	// Observe is told of every attempt (metrics). Optional.
	Observe callrec.Observer
	// Logger receives one debug line per attempt. It never gets a secret, a
	// header or a body. Default: discard.
	Logger *slog.Logger
}

// LogValue keeps the drain key out of any log line that includes a Config.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("url_template", c.URLTemplate),
		slog.Bool("drain_key_set", len(c.DrainKey) > 0),
		slog.Duration("call_timeout", c.CallTimeout),
		slog.Int("retry_max", c.RetryMax),
	)
}

func (c Config) withDefaults() Config {
	if c.URLTemplate == "" {
		c.URLTemplate = DefaultURLTemplate
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = DefaultCallTimeout
	}
	switch {
	case c.RetryMax == 0:
		c.RetryMax = DefaultRetryMax
	case c.RetryMax < 0:
		c.RetryMax = 0
	}
	if c.RetryWaitMin == 0 {
		c.RetryWaitMin = DefaultRetryWaitMin
	}
	if c.RetryWaitMax == 0 {
		c.RetryWaitMax = DefaultRetryWaitMax
	}
	if c.RetryAfterMax == 0 {
		c.RetryAfterMax = DefaultRetryAfterMax
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// validate checks a Config after defaults. Its errors never hold the key.
func (c Config) validate() error {
	if len(c.DrainKey) == 0 {
		return errors.New("gateway: drain key is required")
	}
	if err := drainsecret.CheckKey(c.DrainKey); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	if c.CallTimeout < 0 {
		return fmt.Errorf("gateway: call timeout %s is negative", c.CallTimeout)
	}
	if c.RetryWaitMin < 0 || c.RetryWaitMax < 0 {
		return errors.New("gateway: retry waits must not be negative")
	}
	if c.RetryWaitMin > c.RetryWaitMax {
		return fmt.Errorf("gateway: retry wait min %s exceeds max %s", c.RetryWaitMin, c.RetryWaitMax)
	}
	if c.RetryAfterMax < 0 {
		return errors.New("gateway: retry-after max must not be negative")
	}
	if _, err := parseTemplate(c.URLTemplate); err != nil {
		return err
	}
	return nil
}

// Target names one agent. App is always required; the other fields only when
// the URL template uses them.
type Target struct {
	App, MachineID, Region, PrivateIP, InstanceID string
}

// String is "app/machine_id", the target of callrec calls and errors.
func (t Target) String() string { return t.App + "/" + t.MachineID }

func (t Target) value(name string) string {
	switch name {
	case "app":
		return t.App
	case "machine_id":
		return t.MachineID
	case "region":
		return t.Region
	case "private_ip":
		return t.PrivateIP
	case "instance_id":
		return t.InstanceID
	}
	return ""
}

var placeholders = map[string]bool{"app": true, "machine_id": true, "region": true, "private_ip": true, "instance_id": true}

// segment is literal text, or a placeholder when name is set.
type segment struct{ text, name string }

type urlTemplate []segment

// parseTemplate splits a template into literals and placeholders and checks
// that it expands to an absolute http(s) URL without credentials, query or
// fragment (the routes are appended to it).
func parseTemplate(s string) (urlTemplate, error) {
	var out urlTemplate
	rest := s
	for rest != "" {
		i := strings.IndexAny(rest, "{}")
		if i < 0 {
			out = append(out, segment{text: rest})
			break
		}
		if rest[i] == '}' {
			return nil, fmt.Errorf("gateway: URL template %q: unmatched }", s)
		}
		if i > 0 {
			out = append(out, segment{text: rest[:i]})
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return nil, fmt.Errorf("gateway: URL template %q: unclosed {", s)
		}
		name := rest[i+1 : i+j]
		if !placeholders[name] {
			return nil, fmt.Errorf("gateway: URL template %q: unknown placeholder {%s} (known: {app} {machine_id} {region} {private_ip} {instance_id})", s, name)
		}
		out = append(out, segment{name: name})
		rest = rest[i+j+1:]
	}
	// {private_ip} may sit in brackets (IPv6, Fly's 6PN) or bare (IPv4):
	// the template is good if either kind of address expands to a URL.
	probe := Target{App: "app", MachineID: "m", Region: "r", PrivateIP: "fdaa::1", InstanceID: "i"}
	_, err := out.expand(probe)
	if err != nil {
		probe.PrivateIP = "10.0.0.1"
		_, err = out.expand(probe)
	}
	if err != nil {
		reason := err.Error()
		var te *TargetError
		if errors.As(err, &te) {
			reason = te.Reason
		}
		return nil, fmt.Errorf("gateway: URL template %q: %s", s, reason)
	}
	return out, nil
}

// expand replaces the placeholders with the target's path-escaped values.
func (tm urlTemplate) expand(t Target) (string, error) {
	var b strings.Builder
	for _, s := range tm {
		if s.name == "" {
			b.WriteString(s.text)
			continue
		}
		v := t.value(s.name)
		if v == "" {
			return "", &TargetError{Target: t.String(), Reason: "no " + s.name + " for the URL template"}
		}
		b.WriteString(url.PathEscape(v))
	}
	raw := b.String()
	u, err := url.Parse(raw)
	if err != nil {
		// url.Parse's message repeats the URL, which is ours, not a secret;
		// still report only the cause to keep the line short.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", &TargetError{Target: t.String(), Reason: "invalid URL: " + err.Error()}
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", &TargetError{Target: t.String(), Reason: "URL scheme must be http or https"}
	case u.Host == "":
		return "", &TargetError{Target: t.String(), Reason: "URL has no host"}
	case u.User != nil:
		// Also catches a value smuggling "user@" into the host part.
		return "", &TargetError{Target: t.String(), Reason: "URL must not carry credentials"}
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "", &TargetError{Target: t.String(), Reason: "URL must not carry a query or fragment"}
	}
	return strings.TrimRight(raw, "/"), nil
}
