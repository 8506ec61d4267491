package policy

import (
	"strconv"
	"strings"
)

// keyLines maps every key and array element of a TOML document to the line
// it is written on. github.com/BurntSushi/toml keeps one position per dotted
// key name, so an error in the first [[rules]] table would be reported at the
// last rule's line; this scanner counts array elements itself.
//
// It only ever runs on documents the toml package accepted, so it diagnoses
// nothing, but it must not panic or loop on any input (FuzzIndexLines). Paths are key components with "[i]" for array elements,
// joined by a NUL byte.
type keyLines map[string]int

func pathKey(path []string) string { return strings.Join(path, "\x00") }

// line returns the line of path, or of its nearest ancestor that was found;
// 0 if none.
func (kl keyLines) line(path []string) int {
	for n := len(path); n > 0; n-- {
		if l, ok := kl[pathKey(path[:n])]; ok {
			return l
		}
	}
	return 0
}

func elem(i int) string { return "[" + strconv.Itoa(i) + "]" }

type lineScanner struct {
	src    []byte
	i      int
	line   int
	lines  keyLines
	arrays map[string]int // resolved path of an array of tables → elements seen
}

// maxDepth bounds nesting of arrays and inline tables; deeper values are
// skipped (their keys keep their parent's line).
const maxDepth = 64

func indexLines(src []byte) keyLines {
	s := &lineScanner{src: src, line: 1, lines: keyLines{}, arrays: map[string]int{}}
	s.document()
	return s.lines
}

func (s *lineScanner) eof() bool { return s.i >= len(s.src) }

func (s *lineScanner) peek(off int) byte {
	if s.i+off < len(s.src) {
		return s.src[s.i+off]
	}
	return 0
}

func (s *lineScanner) advance() {
	if s.src[s.i] == '\n' {
		s.line++
	}
	s.i++
}

// record notes the line of path and of each ancestor not seen before: a key
// is defined once in a valid document, so the first sighting is its own.
// Ancestors are recorded before their descendants, so the walk up stops at
// the first one already known.
func (s *lineScanner) record(path []string, line int) {
	for n := len(path); n > 0; n-- {
		k := pathKey(path[:n])
		if _, ok := s.lines[k]; ok {
			return
		}
		s.lines[k] = line
	}
}

func (s *lineScanner) document() {
	var table []string
	for !s.eof() {
		s.skipSpace(true)
		if s.eof() {
			return
		}
		line := s.line
		switch {
		case s.peek(0) == '[' && s.peek(1) == '[':
			s.i += 2
			table = s.resolve(s.key(), true)
			s.record(table, line)
		case s.peek(0) == '[':
			s.i++
			table = s.resolve(s.key(), false)
			s.record(table, line)
		default:
			key := s.key()
			if len(key) == 0 {
				break // not a key: skip the line
			}
			path := append(append([]string(nil), table...), key...)
			s.record(path, line)
			s.skipSpace(false)
			if s.peek(0) == '=' {
				s.i++
			}
			s.value(path, 0)
		}
		s.skipLine()
	}
}

// resolve turns a table header's key into a path, indexing through arrays of
// tables: after two [[rules]] headers, [rules.match] means rules[1].match.
func (s *lineScanner) resolve(key []string, array bool) []string {
	var out []string
	for j, k := range key {
		out = append(out, k)
		p := pathKey(out)
		if array && j == len(key)-1 {
			n := s.arrays[p]
			s.arrays[p] = n + 1
			return append(out, elem(n))
		}
		if n := s.arrays[p]; n > 0 {
			out = append(out, elem(n-1))
		}
	}
	return out
}

// key reads a dotted key (bare, "basic" or 'literal' parts).
func (s *lineScanner) key() []string {
	var parts []string
	for {
		s.skipSpace(false)
		var part string
		switch c := s.peek(0); {
		case s.eof():
			return parts
		case c == '"':
			start := s.i
			s.i++
			for !s.eof() && s.peek(0) != '"' && s.peek(0) != '\n' {
				if s.peek(0) == '\\' && s.i+1 < len(s.src) && s.src[s.i+1] != '\n' {
					s.i++
				}
				s.i++
			}
			if s.peek(0) == '"' {
				s.i++
			}
			raw := string(s.src[start:s.i])
			if u, err := strconv.Unquote(raw); err == nil {
				part = u
			} else {
				part = strings.Trim(raw, `"`)
			}
		case c == '\'':
			s.i++
			start := s.i
			for !s.eof() && s.peek(0) != '\'' && s.peek(0) != '\n' {
				s.i++
			}
			part = string(s.src[start:s.i])
			if s.peek(0) == '\'' {
				s.i++
			}
		default:
			start := s.i
			for !s.eof() && !strings.ContainsRune(" \t\r\n.=[]{}#,\"'", rune(s.peek(0))) {
				s.i++
			}
			if s.i == start {
				return parts
			}
			part = string(s.src[start:s.i])
		}
		parts = append(parts, part)
		s.skipSpace(false)
		if s.peek(0) != '.' {
			return parts
		}
		s.i++
	}
}

// value skips one value, recording the lines of array elements and of the
// keys of inline tables.
func (s *lineScanner) value(path []string, depth int) {
	s.skipSpace(false)
	if s.eof() {
		return
	}
	switch s.peek(0) {
	case '"', '\'':
		s.str()
	case '[':
		s.i++
		for n := 0; ; {
			s.skipSpace(true)
			if s.eof() {
				return
			}
			switch s.peek(0) {
			case ']':
				s.i++
				return
			case ',':
				s.i++
				continue
			}
			el := append(append([]string(nil), path...), elem(n))
			s.record(el, s.line)
			n++
			s.nested(el, depth)
		}
	case '{':
		s.i++
		for {
			s.skipSpace(true)
			if s.eof() {
				return
			}
			switch s.peek(0) {
			case '}':
				s.i++
				return
			case ',':
				s.i++
				continue
			}
			line := s.line
			k := s.key()
			if len(k) == 0 {
				s.advance()
				continue
			}
			p := append(append([]string(nil), path...), k...)
			s.record(p, line)
			s.skipSpace(false)
			if s.peek(0) == '=' {
				s.i++
			}
			s.nested(p, depth)
		}
	default:
		for !s.eof() && !strings.ContainsRune(",]}#\r\n", rune(s.peek(0))) {
			s.i++
		}
	}
}

// nested reads a value inside an array or inline table, always consuming at
// least one byte so a malformed document cannot stall the scan.
func (s *lineScanner) nested(path []string, depth int) {
	at := s.i
	if depth < maxDepth {
		s.value(path, depth+1)
	}
	if s.i == at && !s.eof() {
		s.advance()
	}
}

// str skips a string of any of TOML's four kinds.
func (s *lineScanner) str() {
	q := s.peek(0)
	if s.peek(1) == q && s.peek(2) == q {
		s.i += 3
		for !s.eof() {
			if s.peek(0) == q && s.peek(1) == q && s.peek(2) == q {
				s.i += 3
				// Up to two more quotes belong to the content.
				for k := 0; k < 2 && s.peek(0) == q; k++ {
					s.i++
				}
				return
			}
			if q == '"' && s.peek(0) == '\\' && s.i+1 < len(s.src) {
				s.advance()
			}
			s.advance()
		}
		return
	}
	s.i++
	for !s.eof() && s.peek(0) != q && s.peek(0) != '\n' {
		if q == '"' && s.peek(0) == '\\' && s.i+1 < len(s.src) && s.src[s.i+1] != '\n' {
			s.i++
		}
		s.i++
	}
	if s.peek(0) == q {
		s.i++
	}
}

// skipSpace skips blanks and comments, and newlines too when nl is set.
func (s *lineScanner) skipSpace(nl bool) {
	for !s.eof() {
		switch s.peek(0) {
		case ' ', '\t', '\r':
			s.i++
		case '\n':
			if !nl {
				return
			}
			s.advance()
		case '#':
			for !s.eof() && s.peek(0) != '\n' {
				s.i++
			}
		default:
			return
		}
	}
}

// skipLine moves past the end of the current line.
func (s *lineScanner) skipLine() {
	for !s.eof() && s.peek(0) != '\n' {
		s.i++
	}
	if !s.eof() {
		s.advance()
	}
}
