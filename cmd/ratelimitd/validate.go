package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/ratelimitd/ratelimitd/config"
)

// validate loads a configuration directory and prints every problem (exit 1) or a one-line
// summary (exit 0).
func validate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = flagUsage(fs, "ratelimitd validate DIR")
	if err := parseWithEnv(fs, args, os.LookupEnv); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	dir := fs.Arg(0)
	set, err := config.Load(dir)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok, %d domains, %d rules\n", dir, len(set.Domains()), set.RuleCount())
	if len(set.Domains()) == 0 {
		fmt.Fprintf(stderr, "warning: %s has no *.yaml or *.yml file with a domain: served, it would allow every request\n", dir)
	}
	return 0
}
