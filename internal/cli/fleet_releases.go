package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/hermes-cloud/migrator/internal/flymachines"
)

// releasesCheckJSON is what fleet check found of Fly releases: whether the
// token may read them through Fly's GraphQL API (one read of the first
// selected app's current release), where runs record one per app.
type releasesCheckJSON struct {
	// OK: the read was answered.
	OK bool `json:"ok"`
	// Unauthorized: Fly refused the token's scope: runs will record no
	// release (and go on without).
	Unauthorized bool   `json:"unauthorized"`
	App          string `json:"app,omitempty"`
	Detail       string `json:"detail"`
}

func (r releasesCheckJSON) text() string {
	switch {
	case r.OK:
		return "ok: " + r.Detail
	case r.Unauthorized:
		return "unavailable: " + r.Detail
	}
	return "unknown: " + r.Detail
}

// releaseReader is what the check needs of the Fly adapter.
type releaseReader interface {
	CurrentRelease(ctx context.Context, app string) (flymachines.Release, bool, error)
}

var _ releaseReader = (*flymachines.Client)(nil)

// checkReleases reads the first selected app's current Fly release, which
// changes nothing: an answer means the token reaches Fly's GraphQL API
// (creating a release needs more scope than reading one, which only a run
// finds out: run status says so), a refusal that runs will record none.
func checkReleases(ctx context.Context, fly releaseReader, machines []flymachines.Machine) releasesCheckJSON {
	if len(machines) == 0 {
		return releasesCheckJSON{Detail: "no machine selected"}
	}
	app := machines[0].App
	out := releasesCheckJSON{App: app}
	cur, ok, err := fly.CurrentRelease(ctx, app)
	var ue *flymachines.ReleasesUnauthorizedError
	switch {
	case errors.As(err, &ue):
		out.Unauthorized = true
		out.Detail = fmt.Sprintf("Fly's GraphQL API refused the token (%s): runs will record no Fly release (fly releases and fly scale count keep the old image); machines still move", oneLine(ue.Msg, 120))
	case err != nil:
		out.Detail = fmt.Sprintf("could not read %s's releases: %s", app, oneLine(err.Error(), 160))
	case ok:
		out.OK = true
		out.Detail = fmt.Sprintf("the token reads %s's releases (current v%d); each run records one per app it moves", app, cur.Version)
	default:
		out.OK = true
		out.Detail = fmt.Sprintf("the token reads %s's releases (none yet); each run records one per app it moves", app)
	}
	return out
}
