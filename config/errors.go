package config

import (
	"strconv"
	"strings"
)

// Errors is every problem that made Load reject a directory, in file order and, within a
// file, in document order. Its message has one problem per line, each as
// "file:line: where: field: problem".
type Errors []error

// Error returns one problem per line.
func (e Errors) Error() string {
	var b strings.Builder
	for i, err := range e {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(err.Error())
	}
	return b.String()
}

// Unwrap returns the problems, for errors.Is and errors.As.
func (e Errors) Unwrap() []error { return e }

// problem is one problem in one file. Line is 0 when unknown; where names the domain (or the
// document when it has no domain) and the descriptor path; field is the dotted field name.
type problem struct {
	file  string
	line  int
	where string
	field string
	msg   string
}

func (p *problem) Error() string {
	var b strings.Builder
	b.WriteString(p.file)
	if p.line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(p.line))
	}
	for _, s := range []string{p.where, p.field, p.msg} {
		if s != "" {
			b.WriteString(": ")
			b.WriteString(s)
		}
	}
	return b.String()
}
