#!/usr/bin/env bash
# Regenerates the Go code of proto/ratelimitd/v1. Installs protoc (Debian's protobuf-compiler)
# and the Go plugins at pinned versions when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v protoc >/dev/null; then
  apt-get update -qq && apt-get install -y -qq protobuf-compiler >/dev/null
fi
bin=$(go env GOPATH)/bin
GOFLAGS= go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
GOFLAGS= go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
PATH="$bin:$PATH" protoc -I proto \
  --go_out=proto --go_opt=paths=source_relative \
  --go-grpc_out=proto --go-grpc_opt=paths=source_relative \
  proto/ratelimitd/v1/ratelimitd.proto
echo "generated proto/ratelimitd/v1"
