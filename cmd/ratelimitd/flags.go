package main

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// envName is the environment variable that sets a flag: RATELIMITD_ and the flag's name in upper
// snake case.
func envName(flagName string) string {
	return "RATELIMITD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseWithEnv parses args, then fills every flag not given on the command line from its
// environment variable. A bad value names the variable.
func parseWithEnv(fs *flag.FlagSet, args []string, lookup func(string) (string, bool)) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		if v, ok := lookup(envName(f.Name)); ok {
			if e := fs.Set(f.Name, v); e != nil {
				if _, numeric := strconv.Atoi(f.DefValue); numeric == nil && strings.HasSuffix(e.Error(), "parse error") {
					e = fmt.Errorf("want an integer, got %q", v) // the flag package says only "parse error"
				}
				err = fmt.Errorf("%s=%q: %w", envName(f.Name), v, e)
			}
		}
	})
	return err
}

// flagUsage prints the flags with their environment variables.
func flagUsage(fs *flag.FlagSet, synopsis string) func() {
	return func() {
		out := fs.Output()
		fmt.Fprintf(out, "usage: %s\n", synopsis)
		fs.VisitAll(func(f *flag.Flag) {
			fmt.Fprintf(out, "  -%s (env %s, default %q)\n    \t%s\n", f.Name, envName(f.Name), f.DefValue, f.Usage)
		})
	}
}

// splitHeader splits "name: value"; "-" (or an empty name) disables the header.
func splitHeader(s string) (name, value string) {
	name, value, _ = strings.Cut(s, ":")
	name, value = strings.TrimSpace(name), strings.TrimSpace(value)
	if s == "-" || name == "" {
		return "-", ""
	}
	return name, value
}

// unknownEnv lists the RATELIMITD_* variables of env that set no flag (a misspelling, most
// likely).
func unknownEnv(env []string, known map[string]bool) []string {
	var out []string
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "RATELIMITD_") && !known[name] {
			out = append(out, name)
		}
	}
	return out
}

// validHeaderName reports whether s is a lower-case HTTP header name (an RFC 9110 token; HTTP/2,
// which Envoy speaks to us, wants lower case).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// durationValue is a flag.Value for durations whose error says what is expected.
type durationValue struct{ d *time.Duration }

func (v durationValue) String() string {
	if v.d == nil {
		return "0s"
	}
	return v.d.String()
}

func (v durationValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration such as 250ms, 5s or 1m, got %q", s)
	}
	*v.d = d
	return nil
}

func durationFlag(fs *flag.FlagSet, p *time.Duration, name string, value time.Duration, usage string) {
	*p = value
	fs.Var(durationValue{p}, name, usage)
}

// boolValue is a boolean flag.Value whose error says what is expected.
type boolValue struct{ b *bool }

func (v boolValue) String() string { return strconv.FormatBool(v.b != nil && *v.b) }

func (v boolValue) IsBoolFlag() bool { return true }

func (v boolValue) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("want true or false, got %q", s)
	}
	*v.b = b
	return nil
}

func boolFlag(fs *flag.FlagSet, p *bool, name string, value bool, usage string) {
	*p = value
	fs.Var(boolValue{p}, name, usage)
}
