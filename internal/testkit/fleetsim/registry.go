package fleetsim

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strings"
)

// The image registry, as far as pinning a run's image needs it: the OCI
// distribution API's version check (GET /v2/) and a manifest HEAD, which
// answers the digest a tag points at now in Docker-Content-Digest
// (distribution-spec, "Checking if content exists in the registry"). The
// digests are the simulator's own (resolveImage: a tag keeps the digest it
// was first seen with until MoveTag moves it), so a run pinned here names
// exactly what an update to the tag would pull. registry.fly.io takes the
// Fly token as the password of user "x" (what `fly auth docker` writes to
// Docker's config); without it the answer is 401 with a Basic challenge.
// Any tag resolves, as any image is accepted by the simulated update; there
// are no manifest or blob bodies.
const (
	registryRealm     = "registry.fly.io"
	manifestMediaType = "application/vnd.oci.image.manifest.v1+json"
	manifestSize      = "1024" // nominal: the simulator serves no manifest body
)

func (s *Sim) handleRegistry(w http.ResponseWriter, r *http.Request) {
	user, pass, ok := r.BasicAuth()
	if !ok || user != "x" || subtle.ConstantTimeCompare([]byte(pass), []byte(s.cfg.FlyToken)) != 1 {
		w.Header().Set("WWW-Authenticate", `Basic realm="`+registryRealm+`"`)
		registryError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
		return
	}
	rest := strings.TrimPrefix(r.URL.Path, "/v2/")
	if rest == "" {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		w.WriteHeader(http.StatusOK)
		return
	}
	repo, ref, ok := strings.Cut(rest, "/manifests/")
	if !ok || repo == "" || ref == "" || r.Method != http.MethodHead {
		registryError(w, http.StatusNotFound, "UNSUPPORTED", "the simulator's registry answers GET /v2/ and HEAD of a manifest only")
		return
	}
	image := registryRealm + "/" + repo + ":" + ref
	if strings.HasPrefix(ref, "sha256:") {
		image = registryRealm + "/" + repo + "@" + ref
	}
	w.Header().Set("Docker-Content-Digest", s.DigestOf(image))
	w.Header().Set("Content-Type", manifestMediaType)
	w.Header().Set("Content-Length", manifestSize)
	w.WriteHeader(http.StatusOK)
}

func registryError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
}
