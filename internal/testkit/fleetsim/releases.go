package fleetsim

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/parser"
)

// Fly releases, through Fly's GraphQL API (POST /graphql on the same
// server; FLY_API_BASE_URL points fly-go's client here). What is served
// is what fly-go v0.9.3 sends (genqlient.go, resource_releases.go,
// schema.graphql):
//
//	mutation CreateRelease($input: CreateReleaseInput!)
//	    createRelease(input:) { release { id version } }
//	    input: appId (ID!: flyctl sent the app's name), image (String!),
//	    definition (JSON!), platformVersion (String!), strategy
//	    (DeploymentStrategy!), buildId, clientMutationId
//	mutation UpdateRelease($input: UpdateReleaseInput!)
//	    updateRelease(input:) { release { id } }
//	    input: releaseId (ID!), status (String), metadata (JSON)
//	query { app(name:) { releases: releasesUnprocessed(first:) { nodes {…} }
//	                     currentRelease: currentReleaseUnprocessed {…} } }
//	    (`fly releases`: GetAppReleasesMachines; `fly scale count` clones
//	    the first of them: flyctl internal/command/scale/count_machines.go)
//
// flyctl's deploy created a release before updating machines and set it
// "running", then "complete", "failed" or "interrupted"
// (internal/command/deploy/machines_deploymachinesapp.go); the status a
// new release has before that is not in the sources: "pending" here.
// Since Nov 2025 flyctl's deploy creates releases through api.fly.io's
// REST API (internal/uiex/releases.go: POST /api/v1/releases, PATCH
// /api/v1/releases/{id}) instead; fly-go still has the GraphQL
// mutations, which is what migrator uses and this serves.
//
// SetGraphQLUnauthorized makes every request answer as for a token
// without the scope: HTTP 200 with errors [{message: "Not authorized",
// extensions: {code: "UNAUTHORIZED"}}] and data null. The message is what
// flyctl's preflight tests look for; the code is the simulator's choice
// (no source read shows Fly's extensions for it).

// Release is one Fly release of an app, as `fly releases` lists it.
type Release struct {
	ID, Image, Status, Strategy, User, Reason, Description string
	Version                                                int
	CreatedAt                                              time.Time
	// Definition and Metadata are what createRelease and updateRelease
	// were given.
	Definition, Metadata json.RawMessage
}

// seedRelease gives app its first release: the deploy that made its
// machines (their config.metadata says fly_release_version 1).
func (s *Sim) seedRelease(a *app, image string) {
	a.releases = []*Release{{ID: "rel_" + s.hexID(14), Version: 1, Status: "complete", Image: image,
		Strategy: "ROLLING", User: "deploy@hermes.example", Reason: "deploy",
		CreatedAt: s.origin.Add(-24 * time.Hour)}}
}

// Releases returns app's releases, newest first.
func (s *Sim) Releases(appName string) []Release {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.appByName[appName]
	if a == nil {
		panic(fmt.Sprintf("fleetsim: no app %s", appName))
	}
	out := make([]Release, 0, len(a.releases))
	for i := len(a.releases) - 1; i >= 0; i-- {
		out = append(out, *a.releases[i])
	}
	return out
}

// SetGraphQLUnauthorized makes Fly's GraphQL API refuse every request as
// it does a token without the scope (on), or serve again (off).
func (s *Sim) SetGraphQLUnauthorized(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gqlUnauthorized = on
}

type gqlRequest struct {
	Query         string         `json:"query"`
	Variables     map[string]any `json:"variables"`
	OperationName string         `json:"operationName"`
}

type gqlError struct {
	Message    string         `json:"message"`
	Path       []string       `json:"path,omitempty"`
	Extensions map[string]any `json:"extensions,omitempty"`
}

type gqlResponse struct {
	Data   map[string]any `json:"data"`
	Errors []gqlError     `json:"errors,omitempty"`
}

func (s *Sim) handleGraphQL(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Fly-Request-Id", s.requestID())
	s.obs.count(RouteGraphQL)
	if r.Method != http.MethodPost {
		writeJSON(w, http.StatusMethodNotAllowed, gqlResponse{Errors: []gqlError{{Message: "POST only"}}})
		return
	}
	if !s.flyAuthorized(r) {
		writeJSON(w, http.StatusUnauthorized, gqlResponse{Errors: []gqlError{{Message: "You must be authenticated to view this."}}})
		return
	}
	if code, _, ok := s.obs.inject(RouteGraphQL); ok {
		writeJSON(w, code, gqlResponse{Errors: []gqlError{{Message: http.StatusText(code)}}})
		return
	}
	var req gqlRequest
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err == nil {
		err = json.Unmarshal(body, &req)
	}
	if err != nil {
		writeJSON(w, http.StatusBadRequest, gqlResponse{Errors: []gqlError{{Message: "invalid request: " + err.Error()}}})
		return
	}
	doc, perr := parser.ParseQuery(&ast.Source{Input: req.Query})
	if perr != nil {
		writeJSON(w, http.StatusOK, gqlResponse{Errors: []gqlError{{Message: perr.Error()}}})
		return
	}
	var op *ast.OperationDefinition
	for _, o := range doc.Operations {
		if req.OperationName == "" || o.Name == req.OperationName {
			op = o
			break
		}
	}
	if op == nil {
		writeJSON(w, http.StatusOK, gqlResponse{Errors: []gqlError{{Message: "no operation " + strconv.Quote(req.OperationName)}}})
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := gqlResponse{Data: map[string]any{}}
	for _, sel := range op.SelectionSet {
		f, ok := sel.(*ast.Field)
		if !ok {
			continue
		}
		key := fieldKey(f)
		if s.gqlUnauthorized {
			out.Data = nil
			out.Errors = append(out.Errors, gqlError{Message: "Not authorized", Path: []string{key},
				Extensions: map[string]any{"code": "UNAUTHORIZED"}})
			continue
		}
		val, gerr := s.gqlField(op.Operation, f, req.Variables)
		if gerr != "" {
			out.Errors = append(out.Errors, gqlError{Message: gerr, Path: []string{key}})
			if out.Data != nil {
				out.Data[key] = nil
			}
			continue
		}
		if out.Data != nil {
			out.Data[key] = val
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// gqlField resolves one top-level field; a non-empty string is its error.
func (s *Sim) gqlField(kind ast.Operation, f *ast.Field, vars map[string]any) (any, string) {
	args := map[string]any{}
	for _, a := range f.Arguments {
		v, err := a.Value.Value(vars)
		if err != nil {
			return nil, err.Error()
		}
		args[a.Name] = v
	}
	switch {
	case kind == ast.Mutation && f.Name == "createRelease":
		return s.gqlCreateRelease(args)
	case kind == ast.Mutation && f.Name == "updateRelease":
		return s.gqlUpdateRelease(args)
	case kind == ast.Query && f.Name == "app":
		name, _ := args["name"].(string)
		a := s.appByName[name]
		if a == nil {
			return nil, "Could not find App"
		}
		return s.gqlApp(a, f.SelectionSet, vars)
	}
	return nil, fmt.Sprintf("Field '%s' doesn't exist on type '%s'", f.Name, map[ast.Operation]string{
		ast.Query: "Queries", ast.Mutation: "Mutations"}[kind])
}

var deploymentStrategies = []string{"BLUEGREEN", "CANARY", "IMMEDIATE", "ROLLING", "ROLLING_ONE", "SIMPLE"}

func (s *Sim) gqlCreateRelease(args map[string]any) (any, string) {
	in, _ := args["input"].(map[string]any)
	if in == nil {
		return nil, "Argument 'input' on Field 'createRelease' has an invalid value: expected CreateReleaseInput!"
	}
	appID, _ := in["appId"].(string)
	a := s.appByName[appID]
	for _, x := range s.apps {
		if a == nil && x.id == appID {
			a = x
		}
	}
	image, _ := in["image"].(string)
	pv, _ := in["platformVersion"].(string)
	strategy, _ := in["strategy"].(string)
	switch {
	case a == nil:
		return nil, "Could not find App with id \"" + appID + "\""
	case image == "":
		return nil, "Argument 'image' on InputObject 'CreateReleaseInput' is required. Expected type String!"
	case in["definition"] == nil:
		return nil, "Argument 'definition' on InputObject 'CreateReleaseInput' is required. Expected type JSON!"
	case pv == "":
		return nil, "Argument 'platformVersion' on InputObject 'CreateReleaseInput' is required. Expected type String!"
	case !slices.Contains(deploymentStrategies, strategy):
		return nil, "Argument 'strategy' on InputObject 'CreateReleaseInput' has an invalid value (" + strconv.Quote(strategy) + "). Expected type 'DeploymentStrategy!'."
	}
	def, _ := json.Marshal(in["definition"])
	rel := &Release{ID: "rel_" + s.hexID(14), Version: len(a.releases) + 1, Status: "pending", Image: image,
		Strategy: strategy, User: apiLeaseOwner, Reason: "deploy", CreatedAt: s.clk.Now(), Definition: def}
	if desc, ok := in["description"].(string); ok {
		rel.Description = desc
	}
	a.releases = append(a.releases, rel)
	return map[string]any{"release": map[string]any{"id": rel.ID, "version": rel.Version}}, ""
}

func (s *Sim) gqlUpdateRelease(args map[string]any) (any, string) {
	in, _ := args["input"].(map[string]any)
	id, _ := in["releaseId"].(string)
	for _, a := range s.apps {
		for _, rel := range a.releases {
			if rel.ID != id {
				continue
			}
			if st, ok := in["status"].(string); ok && st != "" {
				rel.Status = st
			}
			if md, ok := in["metadata"]; ok && md != nil {
				rel.Metadata, _ = json.Marshal(md)
			}
			return map[string]any{"release": map[string]any{"id": rel.ID}}, ""
		}
	}
	return nil, "Could not find Release with id \"" + id + "\""
}

// gqlApp resolves app { releasesUnprocessed(first:) {nodes}, currentReleaseUnprocessed }.
func (s *Sim) gqlApp(a *app, set ast.SelectionSet, vars map[string]any) (any, string) {
	out := map[string]any{}
	for _, sel := range set {
		f, ok := sel.(*ast.Field)
		if !ok {
			continue
		}
		key := fieldKey(f)
		switch f.Name {
		case "name":
			out[key] = a.name
		case "id":
			out[key] = a.id
		case "releasesUnprocessed":
			first := len(a.releases)
			for _, arg := range f.Arguments {
				if v, err := arg.Value.Value(vars); err == nil && arg.Name == "first" {
					if n, ok := toInt(v); ok && n >= 0 {
						first = min(first, n)
					}
				}
			}
			nodes := make([]any, 0, first)
			for i := len(a.releases) - 1; i >= 0 && len(nodes) < first; i-- {
				nodes = append(nodes, releaseNode(a.releases[i]))
			}
			out[key] = map[string]any{"nodes": nodes}
		case "currentReleaseUnprocessed":
			var cur any
			if n := len(a.releases); n > 0 {
				cur = releaseNode(a.releases[n-1])
			}
			out[key] = cur
		default:
			return nil, fmt.Sprintf("Field '%s' doesn't exist on type 'App'", f.Name)
		}
	}
	return out, ""
}

func releaseNode(r *Release) map[string]any {
	return map[string]any{"id": r.ID, "version": r.Version, "description": r.Description, "reason": r.Reason,
		"status": r.Status, "imageRef": r.Image, "stable": r.Status == "complete", "inProgress": r.Status == "running",
		"user":      map[string]any{"id": "u_" + r.User, "email": r.User, "name": r.User},
		"createdAt": r.CreatedAt.UTC().Format(time.RFC3339)}
}

func toInt(v any) (int, bool) {
	switch n := v.(type) {
	case int:
		return n, true
	case int64:
		return int(n), true
	case float64:
		return int(n), true
	case json.Number:
		i, err := n.Int64()
		return int(i), err == nil
	}
	return 0, false
}

// fieldKey is where a GraphQL field's value goes in the answer: its alias,
// else its name (GraphQL spec, "Field Alias").
func fieldKey(f *ast.Field) string {
	if f.Alias != "" {
		return f.Alias
	}
	return f.Name
}
