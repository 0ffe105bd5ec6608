# Multi-stage build: a static ratelimitd binary on a minimal, non-root image.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ratelimitd ./cmd/ratelimitd

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ratelimitd /usr/local/bin/ratelimitd
COPY examples/config /etc/ratelimitd/config
USER nonroot:nonroot
EXPOSE 8080 8081
ENV RATELIMITD_CONFIG=/etc/ratelimitd/config \
    RATELIMITD_GRPC_ADDR=0.0.0.0:8081 \
    RATELIMITD_HTTP_ADDR=0.0.0.0:8080
ENTRYPOINT ["/usr/local/bin/ratelimitd"]
CMD ["serve"]
