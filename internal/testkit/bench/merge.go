package bench

import (
	"fmt"
	"strings"
	"time"
)

// keptNote starts the line that says which sections of a results file come
// from an earlier run.
const keptNote = "Sections of scenarios not re-run are kept from an earlier run:"

// MergeMarkdown folds a report of some scenarios (fresh) into an earlier
// results file (old): the header and the notes on method are fresh; the
// targets table has the fresh rows and the old rows of targets the fresh
// run did not measure; a section the fresh report does not have (the
// activity comparison, when it was not re-run) is kept; the old "##
// Scenarios" table and earlier re-runs are kept as they were (with a note
// naming the run they came from), and the fresh one follows them as "##
// Scenarios re-run on DATE".
func MergeMarkdown(old, fresh string, date time.Time) string {
	oh, oldSecs := splitSections(old)
	fh, fs := splitSections(fresh)
	origin := ""
	for _, l := range strings.Split(oh, "\n") {
		switch {
		case strings.HasPrefix(l, keptNote):
			origin = strings.TrimSpace(strings.TrimPrefix(l, keptNote))
		case origin == "" && strings.HasPrefix(l, "Written by "):
			origin = strings.TrimSpace(strings.TrimPrefix(l, "Written by "))
		}
	}
	var b strings.Builder
	b.WriteString(strings.TrimRight(fh, "\n") + "\n\n")
	if origin != "" {
		fmt.Fprintf(&b, "%s %s\n\n", keptNote, origin)
	}
	rerun := "## Scenarios re-run on " + date.UTC().Format("2006-01-02 15:04 MST")
	// kept writes what the fresh report does not replace: sections of
	// scenarios not re-run (the activity comparison, the replicas), the
	// old scenario table and earlier re-runs, once, before the fresh
	// scenario table (or, without one, before the notes on method).
	keptDone := false
	kept := func() {
		if keptDone {
			return
		}
		keptDone = true
		for _, o := range oldSecs {
			if o.title != "## Targets" && o.title != methodTitle && !strings.HasPrefix(o.title, "## Scenarios") &&
				findSection(fs, o.title).title == "" {
				b.WriteString(o.text())
			}
		}
		if k := findSection(oldSecs, "## Scenarios"); k.title != "" {
			b.WriteString(k.text())
		}
		for _, o := range oldSecs { // earlier re-runs, but for this one's
			if strings.HasPrefix(o.title, "## Scenarios re-run on ") && o.title != rerun {
				b.WriteString(o.text())
			}
		}
	}
	for _, sec := range fs {
		switch {
		case sec.title == "## Targets":
			b.WriteString(section{title: sec.title, body: mergeTargets(findSection(oldSecs, "## Targets").body, sec.body)}.text())
		case sec.title == "## Scenarios":
			kept()
			b.WriteString(section{title: rerun, body: sec.body}.text())
		case sec.title == methodTitle:
			kept()
			b.WriteString(sec.text())
		default:
			b.WriteString(sec.text())
		}
	}
	kept()
	return strings.TrimRight(b.String(), "\n") + "\n"
}

// methodTitle heads the notes on method, last in every results file.
const methodTitle = "## How it is measured"

type section struct{ title, body string }

// text is the section with one blank line after its heading and after
// its body, whatever the spacing it was read with.
func (s section) text() string { return s.title + "\n\n" + strings.Trim(s.body, "\n") + "\n\n" }

// splitSections cuts Markdown at its "## " headings.
func splitSections(md string) (head string, secs []section) {
	lines := strings.SplitAfter(md, "\n")
	var cur *section
	var h strings.Builder
	for _, l := range lines {
		if strings.HasPrefix(l, "## ") {
			secs = append(secs, section{title: strings.TrimRight(l, "\n")})
			cur = &secs[len(secs)-1]
			continue
		}
		if cur == nil {
			h.WriteString(l)
		} else {
			cur.body += l
		}
	}
	return h.String(), secs
}

func findSection(secs []section, title string) section {
	for _, s := range secs {
		if s.title == title {
			return s
		}
	}
	return section{}
}

// mergeTargets keeps the fresh table, replacing its "not run" rows by the
// old rows of the same target, and appends old targets it does not have.
func mergeTargets(old, fresh string) string {
	oldRows := map[string]string{}
	var oldOrder []string
	for _, l := range strings.Split(old, "\n") {
		if k := targetKey(l); k != "" {
			oldRows[k] = l
			oldOrder = append(oldOrder, k)
		}
	}
	seen := map[string]bool{}
	var out []string
	for _, l := range strings.Split(strings.Trim(fresh, "\n"), "\n") {
		k := targetKey(l)
		if k != "" {
			seen[k] = true
			if strings.HasSuffix(strings.TrimSpace(l), "| not run |") && oldRows[k] != "" {
				l = oldRows[k]
			}
		}
		out = append(out, l)
	}
	for _, k := range oldOrder {
		if !seen[k] && !retiredTargets[k] {
			out = append(out, oldRows[k])
		}
	}
	return strings.Join(out, "\n")
}

// retiredTargets are targets an issue replaced: an earlier file's row is
// not kept.
var retiredTargets = map[string]bool{
	// LB_r assumed instant drains, which no idle-first schedule reaches:
	// replaced by the makespan ≤ 1.25 × LB_idle target (issue 19).
	"activity: makespan of the migrated machines ≤ 1.25 × LB_r": true,
}

// targetKey is a targets table row's first cell ("" for other lines).
func targetKey(l string) string {
	if !strings.HasPrefix(l, "| ") || strings.HasPrefix(l, "| target |") {
		return ""
	}
	cells := strings.Split(l, "|")
	if len(cells) < 3 {
		return ""
	}
	return strings.TrimSpace(cells[1])
}
