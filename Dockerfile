# syntax=docker/dockerfile:1
# migrator's own image: a static binary on distroless, running as non-root.
#   docker build --build-arg VERSION=$(git describe --always --dirty) -t migrator .
#   docker run --rm -e DATABASE_URL=… -e FLY_API_TOKEN=… -e MIGRATOR_DRAIN_KEY=… -p 8080:8080 migrator

FROM golang:1.26 AS build
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
# user (65532), and nothing else: no shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/migrator /migrator
USER nonroot:nonroot
EXPOSE 8080
ENTRYPOINT ["/migrator"]
CMD ["serve"]
