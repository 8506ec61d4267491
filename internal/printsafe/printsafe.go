// Package printsafe cleans text that came from outside migrator (an agent's
// answers, Fly's, rows read back from the database) before it reaches a
// person: a terminal, a one-line field of a table or a log, a spreadsheet.
//
// # Model
//
// One cleaner, a small state machine over runes, decides what is shown:
//
//   - Terminal control sequences are removed whole, not just their ESC
//     (ECMA-48 and xterm's ctlseqs): CSI (ESC [ … final byte, or the 8-bit
//     CSI U+009B), the string controls OSC, DCS, SOS, PM and APC (ESC ], P,
//     X, ^, _ or their 8-bit forms, up to BEL or ST), and two- or
//     three-character escapes (ESC ( B). So "\x1b]52;c;…\x07" (OSC 52: write
//     the operator's clipboard) and "\x1b[2J" (clear the screen) leave
//     nothing behind. A string control that never ends stops at the next
//     newline, so one field cannot swallow the lines after it.
//   - Every other C0 control except newline and tab (CR included: it
//     overwrites a line), DEL and every C1 control are dropped.
//   - The bidirectional overrides and isolates (U+202A–U+202E,
//     U+2066–U+2069: "Trojan Source", CVE-2021-42574) and the other
//     characters Go does not count as printable (format, private use,
//     unassigned) are dropped; other spaces become a plain space; bytes
//     that are not UTF-8 become U+FFFD.
//
// Text applies it to a whole string; Line also flattens the result to one
// bounded line (for a table cell, an error, a stored field); Writer applies
// it to a stream (the command line's stdout and stderr), keeping its state
// across writes; CSVCell also neutralises a spreadsheet formula (OWASP's
// "CSV Injection": a cell starting with =, +, -, @, tab or CR gets a
// leading single quote).
package printsafe

import (
	"io"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

// state is where the cleaner is in a control sequence.
type state uint8

const (
	ground   state = iota // ordinary text
	escape                // after ESC
	escInter              // after ESC and intermediate bytes (0x20–0x2F)
	csi                   // in a control sequence: parameters, intermediates
	str                   // in a string control (OSC, DCS, SOS, PM, APC)
	strEsc                // after ESC in a string control (ST is ESC \)
)

// cleaner is the state machine; the zero value is ready.
type cleaner struct{ st state }

// step consumes r and reports the rune to show, if any.
func (c *cleaner) step(r rune) (rune, bool) {
	for {
		switch c.st {
		case ground:
			return c.ground(r)
		case escape, escInter:
			switch {
			case r == '\n':
				c.st = ground
				return r, true
			case r == 0x1b:
				c.st = escape
				return 0, false
			case c.st == escape && r == '[':
				c.st = csi
				return 0, false
			case c.st == escape && (r == ']' || r == 'P' || r == 'X' || r == '^' || r == '_'):
				c.st = str
				return 0, false
			case r >= 0x20 && r <= 0x2f:
				c.st = escInter
				return 0, false
			case r >= 0x30 && r <= 0x7e:
				c.st = ground // the final character of a short escape
				return 0, false
			case r < 0x20 || r == 0x7f:
				return 0, false // a control inside the escape: dropped
			}
			c.st = ground // not an escape after all: the ESC alone is dropped
		case csi:
			switch {
			case r == '\n':
				c.st = ground
				return r, true
			case r == 0x1b:
				c.st = escape
				return 0, false
			case r >= 0x20 && r <= 0x3f, r < 0x20, r == 0x7f, r == 0x9b:
				return 0, false // parameters, intermediates, controls
			case r >= 0x40 && r <= 0x7e:
				c.st = ground // the final byte
				return 0, false
			}
			c.st = ground // aborted by a character that cannot be in it
		case str:
			switch r {
			case 0x07, 0x9c: // BEL (xterm's OSC terminator), ST
				c.st = ground
			case 0x1b:
				c.st = strEsc
			case '\n':
				c.st = ground
				return r, true
			}
			return 0, false
		case strEsc:
			if r == '\\' {
				c.st = ground
				return 0, false
			}
			c.st = escape // ESC ends the string and starts a sequence
		}
	}
}

func (c *cleaner) ground(r rune) (rune, bool) {
	switch {
	case r == '\n' || r == '\t':
		return r, true
	case r == 0x1b:
		c.st = escape
		return 0, false
	case r == 0x9b:
		c.st = csi
		return 0, false
	case r == 0x90 || r == 0x98 || r == 0x9d || r == 0x9e || r == 0x9f: // DCS, SOS, OSC, PM, APC
		c.st = str
		return 0, false
	case r < 0x20 || r >= 0x7f && r <= 0x9f: // other C0, DEL, other C1
		return 0, false
	case r == utf8.RuneError:
		return utf8.RuneError, true
	case r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069:
		return 0, false
	case r == ' ' || r < 0x7f:
		return r, true
	case unicode.IsSpace(r):
		return ' ', true
	case !unicode.IsPrint(r):
		return 0, false
	}
	return r, true
}

// Text returns s without terminal control sequences, control characters
// other than newline and tab, bidirectional overrides or other unprintable
// characters (see the package doc). Text that is clean is returned as is.
func Text(s string) string {
	if clean(s) {
		return s
	}
	var c cleaner
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		if o, ok := c.step(r); ok {
			b.WriteRune(o)
		}
	}
	return b.String()
}

// clean reports whether s is printable ASCII, newlines and tabs only (the
// common case, returned without copying).
func clean(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\n' && c != '\t') || c >= 0x7f {
			return false
		}
	}
	return true
}

// Ellipsis ends a string that Line or Cut shortened.
const Ellipsis = "…"

// Line returns s cleaned as Text does and flattened to one line (every run
// of spaces, tabs and newlines one space, none at either end), at most max
// runes long, the last of them Ellipsis when it was cut. max ≤ 0: no bound.
func Line(s string, max int) string {
	return Cut(strings.Join(strings.Fields(Text(s)), " "), max)
}

// Cut returns s when it has at most max runes, else its first max-1 runes
// and Ellipsis. max ≤ 0: s.
func Cut(s string, max int) string {
	if max <= 0 || len(s) <= max || utf8.RuneCountInString(s) <= max {
		return s
	}
	n := 0
	for i := range s {
		if n == max-1 {
			return s[:i] + Ellipsis
		}
		n++
	}
	return s
}

// CSVCell returns s cleaned as Text does and, when a spreadsheet would
// read it as a formula (it starts with =, +, -, @, tab or CR: OWASP's CSV
// Injection guidance), with a single quote in front, which spreadsheets
// take as "this is text".
func CSVCell(s string) string {
	s = Text(s)
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

// CSVRecord applies CSVCell to every cell of rec, in place, and returns it.
func CSVRecord(rec []string) []string {
	for i, v := range rec {
		rec[i] = CSVCell(v)
	}
	return rec
}

// Writer cleans a stream as Text cleans a string: what is written to it
// reaches the underlying writer without control sequences or characters
// (newlines and tabs stay). A sequence or a UTF-8 character split across
// writes is handled; an incomplete character at the end of the stream is
// dropped. Safe for concurrent use.
type Writer struct {
	mu   sync.Mutex
	w    io.Writer
	c    cleaner
	pend []byte // the start of a UTF-8 character split across writes
	buf  []byte
}

// NewWriter returns a Writer over w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Unwrap returns the underlying writer, for the one caller that writes
// control sequences of its own (run follow's live view redraws in place).
func (w *Writer) Unwrap() io.Writer { return w.w }

// Write cleans p and writes the result; it reports len(p) on success.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	data := p
	if len(w.pend) > 0 {
		data = append(w.pend, p...)
		w.pend = nil
	}
	out := w.buf[:0]
	for i := 0; i < len(data); {
		if !utf8.FullRune(data[i:]) {
			w.pend = append([]byte(nil), data[i:]...)
			break
		}
		r, n := utf8.DecodeRune(data[i:])
		i += n
		if o, ok := w.c.step(r); ok {
			out = utf8.AppendRune(out, o)
		}
	}
	w.buf = out
	if len(out) > 0 {
		if _, err := w.w.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}
