// Package docs holds migrator's documentation by audience (runbook,
// configuration, operations, behaviour, architecture) and, in this file
// only, the test that keeps every Markdown file's relative links working.
package docs

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"
)

// TestMarkdownLinks: every relative link and image in every Markdown file
// of the repository (README.md, docs/, bench/README.md, …; not
// bench/results.md, which the benchmark writes) points to a file or folder
// that exists and, with a #fragment into a Markdown file, to one of its
// headings (GitHub's anchors). The tests run in docs/, so the repository is
// "..".
func TestMarkdownLinks(t *testing.T) {
	files, links := 0, 0
	for _, f := range markdownFiles(t, "..") {
		files++
		ls, problems := checkLinks("..", f)
		links += ls
		for _, p := range problems {
			t.Error(p)
		}
	}
	// The README and docs/ alone link to each other dozens of times;
	// finding none means the extraction broke.
	if files < 7 || links < 30 {
		t.Fatalf("checked %d links in %d Markdown files: too few, the walk or the parser is broken", links, files)
	}
}

// Every alert in deploy/prometheus/alerts.yml has its section in the
// runbook, headed by its name, so its runbook_url can be
// docs/runbook.md#<name lowercased>.
func TestRunbookHasEveryAlert(t *testing.T) {
	rules, err := os.ReadFile(filepath.Join("..", "deploy", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	alerts := regexp.MustCompile(`(?m)^\s*-?\s*alert:\s*"?([A-Za-z0-9_]+)"?`).FindAllStringSubmatch(string(rules), -1)
	if len(alerts) == 0 {
		t.Fatal("no alert found in deploy/prometheus/alerts.yml")
	}
	runbook, err := os.ReadFile("runbook.md")
	if err != nil {
		t.Fatal(err)
	}
	anchors := headingAnchors(string(runbook))
	headings := map[string]bool{}
	for _, h := range headings_(string(runbook)) {
		headings[h] = true
	}
	for _, a := range alerts {
		name := a[1]
		if !headings[name] {
			t.Errorf("docs/runbook.md has no heading %q (the alert's name, exactly)", name)
		}
		if !anchors[strings.ToLower(name)] {
			t.Errorf("docs/runbook.md has no anchor #%s", strings.ToLower(name))
		}
	}
}

// The checker must be able to fail: a missing file, a missing heading, a
// link inside code (not a link) and the slug rules.
func TestCheckLinksFindsBrokenOnes(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.md", "# Top\n\n## What \"healthy\" means — after `serve`?\n\n## Top\n\n"+
		"[ok](b/c.md#who-can-reach-serve) [ok](#what-healthy-means--after-serve) [ok](#top-1) [ok](b/)\n"+
		"[bad file](b/nope.md) [bad anchor](b/c.md#nope) [bad own anchor](#top-2)\n"+
		"![bad image](img.png) `[not a link](nope.md)` [web](https://example.com/x)\n"+
		"```md\n[in a block](nope.md)\n# Not a heading\n```\n[bad heading](#not-a-heading)\n")
	write("b/c.md", "## Who can reach `serve`\n")
	n, problems := checkLinks(dir, "a.md")
	want := []string{
		"a.md:8: link b/nope.md: no such file",
		"a.md:8: link b/c.md#nope: b/c.md has no heading with the anchor #nope",
		"a.md:8: link #top-2: a.md has no heading with the anchor #top-2",
		"a.md:9: link img.png: no such file",
		"a.md:14: link #not-a-heading: a.md has no heading with the anchor #not-a-heading",
	}
	if n != 9 || !slices.Equal(problems, want) {
		t.Errorf("checked %d links, problems:\n%s\nwant 9 and:\n%s", n, strings.Join(problems, "\n"), strings.Join(want, "\n"))
	}
}

func TestSlug(t *testing.T) {
	for _, c := range []struct{ heading, want string }{
		{"MigratorRunPaused", "migratorrunpaused"},
		{"What \"healthy\" means after a recreate", "what-healthy-means-after-a-recreate"},
		{"Who can reach `serve`", "who-can-reach-serve"},
		{"The Fly token: least privilege", "the-fly-token-least-privilege"},
		{"Set-up: the two commands", "set-up-the-two-commands"},
		{"Gentle drains: the activity scenario", "gentle-drains-the-activity-scenario"},
		{"drain → update → verify", "drain--update--verify"},
		{"`MIGRATOR_WEB_OPEN` and [links](x.md)", "migrator_web_open-and-links"},
		{"**Why** is agent X not migrated?", "why-is-agent-x-not-migrated"},
	} {
		if got := slug(c.heading); got != c.want {
			t.Errorf("slug(%q) = %q, want %q", c.heading, got, c.want)
		}
	}
}

// markdownFiles lists the Markdown files under root, relative to it,
// leaving out hidden folders, testdata and bench/results.md.
func markdownFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(rel, ".md") && rel != "bench/results.md" {
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var (
	// An inline link or image: [text](target "title"). Reference-style
	// definitions: [label]: target.
	inlineLink = regexp.MustCompile(`!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)`)
	refLink    = regexp.MustCompile(`^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+"[^"]*")?\s*$`)
	inlineCode = regexp.MustCompile("`+[^`]*`+")
	fence      = regexp.MustCompile("^ {0,3}(```+|~~~+)")
	scheme     = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
)

// checkLinks checks the links of the Markdown file rel (relative to root):
// it returns how many relative links it checked and one line per broken
// one.
func checkLinks(root, rel string) (int, []string) {
	data, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		return 0, []string{err.Error()}
	}
	var problems []string
	n := 0
	for i, line := range proseLines(string(data)) {
		if line == "" {
			continue
		}
		line = inlineCode.ReplaceAllString(line, "")
		var targets []string
		for _, m := range inlineLink.FindAllStringSubmatch(line, -1) {
			targets = append(targets, m[1])
		}
		if m := refLink.FindStringSubmatch(line); m != nil {
			targets = append(targets, m[1])
		}
		for _, target := range targets {
			if scheme.MatchString(target) || strings.HasPrefix(target, "//") {
				continue // http(s), mailto: not ours to check offline
			}
			n++
			if err := checkTarget(root, rel, target); err != nil {
				problems = append(problems, fmt.Sprintf("%s:%d: link %s: %v", rel, i+1, target, err))
			}
		}
	}
	return n, problems
}

// checkTarget resolves a relative link of the file rel.
func checkTarget(root, rel, target string) error {
	file, frag, _ := strings.Cut(target, "#")
	if i := strings.IndexByte(file, '?'); i >= 0 {
		file = file[:i]
	}
	dest := rel
	if file != "" {
		if strings.HasPrefix(file, "/") {
			dest = path.Clean(strings.TrimPrefix(file, "/"))
		} else {
			dest = path.Join(path.Dir(rel), file)
		}
		if dest == ".." || strings.HasPrefix(dest, "../") {
			return fmt.Errorf("outside the repository")
		}
		if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(dest))); err != nil {
			return fmt.Errorf("no such file")
		}
	}
	if frag == "" || !strings.HasSuffix(dest, ".md") {
		return nil // an anchor into code (#L10) is GitHub's to resolve
	}
	data, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(dest)))
	if err != nil {
		return err
	}
	if !headingAnchors(string(data))[frag] {
		return fmt.Errorf("%s has no heading with the anchor #%s", dest, frag)
	}
	return nil
}

// proseLines returns the file's lines with those inside fenced code blocks
// blanked (kept as "" so line numbers hold).
func proseLines(text string) []string {
	lines := strings.Split(text, "\n")
	open := ""
	for i, line := range lines {
		if m := fence.FindStringSubmatch(line); m != nil {
			if open == "" {
				open = m[1]
				lines[i] = ""
				continue
			}
			if m[1][0] == open[0] && len(m[1]) >= len(open) && strings.TrimSpace(line) == m[1] {
				open = ""
				lines[i] = ""
				continue
			}
		}
		if open != "" {
			lines[i] = ""
		}
	}
	return lines
}

var (
	atxHeading = regexp.MustCompile(`^ {0,3}#{1,6}(?:\s+(.*?))?(?:\s+#+)?\s*$`)
	htmlAnchor = regexp.MustCompile(`<a\s+(?:name|id)="([^"]+)"`)
)

// headings_ returns the text of the file's ATX headings, outside code
// blocks.
func headings_(text string) []string {
	var out []string
	for _, line := range proseLines(text) {
		if m := atxHeading.FindStringSubmatch(line); m != nil {
			out = append(out, strings.TrimSpace(m[1]))
		}
	}
	return out
}

// headingAnchors returns the anchors GitHub gives the file's headings (a
// repeated slug gets -1, -2, …) and its explicit <a name|id="…"> anchors.
func headingAnchors(text string) map[string]bool {
	anchors := map[string]bool{}
	seen := map[string]int{}
	for _, h := range headings_(text) {
		s := slug(h)
		if k, ok := seen[s]; ok {
			seen[s] = k + 1
			s = fmt.Sprintf("%s-%d", s, k+1)
		} else {
			seen[s] = 0
		}
		anchors[s] = true
	}
	for _, m := range htmlAnchor.FindAllStringSubmatch(text, -1) {
		anchors[m[1]] = true
	}
	return anchors
}

var mdLink = regexp.MustCompile(`!?\[([^\]]*)\]\([^)]*\)`)

// slug is GitHub's anchor for a heading (github-slugger): the rendered
// text lowercased, every character but letters, digits, marks, '-' and
// '_' dropped, and each space turned into '-'.
func slug(heading string) string {
	text := mdLink.ReplaceAllString(heading, "$1")
	text = strings.NewReplacer("`", "", "**", "", "__", "").Replace(text)
	text = regexp.MustCompile(`<[^>]+>`).ReplaceAllString(text, "")
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(text)) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}
