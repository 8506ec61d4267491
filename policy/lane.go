package policy

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// BudgetLane is the customer lane: runs of its causes (a customer's env
// edit or profile change, one agent at a time, a person waiting in a
// browser) take their own small budget instead of the fleet cap, so they
// never wait for the slots a fleet run (an auto-update of the whole
// fleet) holds. Its cap is Share of the fleet's machines, at least Min.
// Fleet causes never take it.
//
//	[budget_lane]
//	causes = ["env-edit", "profile-change"]  # customer causes only; [] = no lane
//	share = "1%"                             # of the fleet's machines, > 0% .. 100%
//	min = 5                                  # at least this many at once, 1 .. 10000
type BudgetLane struct {
	Causes []Cause
	// SharePercent is the share of the fleet, in percent.
	SharePercent float64
	Min          int
}

// CustomerCauses are the causes a customer asks for (through NAS): only
// they may take the customer lane.
func CustomerCauses() []Cause { return []Cause{EnvEdit, ProfileChange} }

// MaxLaneMin bounds budget_lane's min.
const MaxLaneMin = 10000

func defaultLane() BudgetLane {
	return BudgetLane{Causes: CustomerCauses(), SharePercent: 1, Min: 5}
}

// Lane returns the customer lane.
func (p *Policy) Lane() BudgetLane {
	l := p.lane
	l.Causes = slices.Clone(l.Causes)
	return l
}

// InLane reports whether runs of cause c take the customer lane.
func (l BudgetLane) InLane(c Cause) bool { return slices.Contains(l.Causes, c) }

// Cap is the lane's cap for a fleet of fleetMachines: the share rounded
// up, and never below Min.
func (l BudgetLane) Cap(fleetMachines int) int {
	return max(l.Min, int(math.Ceil(l.SharePercent*float64(fleetMachines)/100)))
}

// String is the lane as a person reads it: "env-edit, profile-change: 1%
// of the fleet, at least 5".
func (l BudgetLane) String() string {
	if len(l.Causes) == 0 {
		return "no customer lane"
	}
	names := make([]string, len(l.Causes))
	for i, c := range l.Causes {
		names[i] = string(c)
	}
	return fmt.Sprintf("%s: %s%% of the fleet, at least %d", strings.Join(names, ", "),
		strconv.FormatFloat(l.SharePercent, 'f', -1, 64), l.Min)
}

func (l BudgetLane) isDefault() bool {
	d := defaultLane()
	return slices.Equal(l.Causes, d.Causes) && l.SharePercent == d.SharePercent && l.Min == d.Min
}

// budgetLane decodes the [budget_lane] table.
func (d *decoder) budgetLane(v any, p *Policy) error {
	path := []string{"budget_lane"}
	t, ok := v.(map[string]any)
	if !ok {
		return d.errf(path, "budget_lane must be a table (causes, share, min), got %s", describe(v))
	}
	l := defaultLane()
	for _, k := range d.keys(path, t) {
		kp := child(path, k)
		bad := func(format string, args ...any) error {
			return d.errf(kp, "budget_lane: %s: %s", k, fmt.Sprintf(format, args...))
		}
		switch k {
		case "causes":
			if arr, ok := t[k].([]any); ok && len(arr) == 0 {
				l.Causes = nil // no lane: every run takes the fleet's budget
				continue
			}
			list, err := d.stringList(kp, "budget_lane", k, t[k])
			if err != nil {
				return err
			}
			l.Causes = nil
			for j, s := range list {
				c, err := ParseCause(s)
				if err != nil {
					return d.errf(child(kp, elem(j)), "budget_lane: causes: %v", err)
				}
				if !slices.Contains(CustomerCauses(), c) {
					return d.errf(child(kp, elem(j)), "budget_lane: causes: %s is a fleet cause: only env-edit and profile-change take the customer lane", c)
				}
				if slices.Contains(l.Causes, c) {
					return d.errf(child(kp, elem(j)), "budget_lane: causes: %s listed twice", c)
				}
				l.Causes = append(l.Causes, c)
			}
		case "share":
			s, ok := t[k].(string)
			if !ok {
				return bad(`want a percentage such as "1%%", got %s`, describe(t[k]))
			}
			num, pct := strings.CutSuffix(strings.TrimSpace(s), "%")
			f, err := strconv.ParseFloat(num, 64)
			if !pct || err != nil || math.IsNaN(f) || f <= 0 || f > 100 {
				return bad(`%q: want a percentage above 0%% and at most 100%%, such as "1%%"`, s)
			}
			l.SharePercent = f
		case "min":
			n, ok := t[k].(int64)
			if !ok {
				return bad("want an integer, got %s", describe(t[k]))
			}
			if n < 1 || n > MaxLaneMin {
				return bad("%d: want 1 to %d", n, MaxLaneMin)
			}
			l.Min = int(n)
		default:
			return bad("unknown key (want causes, share, min)")
		}
	}
	p.lane = l
	return nil
}
