// Command ratelimitd is rate limiting as a service: Envoy's rate-limit API over gRPC, backed by
// Redis or, for a single replica, by an in-memory store.
//
//	ratelimitd serve -config DIR [-grpc-addr ADDR] [-http-addr ADDR] [-redis-url URL]
//	ratelimitd validate DIR
//
// Every flag can also be set from the environment as RATELIMITD_<FLAG> in upper snake case
// (RATELIMITD_REDIS_URL for -redis-url); a flag on the command line wins.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage:
  ratelimitd serve -config DIR [flags]   serve the rate-limit API (ratelimitd serve -h for flags)
  ratelimitd validate DIR                check a configuration directory
`

// run executes one subcommand and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], stderr)
	case "validate":
		return validate(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "unknown command %q\n%s", args[0], usage)
	return 2
}
