package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse feeds arbitrary bytes to the loader as one file: it never panics, a problem is
// always reported as an Errors value naming the file, and a file that loads answers lookups.
func FuzzParse(f *testing.F) {
	for _, dir := range []string{"testdata/accept", "testdata/reject", "testdata/shop"} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
		for _, name := range files {
			if b, err := os.ReadFile(name); err == nil {
				f.Add(b)
			}
		}
	}
	f.Add([]byte("domain: d\ndescriptors:\n  - &a {key: k, descriptors: [*a]}\n"))
	f.Add([]byte("---\n---\ndomain: d\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		l := &loader{set: &Set{domains: map[string]*node{}}, domainAt: map[string]string{}}
		l.file("f.yaml", data)
		for _, e := range l.errs {
			p, ok := e.(*problem)
			if !ok || p.file != "f.yaml" {
				t.Fatalf("problem %#v does not name the file", e)
			}
		}
		if len(l.errs) == 0 {
			for d := range l.set.domains {
				_ = Lookup(l.set, d, entries("k", "v"))
			}
		}
	})
}
