package store_test

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/printer"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The SQL rule: SQL text is built from constants only; every value travels
// as a bind parameter ($1, $2, …). It is checked over every non-test .go file
// of the module.
//
// A call X.Exec(ctx, sql, …), X.Query(ctx, sql, …), X.QueryRow(ctx, sql, …),
// X.Prepare(ctx, name, sql) or X.Queue(sql, …) passes when sql is a
// constant SQL expression:
//
//   - a string literal, a constant, or a package-level variable initialised
//     with string literals only (a column list such as HistoryColumns);
//   - a + b, strings.Join(a, b) or append(a, b…) of constant SQL expressions
//     (concatenating constant column lists and fixed fragments);
//   - pgx.Identifier{…}.Sanitize(): an identifier quoted by pgx (database
//     names in CREATE/DROP DATABASE, which take no parameter);
//   - fmt.Sprintf(f, n…) or fmt.Fprintf(&b, f, n…) where the format f is a
//     constant SQL expression whose only verbs are "$%d" (a placeholder
//     number) and every n is len(…) or an integer literal — the only
//     formatting allowed is numbering placeholders;
//   - b.String() of a local strings.Builder every write to which is one of
//     these;
//   - a local variable every assignment to which is one of these; a
//     parameter of a local closure, or of an unexported function or method,
//     every call of which passes one of these (and that is never used as a
//     value); or the result of a function of the same package every return
//     of which gives one of these (a query builder such as historySQL).
//
// Anything else — a parameter, a field, a value formatted with %s or %v,
// a string concatenated with a variable — fails, naming file and line.
// sqlRuleExceptions lists, with a reason, the few expressions that are SQL
// from somewhere else than Go source.
//
// To find the calls by hand:
//
//	grep -rnE '\.(Exec|Query|QueryRow|Prepare|Queue)\(' --include='*.go' --exclude='*_test.go' .
var sqlRuleExceptions = map[string]string{
	"store/migrate.go: f.SQL": "the embedded migrations/*.sql files, applied as written under the schema lock",
}

func TestSQLIsParameterized(t *testing.T) {
	root := moduleRoot(t)
	var files []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	byDir := map[string][]string{}
	for _, f := range files {
		byDir[filepath.Dir(f)] = append(byDir[filepath.Dir(f)], f)
	}
	for dir, paths := range byDir {
		srcs := map[string][]byte{}
		for _, p := range paths {
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			rel, _ := filepath.Rel(root, p)
			srcs[filepath.ToSlash(rel)] = data
		}
		found, violations, err := checkSQL(srcs)
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		calls += found
		for _, v := range violations {
			t.Errorf("%s", v)
		}
	}
	// The scan sees the store's queries: a rule that matches nothing
	// proves nothing.
	if calls < 30 {
		t.Errorf("found only %d SQL calls in %d files: the scan is broken", calls, len(files))
	}
	t.Logf("%d SQL calls in %d files follow the rule", calls, len(files))
}

// The rule rejects what it must and accepts the patterns the store uses.
func TestSQLRuleCatchesValuesInSQL(t *testing.T) {
	const header = "package p\nimport (\"fmt\"; \"strings\"; \"github.com/jackc/pgx/v5\")\nvar _ = pgx.Identifier{}\nvar _ = strings.Join\nvar _ = fmt.Sprint\n"
	for _, c := range []struct {
		name string
		src  string
		ok   bool
	}{
		{"literal", `func f(q Q, id int) { q.Exec(ctx, "DELETE FROM t WHERE id = $1", id) }`, true},
		{"constant columns", "const cols = `a, b`\nfunc f(q Q, id int) { q.QueryRow(ctx, `SELECT `+cols+` FROM t WHERE id = $1`, id) }", true},
		{"column list var", `var cols = []string{"a", "b"}
func f(q Q) { q.Query(ctx, "SELECT "+strings.Join(cols, ", ")+" FROM t") }`, true},
		{"quoted identifier", `func f(q Q, name string) { sql := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize(); q.Exec(ctx, sql) }`, true},
		{"placeholder numbering", `func build(a, b string) (string, []any) {
	var where []string
	var args []any
	add := func(cond string, v any) { args = append(args, v); where = append(where, fmt.Sprintf(cond, len(args))) }
	if a != "" { add("a = $%d", a) }
	if b != "" { add("b >= $%d", b) }
	var sb strings.Builder
	sb.WriteString("SELECT x FROM t WHERE " + strings.Join(where, " AND "))
	fmt.Fprintf(&sb, " LIMIT $%d", len(args)+1)
	return sb.String(), args
}
func f(q Q) { sql, args := build("x", "y"); q.Query(ctx, "EXPLAIN "+sql, args...) }`, true},
		{"concatenated value", `func f(q Q, id string) { q.Exec(ctx, "DELETE FROM t WHERE id = '"+id+"'") }`, false},
		{"sprintf %s", `func f(q Q, id string) { q.Exec(ctx, fmt.Sprintf("DELETE FROM t WHERE id = '%s'", id)) }`, false},
		{"sprintf %d of a value", `func f(q Q, n int) { q.Exec(ctx, fmt.Sprintf("DELETE FROM t LIMIT %d", n)) }`, false},
		{"placeholder verb with a value", `func f(q Q, n int) { q.Exec(ctx, fmt.Sprintf("SELECT $%d", n)) }`, false},
		{"variable built from a value", `func f(q Q, col string) { sql := "SELECT "; sql += col; q.Query(ctx, sql) }`, false},
		{"builder fed a value", `func f(q Q, col string) { var b strings.Builder; b.WriteString("SELECT "); b.WriteString(col); q.Query(ctx, b.String()) }`, false},
		{"builder function fed a value", `func build(col string) string { return "SELECT " + col }
func f(q Q, col string) { q.Query(ctx, build(col)) }`, false},
		{"closure fed a format with %s", `func f(q Q, v string) { var w []string; add := func(c string) { w = append(w, fmt.Sprintf(c, len(w))) }; add("a = '%s'"); q.Query(ctx, strings.Join(w, "")) }`, false},
		{"unexported helper given fragments", "func (q Q) list(where string, args ...any) { q.Query(ctx, `SELECT a FROM t WHERE `+where, args...) }\nfunc (q Q) One(id int) { q.list(`id = $1`, id) }", true},
		{"unexported helper given a value", "func (q Q) list(where string) { q.Query(ctx, `SELECT a FROM t WHERE `+where) }\nfunc (q Q) One(id string) { q.list(`id = '` + id + `'`) }", false},
		{"exported helper", "func (q Q) List(where string) { q.Query(ctx, `SELECT a FROM t WHERE `+where) }", false},
		{"helper used as a value", "func (q Q) list(where string) { q.Query(ctx, `SELECT a FROM t WHERE `+where) }\nfunc (q Q) One() func(string) { q.list(`x`); return q.list }", false},
		{"field", `func f(q Q, s struct{ SQL string }) { q.Exec(ctx, s.SQL) }`, false},
		{"package var assigned later", `var sql = "SELECT 1"
func set(v string) { sql = v }
func f(q Q) { q.Exec(ctx, sql) }`, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			n, violations, err := checkSQL(map[string][]byte{"p/p.go": []byte(header + c.src)})
			if err != nil {
				t.Fatal(err)
			}
			if n != 1 {
				t.Fatalf("found %d SQL calls, want 1", n)
			}
			if ok := len(violations) == 0; ok != c.ok {
				t.Errorf("passes = %v, want %v (violations %q)", ok, c.ok, violations)
			}
		})
	}
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// sqlMethods maps each method that takes SQL to the index of its SQL
// argument and the fewest arguments a call has.
var sqlMethods = map[string]struct{ arg, min int }{
	"Exec": {1, 2}, "Query": {1, 2}, "QueryRow": {1, 2}, "Prepare": {2, 3}, "Queue": {0, 1},
}

// checkSQL checks the files of one package (path → source) and returns the
// number of SQL calls and one line per violation.
func checkSQL(srcs map[string][]byte) (int, []string, error) {
	c := &sqlChecker{fset: token.NewFileSet(), consts: map[string]bool{}, vars: map[string]ast.Expr{},
		funcs: map[string]*ast.FuncDecl{}, assignedInFuncs: map[string]bool{}}
	names := make([]string, 0, len(srcs))
	for name := range srcs {
		names = append(names, name)
	}
	slices.Sort(names)
	files := map[string]*ast.File{}
	for _, name := range names {
		f, err := parser.ParseFile(c.fset, name, srcs[name], parser.SkipObjectResolution)
		if err != nil {
			return 0, nil, err
		}
		files[name] = f
		c.collect(f)
	}
	n := 0
	var out []string
	for _, name := range names {
		for _, d := range files[name].Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok || fd.Body == nil {
				continue
			}
			ast.Inspect(fd.Body, func(node ast.Node) bool {
				call, ok := node.(*ast.CallExpr)
				if !ok {
					return true
				}
				sel, ok := call.Fun.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				m, ok := sqlMethods[sel.Sel.Name]
				if !ok || len(call.Args) < m.min {
					return true
				}
				n++
				arg := call.Args[m.arg]
				text := c.text(arg)
				if _, ok := sqlRuleExceptions[name+": "+text]; ok {
					return true
				}
				c.memo = map[string]int{}
				if !c.safe(arg, fd, false) {
					pos := c.fset.Position(arg.Pos())
					out = append(out, fmt.Sprintf("%s:%d: %s(…) takes SQL that is not built from constants only: %s",
						name, pos.Line, sel.Sel.Name, text))
				}
				return true
			})
		}
	}
	return n, out, nil
}

type sqlChecker struct {
	fset   *token.FileSet
	consts map[string]bool     // package-level and local constants (by name)
	vars   map[string]ast.Expr // package-level variables and their initialisers
	funcs  map[string]*ast.FuncDecl
	decls  []*ast.FuncDecl // every function and method of the package
	// assignedInFuncs: package-level variables assigned in some function body
	// (then not a constant list).
	assignedInFuncs map[string]bool
	// memo holds, per SQL call, what was decided (or is being decided) of
	// an identifier or a function result. An evaluation in progress counts
	// as safe: x = append(x, …) is decided by x's other assignments. The
	// decision is a conjunction all the way up, so this cannot hide an unsafe
	// part.
	memo map[string]int
}

const (
	deciding = iota + 1
	decidedSafe
	decidedUnsafe
)

// remember runs decide once per key.
func (c *sqlChecker) remember(key string, decide func() bool) bool {
	switch c.memo[key] {
	case deciding, decidedSafe:
		return true
	case decidedUnsafe:
		return false
	}
	c.memo[key] = deciding
	ok := decide()
	c.memo[key] = decidedUnsafe
	if ok {
		c.memo[key] = decidedSafe
	}
	return ok
}

func (c *sqlChecker) collect(f *ast.File) {
	for _, d := range f.Decls {
		switch d := d.(type) {
		case *ast.GenDecl:
			for _, s := range d.Specs {
				vs, ok := s.(*ast.ValueSpec)
				if !ok {
					continue
				}
				for i, id := range vs.Names {
					switch {
					case d.Tok == token.CONST:
						c.consts[id.Name] = true
					case i < len(vs.Values):
						c.vars[id.Name] = vs.Values[i]
					}
				}
			}
		case *ast.FuncDecl:
			c.decls = append(c.decls, d)
			if d.Recv == nil {
				c.funcs[d.Name.Name] = d
			}
			if d.Body != nil {
				ast.Inspect(d.Body, func(n ast.Node) bool {
					switch n := n.(type) {
					case *ast.AssignStmt:
						for _, l := range n.Lhs {
							if id, ok := l.(*ast.Ident); ok {
								c.assignedInFuncs[id.Name] = true
							}
						}
					case *ast.DeclStmt:
						if gd, ok := n.Decl.(*ast.GenDecl); ok && gd.Tok == token.CONST {
							for _, s := range gd.Specs {
								for _, id := range s.(*ast.ValueSpec).Names {
									c.consts[id.Name] = true
								}
							}
						}
					}
					return true
				})
			}
		}
	}
}

func (c *sqlChecker) text(e ast.Expr) string {
	var b strings.Builder
	_ = printer.Fprint(&b, c.fset, e)
	return b.String()
}

// safe reports whether e is a constant SQL expression within fn; asFormat
// also requires every literal piece to use no verb but "$%d".
func (c *sqlChecker) safe(e ast.Expr, fn *ast.FuncDecl, asFormat bool) bool {
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind != token.STRING {
			return false
		}
		if !asFormat {
			return true
		}
		s, err := strconv.Unquote(e.Value)
		return err == nil && onlyPlaceholderVerbs(s)
	case *ast.ParenExpr:
		return c.safe(e.X, fn, asFormat)
	case *ast.BinaryExpr:
		return e.Op == token.ADD && c.safe(e.X, fn, asFormat) && c.safe(e.Y, fn, asFormat)
	case *ast.CompositeLit:
		for _, el := range e.Elts {
			if !c.safe(el, fn, asFormat) {
				return false
			}
		}
		return true
	case *ast.Ident:
		return c.safeIdent(e, fn, asFormat)
	case *ast.CallExpr:
		return c.safeCall(e, fn, asFormat)
	}
	return false
}

func (c *sqlChecker) safeIdent(id *ast.Ident, fn *ast.FuncDecl, asFormat bool) bool {
	return c.remember(fmt.Sprintf("%s.%s.%v", fn.Name.Name, id.Name, asFormat), func() bool {
		if c.isLocal(id.Name, fn) {
			return c.safeLocal(id.Name, fn, asFormat)
		}
		if c.consts[id.Name] && !asFormat {
			return true
		}
		if init, ok := c.vars[id.Name]; ok && !c.assignedInFuncs[id.Name] {
			return c.safe(init, fn, asFormat)
		}
		return false
	})
}

// isLocal: id is declared in fn (parameter, result, :=, var, closure param).
func (c *sqlChecker) isLocal(name string, fn *ast.FuncDecl) bool {
	found := false
	declares := func(fl *ast.FieldList) {
		if fl == nil {
			return
		}
		for _, f := range fl.List {
			for _, n := range f.Names {
				if n.Name == name {
					found = true
				}
			}
		}
	}
	declares(fn.Recv)
	declares(fn.Type.Params)
	declares(fn.Type.Results)
	ast.Inspect(fn.Body, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.AssignStmt:
			if n.Tok == token.DEFINE {
				for _, l := range n.Lhs {
					if id, ok := l.(*ast.Ident); ok && id.Name == name {
						found = true
					}
				}
			}
		case *ast.ValueSpec:
			for _, id := range n.Names {
				if id.Name == name {
					found = true
				}
			}
		case *ast.FuncLit:
			declares(n.Type.Params)
		case *ast.RangeStmt:
			for _, x := range []ast.Expr{n.Key, n.Value} {
				if id, ok := x.(*ast.Ident); ok && id.Name == name {
					found = true
				}
			}
		}
		return !found
	})
	return found
}

// safeLocal: every way the local variable name gets a value in fn is safe.
func (c *sqlChecker) safeLocal(name string, fn *ast.FuncDecl, asFormat bool) bool {
	ok := true
	param := func(fl *ast.FieldList) bool {
		if fl == nil {
			return false
		}
		for _, f := range fl.List {
			for _, n := range f.Names {
				if n.Name == name {
					return true
				}
			}
		}
		return false
	}
	if param(fn.Recv) {
		return false
	}
	if param(fn.Type.Params) {
		return c.safeParam(name, fn, asFormat)
	}
	isName := func(e ast.Expr) bool { id, ok := e.(*ast.Ident); return ok && id.Name == name }
	ast.Inspect(fn.Body, func(n ast.Node) bool {
		if !ok {
			return false
		}
		switch n := n.(type) {
		case *ast.AssignStmt:
			for i, l := range n.Lhs {
				if !isName(l) {
					continue
				}
				switch {
				case len(n.Rhs) == len(n.Lhs):
					ok = ok && c.safe(n.Rhs[i], fn, asFormat)
				case len(n.Rhs) == 1:
					ok = ok && c.safeResult(n.Rhs[0], i, fn, asFormat)
				default:
					ok = false
				}
			}
		case *ast.ValueSpec:
			for i, id := range n.Names {
				if id.Name == name && i < len(n.Values) {
					ok = ok && c.safe(n.Values[i], fn, asFormat)
				}
			}
		case *ast.RangeStmt:
			if isName(n.Key) || isName(n.Value) {
				ok = false
			}
		case *ast.FuncLit:
			// A parameter of a closure bound to a local: safe when every
			// call of that local passes a safe argument there.
			for pi, f := range flatten(n.Type.Params) {
				if f != name {
					continue
				}
				closure := c.closureName(n, fn)
				if closure == "" {
					ok = false
					return false
				}
				calls := 0
				ast.Inspect(fn.Body, func(m ast.Node) bool {
					call, isCall := m.(*ast.CallExpr)
					if isCall && isIdent(call.Fun, closure) {
						calls++
						ok = ok && pi < len(call.Args) && c.safe(call.Args[pi], fn, asFormat)
					}
					return ok
				})
				if calls == 0 {
					ok = false
				}
			}
		}
		return ok
	})
	return ok
}

// safeParam: parameter name of fn is safe when fn is unexported (so every
// caller is in this package), every call of it passes a safe argument there,
// and it is never used as a value (a method value or a function passed
// around could be called with anything).
func (c *sqlChecker) safeParam(name string, fn *ast.FuncDecl, asFormat bool) bool {
	if ast.IsExported(fn.Name.Name) || fn.Type.Params == nil {
		return false
	}
	pi := slices.Index(flatten(fn.Type.Params), name)
	last := fn.Type.Params.List[len(fn.Type.Params.List)-1]
	if _, variadic := last.Type.(*ast.Ellipsis); variadic && pi >= len(flatten(fn.Type.Params))-len(last.Names) {
		return false
	}
	ok, calls := true, 0
	for _, caller := range c.decls {
		if caller.Body == nil {
			continue
		}
		called := map[ast.Node]bool{}
		ast.Inspect(caller.Body, func(n ast.Node) bool {
			if !ok {
				return false
			}
			switch n := n.(type) {
			case *ast.CallExpr:
				target := n.Fun
				if sel, isSel := target.(*ast.SelectorExpr); isSel {
					target = sel.Sel
				}
				if isIdent(target, fn.Name.Name) {
					called[target] = true
					calls++
					ok = pi < len(n.Args) && c.safe(n.Args[pi], caller, asFormat)
				}
			case *ast.Ident:
				if n.Name == fn.Name.Name && !called[n] {
					ok = false // used as a value
				}
			}
			return ok
		})
	}
	return ok && calls > 0
}

// closureName is the local a function literal is bound to (name := func…).
func (c *sqlChecker) closureName(lit *ast.FuncLit, fn *ast.FuncDecl) string {
	name := ""
	ast.Inspect(fn.Body, func(n ast.Node) bool {
		if as, ok := n.(*ast.AssignStmt); ok && len(as.Lhs) == len(as.Rhs) {
			for i, r := range as.Rhs {
				if r == lit {
					if id, ok := as.Lhs[i].(*ast.Ident); ok {
						name = id.Name
					}
				}
			}
		}
		return name == ""
	})
	return name
}

func flatten(fl *ast.FieldList) []string {
	var out []string
	if fl == nil {
		return out
	}
	for _, f := range fl.List {
		if len(f.Names) == 0 {
			out = append(out, "")
		}
		for _, n := range f.Names {
			out = append(out, n.Name)
		}
	}
	return out
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}

func isSel(e ast.Expr, pkg, name string) bool {
	s, ok := e.(*ast.SelectorExpr)
	return ok && isIdent(s.X, pkg) && s.Sel.Name == name
}

// safeResult: result i of the call e is safe (a same-package function all
// of whose returns give a safe value there).
func (c *sqlChecker) safeResult(e ast.Expr, i int, fn *ast.FuncDecl, asFormat bool) bool {
	call, ok := e.(*ast.CallExpr)
	if !ok {
		return false
	}
	id, ok := call.Fun.(*ast.Ident)
	if !ok {
		return false
	}
	callee, ok := c.funcs[id.Name]
	if !ok || callee.Body == nil {
		return false
	}
	return c.remember(fmt.Sprintf("result %s.%d.%v", callee.Name.Name, i, asFormat), func() bool {
		ok := true
		returns := 0
		ast.Inspect(callee.Body, func(n ast.Node) bool {
			if _, lit := n.(*ast.FuncLit); lit {
				return false // a closure's returns are not the function's
			}
			ret, isRet := n.(*ast.ReturnStmt)
			if !isRet || !ok {
				return ok
			}
			returns++
			switch {
			case len(ret.Results) == 1 && i > 0:
				ok = c.safeResult(ret.Results[0], i, callee, asFormat)
			case i < len(ret.Results):
				ok = c.safe(ret.Results[i], callee, asFormat)
			default:
				ok = false // a bare return of named results: not followed
			}
			return ok
		})
		return ok && returns > 0
	})
}

func (c *sqlChecker) safeCall(call *ast.CallExpr, fn *ast.FuncDecl, asFormat bool) bool {
	switch {
	case isSel(call.Fun, "strings", "Join") && len(call.Args) == 2:
		return c.safe(call.Args[0], fn, asFormat) && c.safe(call.Args[1], fn, asFormat)
	case isIdent(call.Fun, "append") && len(call.Args) >= 1:
		for _, a := range call.Args {
			if !c.safe(a, fn, asFormat) {
				return false
			}
		}
		return true
	case isSel(call.Fun, "fmt", "Sprintf") && len(call.Args) >= 1:
		return c.safe(call.Args[0], fn, true) && placeholderNumbers(call.Args[1:])
	}
	if sel, ok := call.Fun.(*ast.SelectorExpr); ok && len(call.Args) == 0 {
		switch sel.Sel.Name {
		case "Sanitize": // pgx.Identifier{…}.Sanitize(): a quoted identifier
			if cl, ok := sel.X.(*ast.CompositeLit); ok && isSel(cl.Type, "pgx", "Identifier") {
				return !asFormat
			}
		case "String": // a local strings.Builder
			if b, ok := sel.X.(*ast.Ident); ok {
				return c.safeBuilder(b.Name, fn, asFormat)
			}
		}
		return false
	}
	if _, ok := call.Fun.(*ast.Ident); ok {
		return c.safeResult(call, 0, fn, asFormat)
	}
	return false
}

// safeBuilder: every write to the local strings.Builder b in fn is safe.
func (c *sqlChecker) safeBuilder(b string, fn *ast.FuncDecl, asFormat bool) bool {
	if !c.isLocal(b, fn) || asFormat {
		return false
	}
	ok := true
	ast.Inspect(fn.Body, func(n ast.Node) bool {
		call, isCall := n.(*ast.CallExpr)
		if !isCall || !ok {
			return ok
		}
		if sel, isSel := call.Fun.(*ast.SelectorExpr); isSel && isIdent(sel.X, b) {
			switch sel.Sel.Name {
			case "WriteString":
				ok = len(call.Args) == 1 && c.safe(call.Args[0], fn, false)
			case "String", "Len", "Reset", "Grow", "Cap":
			default:
				ok = false
			}
			return ok
		}
		for ai, a := range call.Args {
			if u, isAddr := a.(*ast.UnaryExpr); isAddr && u.Op == token.AND && isIdent(u.X, b) {
				// Only fmt.Fprintf(&b, format, placeholder numbers…).
				ok = isSel(call.Fun, "fmt", "Fprintf") && ai == 0 && len(call.Args) >= 2 &&
					c.safe(call.Args[1], fn, true) && placeholderNumbers(call.Args[2:])
			}
		}
		return ok
	})
	return ok
}

var verb = regexp.MustCompile(`%.`)

// onlyPlaceholderVerbs: the format's only verbs are "$%d" (and "%%").
func onlyPlaceholderVerbs(s string) bool {
	if strings.HasSuffix(strings.ReplaceAll(s, "%%", ""), "%") {
		return false
	}
	for _, loc := range verb.FindAllStringIndex(s, -1) {
		v := s[loc[0]:loc[1]]
		if v == "%%" {
			continue
		}
		if v != "%d" || loc[0] == 0 || s[loc[0]-1] != '$' {
			return false
		}
	}
	return true
}

// placeholderNumbers: every argument is len(…), an integer literal, or a
// sum of those.
func placeholderNumbers(args []ast.Expr) bool {
	for _, a := range args {
		if !placeholderNumber(a) {
			return false
		}
	}
	return true
}

func placeholderNumber(e ast.Expr) bool {
	switch e := e.(type) {
	case *ast.BasicLit:
		return e.Kind == token.INT
	case *ast.CallExpr:
		return isIdent(e.Fun, "len")
	case *ast.BinaryExpr:
		return e.Op == token.ADD && placeholderNumber(e.X) && placeholderNumber(e.Y)
	case *ast.ParenExpr:
		return placeholderNumber(e.X)
	}
	return false
}
