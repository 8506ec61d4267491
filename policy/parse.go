package policy

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Error is a problem in a policy file. Its text is one line:
// "FILE:LINE: message" ("FILE: message" when the line is unknown).
type Error struct {
	File string
	Line int // 1-based; 0 when unknown
	Msg  string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

// Limits on values, so a typo such as wait = "300h" is an error rather than a
// machine left draining for two weeks. Waits past the gateway marker's 1h
// expiry are fine: the orchestrator refreshes the marker.
const (
	MinWait         = time.Second
	MaxWait         = 24 * time.Hour
	MaxMaxDeferrals = 100
	MaxRules        = 1000
	maxRuleName     = 64
)

// Parse parses a policy file (see the package documentation for its
// schema). Unknown keys and bad values are errors of type *Error naming the
// file and line.
func Parse(filename string, data []byte) (*Policy, error) {
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		return nil, tomlError(filename, err)
	}
	d := &decoder{file: filename, lines: indexLines(data)}
	return d.policy(raw)
}

// ParseTable parses a policy embedded as a table of a larger TOML document,
// such as the [policy] table of migrator.toml, with the same strictness and
// line numbers as Parse.
//
// data is the whole document; md is what toml.Decode returned for it and
// prim the toml.Primitive the table was decoded into; key is the table's key
// path ("policy"). Decoding through md marks every key of the table as
// decoded, so the caller's own md.Undecoded() check stays exact for the
// rest of the file. When the document has no such table, the result is
// Default().
func ParseTable(filename string, data []byte, md *toml.MetaData, prim toml.Primitive, key ...string) (*Policy, error) {
	if len(key) == 0 {
		return nil, errors.New("policy.ParseTable: no table key given")
	}
	if !md.IsDefined(key...) {
		return Default(), nil
	}
	var t rawValue
	if err := md.PrimitiveDecode(prim, &t); err != nil {
		return nil, tomlError(filename, err)
	}
	d := &decoder{file: filename, lines: indexLines(data), prefix: key}
	tbl, ok := t.v.(map[string]any)
	if !ok {
		return nil, d.errf(nil, "%s must be a table, got %s", toml.Key(key), describe(t.v))
	}
	return d.policy(tbl)
}

// rawValue receives a table undecoded; as a toml.Unmarshaler it makes the
// toml package mark every key below it as decoded.
type rawValue struct{ v any }

func (r *rawValue) UnmarshalTOML(v any) error { r.v = v; return nil }

func tomlError(file string, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return &Error{File: file, Line: pe.Position.Line, Msg: oneLine(pe.Message)}
	}
	return &Error{File: file, Msg: oneLine(err.Error())}
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

type decoder struct {
	file   string
	lines  keyLines
	prefix []string // key path of the policy table in its document
}

func (d *decoder) line(path []string) int {
	return d.lines.line(append(slices.Clone(d.prefix), path...))
}

func (d *decoder) errf(path []string, format string, args ...any) error {
	return &Error{File: d.file, Line: d.line(path), Msg: oneLine(fmt.Sprintf(format, args...))}
}

func child(path []string, k ...string) []string {
	return append(slices.Clone(path), k...)
}

// keys returns tbl's keys in the order they are written, so the first
// problem in the file is the one reported.
func (d *decoder) keys(path []string, tbl map[string]any) []string {
	ks := slices.Collect(maps.Keys(tbl))
	slices.SortFunc(ks, func(a, b string) int {
		return cmp.Or(cmp.Compare(d.line(child(path, a)), d.line(child(path, b))), cmp.Compare(a, b))
	})
	return ks
}

func (d *decoder) policy(raw map[string]any) (*Policy, error) {
	p := &Policy{causes: defaultSettings(), lane: defaultLane(), source: d.file}
	for _, k := range d.keys(nil, raw) {
		var err error
		switch k {
		case "causes":
			err = d.causes(raw[k], p)
		case "rules":
			p.rules, err = d.rules(raw[k])
		case "budget_lane":
			err = d.budgetLane(raw[k], p)
		default:
			err = d.errf([]string{k}, "unknown key %q (want [causes.<cause>] tables, [[rules]] or [budget_lane])", k)
		}
		if err != nil {
			return nil, err
		}
	}
	p.version = p.computeVersion()
	return p, nil
}

const settingKeys = "quiet, wait, on_deadline, max_deferrals, window, idle_wait, on_busy, idle_quiet_for, undrainable, canary_bake"

func (d *decoder) causes(v any, p *Policy) error {
	path := []string{"causes"}
	tbl, ok := v.(map[string]any)
	if !ok {
		return d.errf(path, "causes must be a table of causes such as [causes.auto-update], got %s", describe(v))
	}
	for _, name := range d.keys(path, tbl) {
		cp := child(path, name)
		c, err := ParseCause(name)
		if err != nil {
			return d.errf(cp, "[causes.%s]: %v", name, err)
		}
		t, ok := tbl[name].(map[string]any)
		if !ok {
			return d.errf(cp, "causes.%s must be a table of settings, got %s", name, describe(tbl[name]))
		}
		where := "causes." + name
		var o Rule
		for _, k := range d.keys(cp, t) {
			ok, err := d.setting(child(cp, k), where, k, t[k], &o)
			if err != nil {
				return err
			}
			if !ok {
				return d.errf(child(cp, k), "%s: unknown key %q (want %s)", where, k, settingKeys)
			}
		}
		p.causes[c] = o.apply(p.causes[c])
	}
	return nil
}

// setting decodes one of the settings shared by causes and rules into o;
// false if k is not one.
func (d *decoder) setting(path []string, where, k string, v any, o *Rule) (bool, error) {
	bad := func(format string, args ...any) (bool, error) {
		return true, d.errf(path, "%s: %s: %s", where, k, fmt.Sprintf(format, args...))
	}
	switch k {
	case "quiet":
		b, ok := v.(bool)
		if !ok {
			return bad("want true or false, got %s", describe(v))
		}
		o.Quiet = &b
	case "wait":
		s, ok := v.(string)
		if !ok {
			return bad(`want a duration such as "45m", got %s`, describe(v))
		}
		w, err := parseWait(s)
		if err != nil {
			return bad("%v", err)
		}
		o.Wait = &w
	case "on_deadline":
		s, ok := v.(string)
		if !ok {
			return bad(`want "force" or "defer", got %s`, describe(v))
		}
		od, err := parseOnDeadline(s)
		if err != nil {
			return bad(`%q: want "force" or "defer"`, s)
		}
		o.OnDeadline = &od
	case "undrainable":
		s, ok := v.(string)
		if !ok {
			return bad(`want "fail" or "recreate", got %s`, describe(v))
		}
		u, err := ParseUndrainable(s)
		if err != nil {
			return bad(`%q: want "fail" or "recreate"`, s)
		}
		o.Undrainable = &u
	case "max_deferrals":
		n, ok := v.(int64)
		if !ok {
			return bad("want an integer, got %s", describe(v))
		}
		if n < 0 || n > MaxMaxDeferrals {
			return bad("%d: want 0 to %d", n, MaxMaxDeferrals)
		}
		m := int(n)
		o.MaxDeferrals = &m
	case "idle_wait":
		s, ok := v.(string)
		if !ok {
			return bad(`want a duration such as "10m" ("0s": begin at once), got %s`, describe(v))
		}
		w, err := ParseIdleWait(s)
		if err != nil {
			return bad("%v", err)
		}
		o.IdleWait = &w
	case "idle_quiet_for":
		s, ok := v.(string)
		if !ok {
			return bad(`want a duration such as "2m" ("0s": no quiet needed), got %s`, describe(v))
		}
		q, err := ParseIdleQuietFor(s)
		if err != nil {
			return bad("%v", err)
		}
		o.IdleQuietFor = &q
	case "canary_bake":
		s, ok := v.(string)
		if !ok {
			return bad(`want a duration such as "10m" ("0s": no bake), got %s`, describe(v))
		}
		b, err := ParseCanaryBake(s)
		if err != nil {
			return bad("%v", err)
		}
		o.CanaryBake = &b
	case "on_busy":
		s, ok := v.(string)
		if !ok {
			return bad(`want "defer" or "drain", got %s`, describe(v))
		}
		ob, err := parseOnBusy(s)
		if err != nil {
			return bad(`%q: want "defer" or "drain"`, s)
		}
		o.OnBusy = &ob
	case "window":
		s, ok := v.(string)
		if !ok {
			return bad(`want a string such as "Mon-Fri 02:00-05:00 America/New_York", got %s`, describe(v))
		}
		w, err := parseWindow(s)
		if err != nil {
			return bad("%q: %v", s, err)
		}
		o.Window = &w
	default:
		return false, nil
	}
	return true, nil
}

func parseWait(s string) (time.Duration, error) {
	w, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return 0, fmt.Errorf(`%q is not a duration (want e.g. "45m" or "1h30m")`, s)
	case w < MinWait:
		return 0, fmt.Errorf("%q: want at least %v", s, MinWait)
	case w > MaxWait:
		return 0, fmt.Errorf("%q: want at most %v", s, MaxWait)
	}
	return w, nil
}

// ParseIdleWait parses an idle wait: a Go duration from 0 (begin at once)
// to MaxWait. run create --idle-wait uses it too.
func ParseIdleWait(s string) (time.Duration, error) {
	w, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return 0, fmt.Errorf(`%q is not a duration (want e.g. "10m", or "0s" to begin at once)`, s)
	case w < 0:
		return 0, fmt.Errorf("%q: want 0s or more", s)
	case w > MaxWait:
		return 0, fmt.Errorf("%q: want at most %v", s, MaxWait)
	}
	return w, nil
}

// MaxIdleQuietFor bounds idle_quiet_for: Hermes itself waits 2 minutes
// (scale-to-zero's idle timeout, 5 before hermes-agent #91155).
const MaxIdleQuietFor = time.Hour

// ParseIdleQuietFor parses idle_quiet_for: a Go duration from 0 (an idle
// moment needs no quiet before it) to MaxIdleQuietFor.
func ParseIdleQuietFor(s string) (time.Duration, error) {
	q, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return 0, fmt.Errorf(`%q is not a duration (want e.g. "2m", or "0s" for none)`, s)
	case q < 0:
		return 0, fmt.Errorf("%q: want 0s or more", s)
	case q > MaxIdleQuietFor:
		return 0, fmt.Errorf("%q: want at most %v", s, MaxIdleQuietFor)
	}
	return q, nil
}

// MaxCanaryBake bounds canary_bake (and run create --canary-bake).
const MaxCanaryBake = 24 * time.Hour

// ParseCanaryBake parses a canary bake: a Go duration from 0 (no bake) to
// MaxCanaryBake. run create --canary-bake uses it too.
func ParseCanaryBake(s string) (time.Duration, error) {
	b, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return 0, fmt.Errorf(`%q is not a duration (want e.g. "10m", or "0s" for no bake)`, s)
	case b < 0:
		return 0, fmt.Errorf("%q: want 0s or more", s)
	case b > MaxCanaryBake:
		return 0, fmt.Errorf("%q: want at most %v", s, MaxCanaryBake)
	}
	return b, nil
}

func (d *decoder) rules(v any) ([]Rule, error) {
	path := []string{"rules"}
	var elems []any
	switch t := v.(type) {
	case []map[string]any:
		for _, m := range t {
			elems = append(elems, m)
		}
	case []any:
		elems = t
	default:
		return nil, d.errf(path, "rules must be an array of tables ([[rules]]), got %s", describe(v))
	}
	if len(elems) > MaxRules {
		return nil, d.errf(path, "%d rules: at most %d are allowed", len(elems), MaxRules)
	}
	var out []Rule
	for i, el := range elems {
		r, err := d.rule(i, el)
		if err != nil {
			return nil, err
		}
		for _, prev := range out {
			if prev.Name == r.Name {
				return nil, d.errf(child(path, elem(i), "name"), "duplicate rule name %q (first used at line %d)", r.Name, prev.Line)
			}
		}
		for _, prev := range out {
			if prev.subsumes(r) {
				return nil, d.errf(child(path, elem(i)),
					"rule %q can never match: rule %q (line %d) comes first and selects every machine it would", r.Name, prev.Name, prev.Line)
			}
		}
		out = append(out, r)
	}
	return out, nil
}

const ruleKeys = "name, causes, match, app_prefix, regions, " + settingKeys

func (d *decoder) rule(i int, v any) (Rule, error) {
	path := []string{"rules", elem(i)}
	t, ok := v.(map[string]any)
	if !ok {
		return Rule{}, d.errf(path, "rules[%d] must be a table, got %s", i, describe(v))
	}
	nv, ok := t["name"]
	if !ok {
		return Rule{}, d.errf(path, "rules[%d]: missing name", i)
	}
	name, ok := nv.(string)
	if !ok || !validRuleName(name) {
		return Rule{}, d.errf(child(path, "name"),
			"rules[%d]: name %s: want 1 to %d letters, digits, '.', '_' or '-', starting with a letter or digit", i, show(nv), maxRuleName)
	}
	r := Rule{Name: name, Line: d.line(path)}
	where := fmt.Sprintf("rule %q", name)
	for _, k := range d.keys(path, t) {
		kp := child(path, k)
		bad := func(format string, args ...any) error {
			return d.errf(kp, "%s: %s: %s", where, k, fmt.Sprintf(format, args...))
		}
		switch k {
		case "name":
		case "causes":
			list, err := d.stringList(kp, where, k, t[k])
			if err != nil {
				return Rule{}, err
			}
			for j, s := range list {
				c, err := ParseCause(s)
				if err != nil {
					return Rule{}, d.errf(child(kp, elem(j)), "%s: causes: %v", where, err)
				}
				if slices.Contains(r.Causes, c) {
					return Rule{}, d.errf(child(kp, elem(j)), "%s: causes: %s listed twice", where, c)
				}
				r.Causes = append(r.Causes, c)
			}
		case "match":
			m, ok := t[k].(map[string]any)
			if !ok {
				return Rule{}, bad(`want a table of labels such as { tier = "vip" }, got %s`, describe(t[k]))
			}
			if len(m) == 0 {
				return Rule{}, bad("empty; leave it out to match every machine")
			}
			r.Match = map[string]string{}
			for _, lk := range d.keys(kp, m) {
				s, ok := m[lk].(string)
				if lk == "" || !ok || s == "" {
					return Rule{}, d.errf(child(kp, lk), "%s: match: label %q: want a non-empty string value, got %s", where, lk, show(m[lk]))
				}
				r.Match[lk] = s
			}
		case "app_prefix":
			s, ok := t[k].(string)
			if !ok || !validAppPrefix(s) {
				return Rule{}, bad("want the start of a Fly app name (lowercase letters, digits, '-'), got %s", show(t[k]))
			}
			r.AppPrefix = s
		case "regions":
			list, err := d.stringList(kp, where, k, t[k])
			if err != nil {
				return Rule{}, err
			}
			for j, s := range list {
				if !validRegion(s) {
					return Rule{}, d.errf(child(kp, elem(j)), "%s: regions: %q: want a Fly region code such as \"iad\"", where, s)
				}
				if slices.Contains(r.Regions, s) {
					return Rule{}, d.errf(child(kp, elem(j)), "%s: regions: %q listed twice", where, s)
				}
				r.Regions = append(r.Regions, s)
			}
		default:
			ok, err := d.setting(kp, where, k, t[k], &r)
			if err != nil {
				return Rule{}, err
			}
			if !ok {
				return Rule{}, d.errf(kp, "%s: unknown key %q (want %s)", where, k, ruleKeys)
			}
		}
	}
	return r, nil
}

// stringList decodes a non-empty array of strings.
func (d *decoder) stringList(path []string, where, k string, v any) ([]string, error) {
	arr, ok := v.([]any)
	if !ok {
		return nil, d.errf(path, "%s: %s: want an array of strings, got %s", where, k, describe(v))
	}
	if len(arr) == 0 {
		return nil, d.errf(path, "%s: %s: empty; leave it out to match everything", where, k)
	}
	out := make([]string, len(arr))
	for j, x := range arr {
		s, ok := x.(string)
		if !ok {
			return nil, d.errf(child(path, elem(j)), "%s: %s: want strings, got %s", where, k, describe(x))
		}
		out[j] = s
	}
	return out, nil
}

func validRuleName(s string) bool {
	if s == "" || len(s) > maxRuleName {
		return false
	}
	for i, c := range s {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || !strings.ContainsRune("._-", c)) {
			return false
		}
	}
	return true
}

// validAppPrefix: Fly app names are lowercase letters, digits and dashes,
// so any other prefix could never match.
func validAppPrefix(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func validRegion(s string) bool {
	if s == "" || len(s) > 16 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// describe names a TOML value's type for error messages.
func describe(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case map[string]any:
		return "a table"
	case []any, []map[string]any:
		return "an array"
	case nil:
		return "nothing"
	default:
		return "a date-time"
	}
}

// show is describe, with the value itself for strings.
func show(v any) string {
	if s, ok := v.(string); ok {
		return fmt.Sprintf("%q", s)
	}
	return describe(v)
}
