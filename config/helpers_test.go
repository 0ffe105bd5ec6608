package config

import (
	"os"
	"path/filepath"
	"testing"
)

// writeFiles writes name -> content into dir, creating parent directories.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// loadFiles loads a fresh directory holding files.
func loadFiles(t *testing.T, files map[string]string) (*Set, error) {
	t.Helper()
	dir := t.TempDir()
	writeFiles(t, dir, files)
	return Load(dir)
}

// mustLoad loads files and fails the test on error.
func mustLoad(t *testing.T, files map[string]string) *Set {
	t.Helper()
	s, err := loadFiles(t, files)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return s
}

// entry is a request descriptor entry.
type entry struct{ key, value string }

func (e entry) GetKey() string   { return e.key }
func (e entry) GetValue() string { return e.value }

// entries builds a descriptor from key, value pairs.
func entries(kv ...string) []entry {
	var out []entry
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, entry{kv[i], kv[i+1]})
	}
	return out
}
