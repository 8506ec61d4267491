package flymachines

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
)

// Env is a machine's config.env: a customer's values (bot tokens, keys).
// It never prints, logs or marshals its values: fmt shows its names only
// ("env[A B]"), slog the names, JSON the names as an array. Read a value
// by key, in memory, where it is needed (comparing, sending to Fly).
type Env map[string]string

// Names is the keys, sorted.
func (e Env) Names() []string { return slices.Sorted(maps.Keys(e)) }

// String shows the names only.
func (e Env) String() string { return "env[" + strings.Join(e.Names(), " ") + "]" }

// GoString shows the names only (%#v).
func (e Env) GoString() string { return e.String() }

// Format shows the names only, whatever the verb.
func (e Env) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(e.String())) }

// LogValue logs the names only.
func (e Env) LogValue() slog.Value { return slog.AnyValue(e.Names()) }

// MarshalJSON writes the names only.
func (e Env) MarshalJSON() ([]byte, error) { return json.Marshal(e.Names()) }

var (
	_ fmt.Formatter  = Env(nil)
	_ slog.LogValuer = Env(nil)
	_ json.Marshaler = Env(nil)
)

// EnvChange sets and unsets keys of config.env; the rest of it is kept.
type EnvChange struct {
	Set   map[string]string
	Unset []string
}

// Empty reports whether the change touches no key.
func (c EnvChange) Empty() bool { return len(c.Set) == 0 && len(c.Unset) == 0 }

// String shows the names only.
func (c EnvChange) String() string {
	return fmt.Sprintf("set %v unset %v", Env(c.Set).Names(), c.Unset)
}

// Format shows the names only, whatever the verb.
func (c EnvChange) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(c.String())) }

// values are the values the change sets, to redact from Fly's answers.
func (c *EnvChange) values() []string {
	if c == nil {
		return nil
	}
	out := make([]string, 0, len(c.Set))
	for _, v := range c.Set {
		if len(v) >= 4 { // shorter values are words, not secrets, and would mangle the text
			out = append(out, v)
		}
	}
	return out
}

// HasEnv reports whether env already holds the change: every key set with
// its value, every key unset absent.
func HasEnv(env map[string]string, c EnvChange) bool {
	for k, v := range c.Set {
		if got, ok := env[k]; !ok || got != v {
			return false
		}
	}
	for _, k := range c.Unset {
		if _, ok := env[k]; ok {
			return false
		}
	}
	return true
}

// applyEnv is env with c applied, a new map (stored configs are shared).
func applyEnv(env map[string]string, c EnvChange) map[string]string {
	out := maps.Clone(env)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, c.Set)
	for _, k := range c.Unset {
		delete(out, k)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// EnvBefore is what the keys a change touches held before it: the value,
// or absent (ok false). A rollback applies it back (Restore).
type EnvBefore map[string]*string

// Before reads, from env, what the keys c touches hold now.
func Before(env map[string]string, c EnvChange) EnvBefore {
	out := EnvBefore{}
	for k := range c.Set {
		out[k] = lookup(env, k)
	}
	for _, k := range c.Unset {
		out[k] = lookup(env, k)
	}
	return out
}

func lookup(env map[string]string, k string) *string {
	if v, ok := env[k]; ok {
		return &v
	}
	return nil
}

// Restore is the change that puts the keys back as they were.
func (b EnvBefore) Restore() EnvChange {
	var c EnvChange
	for _, k := range slices.Sorted(maps.Keys(b)) {
		if v := b[k]; v != nil {
			if c.Set == nil {
				c.Set = map[string]string{}
			}
			c.Set[k] = *v
		} else {
			c.Unset = append(c.Unset, k)
		}
	}
	return c
}

// String shows the names only.
func (b EnvBefore) String() string { return fmt.Sprintf("env before %v", slices.Sorted(maps.Keys(b))) }

// Format shows the names only, whatever the verb.
func (b EnvBefore) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(b.String())) }
