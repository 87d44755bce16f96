# Images of the compose stack (docker-compose.yml). Targets:
#   graylane  the graylane command and the example backend
#   apisix    APISIX 3.x with graylane's plugin runner
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ENV CGO_ENABLED=0
RUN go build -trimpath -o /out/graylane ./cmd/graylane \
 && go build -trimpath -o /out/graylane-apisix-runner ./apisix-plugin \
 && go build -trimpath -o /out/backend ./examples/backend

FROM debian:bookworm-slim AS graylane
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/graylane /out/backend /usr/local/bin/
ENTRYPOINT ["graylane"]

FROM apache/apisix:3.11.0-debian AS apisix
# APISIX starts the runner itself (ext-plugin.cmd in deploy/apisix/config.yaml).
COPY --from=build /out/graylane-apisix-runner /usr/local/apisix/graylane-apisix-runner
