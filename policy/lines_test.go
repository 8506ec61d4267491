package policy

import "testing"

func TestIndexLines(t *testing.T) {
	src := `top = 1
[causes.auto-update]   # a table
wait = "1h"
[[rules]]
name = "a"
note = """
[[rules]]
"""
[rules.match]
tier = "vip"
[[rules]]
name = "b"
"quoted.key" = 1
dotted . key = 2
list = [
  "x",
  { k = "v" },
]
rules2 = [ { name = "c" }, { name = "d" } ]
`
	want := map[string]int{
		"top":                                   1,
		"causes":                                2,
		"causes\x00auto-update":                 2,
		"causes\x00auto-update\x00wait":         3,
		"rules":                                 4,
		"rules\x00[0]":                          4,
		"rules\x00[0]\x00name":                  5,
		"rules\x00[0]\x00match":                 9,
		"rules\x00[0]\x00match\x00tier":         10,
		"rules\x00[1]":                          11,
		"rules\x00[1]\x00name":                  12,
		"rules\x00[1]\x00quoted.key":            13,
		"rules\x00[1]\x00dotted\x00key":         14,
		"rules\x00[1]\x00list\x00[0]":           16,
		"rules\x00[1]\x00list\x00[1]\x00k":      17,
		"rules\x00[1]\x00rules2\x00[1]\x00name": 19,
	}
	got := indexLines([]byte(src))
	for k, l := range want {
		if got[k] != l {
			t.Errorf("line of %q = %d, want %d", k, got[k], l)
		}
	}
	if _, ok := got["rules\x00[2]"]; ok {
		t.Errorf("the [[rules]] inside a string was counted as a rule")
	}
}

// FuzzIndexLines: the scanner terminates without panicking on any bytes,
// valid TOML or not.
func FuzzIndexLines(f *testing.F) {
	f.Add([]byte("[[rules]]\nname = \"a\"\nx = [[[1]]]\ny = '''\n'''\n"))
	f.Add([]byte("a = { b = [ { c = \"\\\"\" } ] }\n[a.\"b\".'c']\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		_ = indexLines(src)
	})
}
