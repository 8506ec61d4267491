//go:build !release

package cli

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// The docs (README.md, docs/, bench/README.md, …) show migrator's commands
// for people to copy. These tests hold them to the command tree, the way
// TestDeployDockerfile holds the image's command line to it: every
// `migrator …` line of a ```sh block names a real subcommand whose flags and
// arguments parse, and every `migrator …` (or `run create …`-style) code
// span in the prose names a real subcommand and only flags it has. The
// sandbox, fleetsim and bench commands exist only without the release tag,
// hence this file's build constraint.

// docCommand is one command line found in a doc.
type docCommand struct {
	where string   // file:line
	argv  []string // the words after "migrator"
}

// TestDocsShellCommandsParse: every migrator command line in a ```sh block
// (and every "$ migrator …" line of a ```text block) resolves to a runnable
// subcommand that accepts its flags and arguments.
func TestDocsShellCommandsParse(t *testing.T) {
	cmds := 0
	for _, doc := range docsMarkdown(t) {
		for _, c := range shellCommands(t, doc) {
			cmds++
			if err := checkDocCommand(c.argv); err != nil {
				t.Errorf("%s: migrator %s: %v", c.where, strings.Join(c.argv, " "), err)
			}
		}
	}
	// The README alone shows more than this; finding none means the
	// extraction broke, not that the docs are right.
	if cmds < 20 {
		t.Fatalf("found only %d migrator command lines in the docs' sh blocks", cmds)
	}
}

// TestDocsProseCommandsExist: a code span in the prose such as
// `migrator history --busy-deferred` or `run create --canary-bake D` names
// a real subcommand, and each --flag in it is one that subcommand has.
// Placeholders (D, N, …, A|B, [--json]) are allowed in prose; only the
// command path and the flag names are checked.
func TestDocsProseCommandsExist(t *testing.T) {
	spans := 0
	for _, doc := range docsMarkdown(t) {
		for _, c := range proseCommands(doc) {
			spans++
			if err := checkDocFlags(c.argv); err != nil {
				t.Errorf("%s: `%s`: %v", c.where, strings.Join(c.argv, " "), err)
			}
		}
	}
	if spans < 20 {
		t.Fatalf("found only %d migrator command spans in the docs' prose", spans)
	}
}

// TestDocsNameEveryFlagAndVariable: every flag of every command is named
// (--flag) in some doc, and every environment variable the CLI reads is in
// docs/configuration.md, so a new one cannot ship undocumented.
func TestDocsNameEveryFlagAndVariable(t *testing.T) {
	var all strings.Builder
	for _, doc := range docsMarkdown(t) {
		all.WriteString(doc.text)
	}
	docs := all.String()
	root := newRoot(&env{getenv: func(string) string { return "" }, stdout: io.Discard, stderr: io.Discard})
	flags := 0
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" || c.Name() == "completion" {
			return
		}
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if f.Hidden || f.Name == "help" {
				return
			}
			flags++
			if !regexp.MustCompile(`--` + regexp.QuoteMeta(f.Name) + `([^a-z0-9-]|$)`).MatchString(docs) {
				t.Errorf("%s --%s is in no doc (docs/configuration.md lists every command's flags)", c.CommandPath(), f.Name)
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	if flags < 50 {
		t.Fatalf("walked only %d flags", flags)
	}

	config, err := os.ReadFile(filepath.Join("..", "..", "docs", "configuration.md"))
	if err != nil {
		t.Fatal(err)
	}
	sources, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]bool{}
	envName := regexp.MustCompile(`"((?:MIGRATOR|FLY)_[A-Z0-9_]+|DATABASE_URL)"`)
	for _, f := range sources {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range envName.FindAllStringSubmatch(string(src), -1) {
			vars[m[1]] = true
		}
	}
	if len(vars) < 20 {
		t.Fatalf("found only %d environment variables in internal/cli", len(vars))
	}
	for v := range vars {
		if !strings.Contains(string(config), "`"+v+"`") {
			t.Errorf("%s is read by internal/cli but not in docs/configuration.md", v)
		}
	}
}

// The checks themselves must be able to fail.
func TestDocsCommandCheckRejects(t *testing.T) {
	for _, argv := range [][]string{
		{"nosuch"},
		{"run", "create", "--no-such-flag"},
		{"run", "status", "1", "2"},        // one run id
		{"history", "--limit"},             // a flag without its value
		{"run", "create", "--canary", "x"}, // not an int
	} {
		if err := checkDocCommand(argv); err == nil {
			t.Errorf("migrator %s: accepted", strings.Join(argv, " "))
		}
	}
	if err := checkDocFlags([]string{"history", "--no-such-flag"}); err == nil {
		t.Error("a prose span with an unknown flag was accepted")
	}
	if err := checkDocFlags([]string{"nosuch", "--json"}); err == nil {
		t.Error("a prose span with an unknown subcommand was accepted")
	}
	doc := markdownDoc{path: "x.md", text: "```sh\nmigrator run status 1 \\\n  --json   # a comment\nDATABASE_URL=x migrator history --app 'a b' | head\ngo run ./cmd/migrator bench --scenario activity\n```\n"}
	got := shellCommands(t, doc)
	want := []docCommand{
		{"x.md:2", []string{"run", "status", "1", "--json"}},
		{"x.md:4", []string{"history", "--app", "a b"}},
		{"x.md:5", []string{"bench", "--scenario", "activity"}},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("shellCommands = %v, want %v", got, want)
	}
}

// checkDocCommand resolves argv against a fresh command tree (flag values
// do not carry over from one line to the next) and parses its flags and
// arguments, as TestDeployDockerfile's subcommand does.
func checkDocCommand(argv []string) error {
	root := newRoot(&env{getenv: func(string) string { return "" }, stdout: io.Discard, stderr: io.Discard})
	cmd, rest, err := root.Find(argv)
	if err != nil {
		return err
	}
	if cmd == root {
		return fmt.Errorf("no such subcommand")
	}
	if !cmd.Runnable() {
		return fmt.Errorf("%s is not runnable", cmd.CommandPath())
	}
	if err := cmd.ParseFlags(rest); err != nil {
		return err
	}
	return cmd.ValidateArgs(cmd.Flags().Args())
}

// checkDocFlags resolves the command path of a prose span and checks that
// every --flag in it is one of that command's.
func checkDocFlags(argv []string) error {
	root := newRoot(&env{getenv: func(string) string { return "" }, stdout: io.Discard, stderr: io.Discard})
	var path []string
	for _, w := range argv {
		if strings.HasPrefix(w, "-") || strings.HasPrefix(w, "[") {
			break
		}
		path = append(path, w)
	}
	cmd, _, err := root.Find(path)
	if err != nil {
		return err
	}
	if cmd == root {
		return fmt.Errorf("no such subcommand")
	}
	for _, w := range argv {
		for _, m := range proseFlag.FindAllStringSubmatch(w, -1) {
			if m[1] != "help" && cmd.Flags().Lookup(m[1]) == nil && cmd.InheritedFlags().Lookup(m[1]) == nil {
				return fmt.Errorf("%s has no flag --%s", cmd.CommandPath(), m[1])
			}
		}
	}
	return nil
}

var proseFlag = regexp.MustCompile(`(?:^|[\[|])--([a-z0-9][a-z0-9-]*)`)

type markdownDoc struct {
	path string // relative to the repository root
	text string
}

// docsMarkdown reads every Markdown file of the repository (the tests run
// in internal/cli), except bench/results.md, which the benchmark writes.
func docsMarkdown(t *testing.T) []markdownDoc {
	t.Helper()
	root := filepath.Join("..", "..")
	var docs []markdownDoc
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			if rel != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".md") || filepath.ToSlash(rel) == "bench/results.md" {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		docs = append(docs, markdownDoc{path: filepath.ToSlash(rel), text: string(data)})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(docs, func(d markdownDoc) bool { return d.path == "README.md" }) {
		t.Fatalf("README.md not found from %s", root)
	}
	return docs
}

// fence opens or closes a fenced code block; group 1 is the fence, 2 the
// info string.
var fence = regexp.MustCompile("^ *(```+|~~~+)\\s*([^`\\s]*)")

// shellCommands returns the migrator command lines of doc's ```sh (bash,
// shell) blocks, continuation lines joined and comments dropped, and the
// "$ migrator …" lines of its other blocks (a shown session).
func shellCommands(t *testing.T, doc markdownDoc) []docCommand {
	t.Helper()
	var out []docCommand
	lines := strings.Split(doc.text, "\n")
	inBlock, lang, open := false, "", ""
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if m := fence.FindStringSubmatch(line); m != nil {
			if !inBlock {
				inBlock, lang, open = true, m[2], m[1]
				continue
			}
			if strings.HasPrefix(m[1], open[:1]) && len(m[1]) >= len(open) && strings.TrimSpace(line) == m[1] {
				inBlock = false
				continue
			}
		}
		if !inBlock {
			continue
		}
		shell := lang == "sh" || lang == "bash" || lang == "shell"
		if !shell {
			rest, ok := strings.CutPrefix(strings.TrimSpace(line), "$ ")
			if !ok {
				continue
			}
			line = rest
		}
		start := i + 1
		// A line ending in a backslash goes on on the next one.
		for strings.HasSuffix(strings.TrimRight(line, " "), `\`) && i+1 < len(lines) {
			line = strings.TrimSuffix(strings.TrimRight(line, " "), `\`) + " " + strings.TrimSpace(lines[i+1])
			i++
		}
		segs, err := shellSplit(line)
		if err != nil {
			t.Errorf("%s:%d: %v", doc.path, start, err)
			continue
		}
		for _, words := range segs {
			// "[--json]": an optional flag, shown as usage texts do.
			for j, w := range words {
				if len(w) > 2 && w[0] == '[' && w[1] == '-' && strings.HasSuffix(w, "]") {
					words[j] = w[1 : len(w)-1]
				}
			}
			if argv, ok := migratorArgv(words); ok {
				out = append(out, docCommand{fmt.Sprintf("%s:%d", doc.path, start), argv})
			}
		}
	}
	return out
}

// migratorArgv returns the arguments of a migrator invocation: `migrator
// …`, `go run ./cmd/migrator …` or `/migrator …`, after any VAR=value
// assignments.
func migratorArgv(words []string) ([]string, bool) {
	for len(words) > 0 && regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`).MatchString(words[0]) {
		words = words[1:]
	}
	switch {
	case len(words) >= 1 && (words[0] == "migrator" || words[0] == "/migrator" || words[0] == "./migrator"):
		return words[1:], true
	case len(words) >= 3 && words[0] == "go" && words[1] == "run" && strings.TrimSuffix(words[2], "/") == "./cmd/migrator":
		return words[3:], true
	}
	return nil, false
}

// shellSplit splits a shell line into simple commands (at unquoted |, ||,
// &&, ;) of words, with quotes removed and a comment (an unquoted # at the
// start of a word) dropped. $(…) and ${…} are kept as text. Enough for
// documentation, not a shell.
func shellSplit(line string) ([][]string, error) {
	var segs [][]string
	var words []string
	var w strings.Builder
	inWord := false
	endWord := func() {
		if inWord {
			words = append(words, w.String())
			w.Reset()
			inWord = false
		}
	}
	endSeg := func() {
		endWord()
		if len(words) > 0 {
			segs = append(segs, words)
		}
		words = nil
	}
	rs := []rune(line)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case r == '\'':
			j := i + 1
			for j < len(rs) && rs[j] != '\'' {
				j++
			}
			if j == len(rs) {
				return nil, fmt.Errorf("unterminated ' in %q", line)
			}
			w.WriteString(string(rs[i+1 : j]))
			inWord, i = true, j
		case r == '"':
			j, depth := i+1, 0
			for ; j < len(rs); j++ {
				if rs[j] == '\\' && j+1 < len(rs) {
					j++
					continue
				}
				if rs[j] == '(' {
					depth++
				}
				if rs[j] == ')' && depth > 0 {
					depth--
				}
				if rs[j] == '"' && depth == 0 {
					break
				}
			}
			if j == len(rs) {
				return nil, fmt.Errorf("unterminated \" in %q", line)
			}
			w.WriteString(string(rs[i+1 : j]))
			inWord, i = true, j
		case r == '$' && i+1 < len(rs) && (rs[i+1] == '(' || rs[i+1] == '{'):
			closing, depth, j := map[rune]rune{'(': ')', '{': '}'}[rs[i+1]], 0, i+1
			for ; j < len(rs); j++ {
				if rs[j] == rs[i+1] {
					depth++
				} else if rs[j] == closing {
					depth--
					if depth == 0 {
						break
					}
				}
			}
			if j == len(rs) {
				return nil, fmt.Errorf("unterminated $%c in %q", rs[i+1], line)
			}
			w.WriteString(string(rs[i : j+1]))
			inWord, i = true, j
		case r == '\\' && i+1 < len(rs):
			w.WriteRune(rs[i+1])
			inWord, i = true, i+1
		case r == '#' && !inWord:
			endSeg()
			return segs, nil
		case r == ' ' || r == '\t':
			endWord()
		case r == '|' || r == ';' || r == '&':
			endSeg()
			if i+1 < len(rs) && (rs[i+1] == '|' || rs[i+1] == '&') {
				i++
			}
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	endSeg()
	return segs, nil
}

// codeSpan is an inline code span of the prose (outside fenced blocks).
var codeSpan = regexp.MustCompile("`([^`\n]+)`")

// proseCommands returns the code spans of doc's prose that are migrator
// command lines: `migrator …`, or a top-level subcommand followed by words
// and at least one --flag (`run create --dry-run`, `history --forced`).
func proseCommands(doc markdownDoc) []docCommand {
	root := newRoot(&env{getenv: func(string) string { return "" }, stdout: io.Discard, stderr: io.Discard})
	top := map[string]bool{}
	for _, c := range root.Commands() {
		top[c.Name()] = true
	}
	var out []docCommand
	inBlock := false
	for i, line := range strings.Split(doc.text, "\n") {
		if fence.MatchString(line) {
			inBlock = !inBlock
			continue
		}
		if inBlock {
			continue
		}
		for _, m := range codeSpan.FindAllStringSubmatch(line, -1) {
			words := strings.Fields(m[1])
			if argv, ok := migratorArgv(words); ok {
				// `migrator COMMAND --help`: a placeholder, not a command.
				if len(argv) > 0 && !strings.HasPrefix(argv[0], "-") && argv[0] != strings.ToUpper(argv[0]) {
					out = append(out, docCommand{fmt.Sprintf("%s:%d", doc.path, i+1), argv})
				}
				continue
			}
			if len(words) > 1 && top[words[0]] && strings.Contains(m[1], " --") && isSubcommandPath(root, words) {
				out = append(out, docCommand{fmt.Sprintf("%s:%d", doc.path, i+1), words})
			}
		}
	}
	return out
}

// isSubcommandPath tells a command span (`run create --dry-run`) from a
// span that only starts with a command's name: its words up to the first
// flag must all be subcommands, or the command's own arguments.
func isSubcommandPath(root *cobra.Command, words []string) bool {
	cmd := root
	for _, w := range words {
		if strings.HasPrefix(w, "-") {
			return true
		}
		sub, _, err := cmd.Find([]string{w})
		if err != nil || sub == cmd {
			return cmd != root
		}
		cmd = sub
	}
	return true
}
