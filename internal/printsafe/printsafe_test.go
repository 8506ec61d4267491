package printsafe

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestText(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"plain", "telegram connected", "telegram connected"},
		{"newline and tab kept", "a\tb\nc", "a\tb\nc"},
		{"OSC 52 with BEL", "x\x1b]52;c;ZXZpbA==\x07y", "xy"},
		{"OSC with ST", "x\x1b]0;title\x1b\\y", "xy"},
		{"clear screen", "\x1b[2Jgone", "gone"},
		{"SGR colour", "\x1b[1;31mred\x1b[0m", "red"},
		{"CSI private", "\x1b[?25lhidden cursor", "hidden cursor"},
		{"charset escape", "\x1b(Bascii", "ascii"},
		{"8-bit CSI", "a\u009b2Jb", "ab"},
		{"8-bit OSC to ST", "a\u009d52;c;x\u009cb", "ab"},
		{"DCS", "a\x1bPqsixel\x1b\\b", "ab"},
		{"unterminated OSC stops at newline", "a\x1b]52;c;xxxx\nnext line", "a\nnext line"},
		{"ESC then text", "\x1b\u00e9t\u00e9", "été"},
		{"lone ESC at end", "end\x1b", "end"},
		{"CR BS BEL VT FF NUL DEL", "a\rb\bc\x07d\ve\ff\x00g\x7fh", "abcdefgh"},
		{"C1 NEL", "a\u0085b", "ab"},
		{"bidi override", "abc\u202edcba\u202c", "abcdcba"},
		{"bidi isolate", "\u2066x\u2069", "x"},
		{"zero width space", "a\u200bb", "ab"},
		{"no-break space", "a\u00a0b", "a b"},
		{"line separator", "a\u2028b", "a b"},
		{"invalid UTF-8", "a\xffb", "a\uFFFDb"},
		{"emoji and CJK kept", "🚀 日本", "🚀 日本"},
		{"slack mention kept (escaped at Slack's face)", "<!channel> <https://evil.example|runbook>", "<!channel> <https://evil.example|runbook>"},
		{"ESC inside OSC starts a new sequence", "a\x1b]0;t\x1b[2Jb", "ab"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Text(tc.in); got != tc.want {
				t.Fatalf("Text(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestLine(t *testing.T) {
	for _, tc := range []struct {
		in   string
		max  int
		want string
	}{
		{"  a\n\tb  c  ", 0, "a b c"},
		{"\x1b[2J<!here>\r\nsecond", 0, "<!here> second"},
		{"abcdef", 4, "abc…"},
		{"abcd", 4, "abcd"},
		{"日本語テキスト", 3, "日本…"},
		{"", 5, ""},
	} {
		if got := Line(tc.in, tc.max); got != tc.want {
			t.Errorf("Line(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
		if tc.max > 0 && utf8.RuneCountInString(Line(tc.in, tc.max)) > tc.max {
			t.Errorf("Line(%q, %d) is longer than %d runes", tc.in, tc.max, tc.max)
		}
	}
}

func TestCSVCell(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`=HYPERLINK("https://evil.example","x")`, `'=HYPERLINK("https://evil.example","x")`},
		{"+1+1", "'+1+1"},
		{"-2+3", "'-2+3"},
		{"@SUM(A1)", "'@SUM(A1)"},
		{"\tx", "'\tx"},
		{"\r=1+1", "'=1+1"}, // CR is dropped, the formula is still caught
		{"\x1b[2J=1", "'=1"},
		{"hermes-agent-1", "hermes-agent-1"},
		{"2026-03-08T07:30:00Z", "2026-03-08T07:30:00Z"},
		{"", ""},
	} {
		if got := CSVCell(tc.in); got != tc.want {
			t.Errorf("CSVCell(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// The writer gives the same result however the stream is split: every
// split point of a hostile text, sequences and UTF-8 characters included.
func TestWriterSplits(t *testing.T) {
	in := "ok \x1b]52;c;ZXZpbA==\x07 日本 \x1b[2J\u009b1m<!channel>\x1b(B end\xff\n\x1b]unterminated\nline"
	want := Text(in)
	if strings.ContainsAny(want, "\x1b\x07\u009b") {
		t.Fatalf("Text left a control in %q", want)
	}
	for i := 0; i <= len(in); i++ {
		var b bytes.Buffer
		w := NewWriter(&b)
		for _, part := range []string{in[:i], in[i:]} {
			if n, err := w.Write([]byte(part)); err != nil || n != len(part) {
				t.Fatalf("Write = %d, %v", n, err)
			}
		}
		if b.String() != want {
			t.Fatalf("split at %d: %q, want %q", i, b.String(), want)
		}
	}
	if w := NewWriter(&bytes.Buffer{}); w.Unwrap() == nil {
		t.Fatal("Unwrap lost the writer")
	}
}

// Whatever goes in, nothing that a terminal acts on comes out: no C0 but
// newline and tab, no DEL, no C1, no invalid UTF-8.
func FuzzText(f *testing.F) {
	for _, s := range []string{"\x1b]52;c;x\x07", "\x1b[2J", "\u009b31m", "a\xffb", "\x1bP\x1b\\", "<!channel>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := Text(s)
		if !utf8.ValidString(out) {
			t.Fatalf("Text(%q) = %q: not UTF-8", s, out)
		}
		for _, r := range out {
			if (r < 0x20 && r != '\n' && r != '\t') || (r >= 0x7f && r <= 0x9f) || (r >= 0x202a && r <= 0x202e) {
				t.Fatalf("Text(%q) = %q holds %U", s, out, r)
			}
		}
		line := Line(s, 50)
		if strings.ContainsAny(line, "\n\t") || utf8.RuneCountInString(line) > 50 {
			t.Fatalf("Line(%q, 50) = %q", s, line)
		}
		var b bytes.Buffer
		w := NewWriter(&b)
		_, _ = w.Write([]byte(s))
		if b.String() != out && !(!utf8.ValidString(s) && strings.HasPrefix(out, b.String())) {
			t.Fatalf("Writer(%q) = %q, Text = %q", s, b.String(), out)
		}
	})
}
