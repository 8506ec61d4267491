# syntax=docker/dockerfile:1
# migrator's own image: a static binary on distroless, running as non-root.
#   docker build --build-arg VERSION=$(git describe --always --dirty) -t migrator .
#   docker run --rm -e DATABASE_URL=… -e FLY_API_TOKEN=… -e MIGRATOR_DRAIN_KEY=… -p 8080:8080 migrator

# Base images are pinned by digest: a build is made of what was reviewed,
# not of whatever a tag points at that day. Neither registry is reachable
# from where this was written, so each digest is the one public
# repositories pin for that tag (Dependabot- and Renovate-kept Dockerfiles
# on GitHub, found by a code search on 2026-12-07); refresh them from a
# machine that reaches the registries (`docker buildx imagetools inspect
# golang:1.26`, `crane digest gcr.io/distroless/static-debian12:nonroot`).
#
# golang:1.26.9, the multi-arch index resolved on 2026-10-09 after the
# 2026-10-08 Go security release. It only starts the build: GOTOOLCHAIN=auto
# lets go.mod's toolchain line (a later patch release, with the fixes
# govulncheck asks for) build migrator, fetched from the Go module proxy
# and checked against the checksum database (the image sets
# GOTOOLCHAIN=local, which would ignore that line).
FROM golang:1.26.9@sha256:f1f0bcc2c524a3ced375fcb4d1ecb7aa371aa7070e112599aaca45cc02d0101b AS build
ENV GOTOOLCHAIN=auto
WORKDIR /src
# Dependencies first, so a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# Static (no cgo), no local paths, no symbol table. Time zones for policy
# windows are embedded in the binary (time/tzdata), so the base needs none.
# -tags release leaves out the sandbox, fleetsim and bench commands and the
# test kits they link (internal/testkit: the fleet simulator, the benchmark,
# the PostgreSQL launcher).
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -tags release \
      -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/migrator ./cmd/migrator

# static-debian12 has CA certificates (for api.machines.dev) and a nonroot
# user (65532), and nothing else: no shell, no package manager. The
# nonroot tag's multi-arch index (amd64, arm64) as resolved on 2026-07-13.
FROM gcr.io/distroless/static-debian12:nonroot@sha256:b7bb25d9f7c31d2bdd1982feb4dafcaf137703c7075dbe2febb41c24212b946f
COPY --from=build /out/migrator /migrator
USER nonroot:nonroot
EXPOSE 8080
ENTRYPOINT ["/migrator"]
CMD ["serve"]
