package config

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

const watchTimeout = 5 * time.Second

// verifyNoLeaks checks, once the test and all its cleanups (the watchers') are done, that no
// goroutine outlives it. Call it first so that its cleanup runs last.
func verifyNoLeaks(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

// watcher is a running Watch with its reports.
type watcher struct {
	loads chan *Set
	errs  chan error
}

// startWatch runs Watch on dir until the test ends, once the directory is watched.
func startWatch(t *testing.T, dir string) *watcher {
	t.Helper()
	w := &watcher{loads: make(chan *Set, 100), errs: make(chan error, 100)}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- watch(ctx, WatchOptions{
			Dir:      dir,
			Debounce: 20 * time.Millisecond,
			OnLoad: func(s *Set) {
				select {
				case w.loads <- s:
				case <-ctx.Done():
				}
			},
			OnError: func(err error) {
				select {
				case w.errs <- err:
				case <-ctx.Done():
				}
			},
		}, func() { close(ready) })
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Watch: %v", err)
	case <-time.After(watchTimeout):
		t.Fatal("Watch did not start")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch: got %v, want nil after cancel", err)
			}
		case <-time.After(watchTimeout):
			t.Error("Watch did not return after cancel")
		}
	})
	return w
}

// waitLoad waits for a loaded set whose description (see describeSet) is want; loads in
// between are skipped, as one change can produce several events.
func (w *watcher) waitLoad(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(watchTimeout)
	var last string
	for {
		select {
		case s := <-w.loads:
			if last = describeSet(s); last == want {
				return
			}
		case <-deadline:
			t.Fatalf("no load of %q within %v; last load: %q", want, watchTimeout, last)
		}
	}
}

// waitErr waits for a reported error containing want.
func (w *watcher) waitErr(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(watchTimeout)
	for {
		select {
		case err := <-w.errs:
			if strings.Contains(err.Error(), want) {
				return
			}
		case <-deadline:
			t.Fatalf("no error containing %q within %v", want, watchTimeout)
		}
	}
}

// describeSet lists each domain with the requests_per_unit of its key k, e.g. "a=1 b=2".
func describeSet(s *Set) string {
	var parts []string
	for _, d := range s.Domains() {
		rpu := "none"
		if l := Lookup(s, d, entries("k", "v")); l != nil {
			rpu = fmt.Sprint(l.RequestsPerUnit)
		}
		parts = append(parts, d+"="+rpu)
	}
	return strings.Join(parts, " ")
}

func config(domain string, rpu int) string {
	return fmt.Sprintf("domain: %s\ndescriptors:\n  - {key: k, rate_limit: {unit: second, requests_per_unit: %d}}\n", domain, rpu)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestWatchFileChanges(t *testing.T) {
	verifyNoLeaks(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.yaml"), config("a", 1))
	w := startWatch(t, dir)

	steps := []struct {
		name   string
		change func(t *testing.T)
		want   string
	}{
		{"in-place rewrite", func(t *testing.T) { writeFile(t, filepath.Join(dir, "a.yaml"), config("a", 2)) }, "a=2"},
		{"new file", func(t *testing.T) { writeFile(t, filepath.Join(dir, "b.yml"), config("b", 3)) }, "a=2 b=3"},
		{"rename", func(t *testing.T) {
			if err := os.Rename(filepath.Join(dir, "b.yml"), filepath.Join(dir, "b.txt")); err != nil {
				t.Fatal(err)
			}
		}, "a=2"},
		{"rename back", func(t *testing.T) {
			if err := os.Rename(filepath.Join(dir, "b.txt"), filepath.Join(dir, "c.yaml")); err != nil {
				t.Fatal(err)
			}
		}, "a=2 b=3"},
		{"removal", func(t *testing.T) {
			if err := os.Remove(filepath.Join(dir, "c.yaml")); err != nil {
				t.Fatal(err)
			}
		}, "a=2"},
	}
	for _, step := range steps {
		step.change(t)
		w.waitLoad(t, step.want)
	}
}

func TestWatchBadThenGoodWrite(t *testing.T) {
	verifyNoLeaks(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "a.yaml")
	writeFile(t, path, config("a", 1))
	w := startWatch(t, dir)

	writeFile(t, path, "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight}\n")
	w.waitErr(t, `a.yaml:4: domain "a" descriptors[0] (k): rate_limit.unit: unknown unit "fortnight"`)
	writeFile(t, path, config("a", 5))
	w.waitLoad(t, "a=5")
}

// TestWatchDirectoryRemovedAndBack: removing the directory is reported once; when it is back,
// it is loaded and watched again.
func TestWatchDirectoryRemovedAndBack(t *testing.T) {
	verifyNoLeaks(t)
	root := t.TempDir()
	dir := filepath.Join(root, "config")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "a.yaml"), config("a", 1))
	w := startWatch(t, dir)

	if err := os.Rename(dir, filepath.Join(root, "away")); err != nil {
		t.Fatal(err)
	}
	w.waitErr(t, "the directory was removed")
	if err := os.Rename(filepath.Join(root, "away"), dir); err != nil {
		t.Fatal(err)
	}
	w.waitLoad(t, "a=1")
	writeFile(t, filepath.Join(dir, "a.yaml"), config("a", 2))
	w.waitLoad(t, "a=2")
}

func TestWatchConfigMapSwap(t *testing.T) {
	verifyNoLeaks(t)
	dir := t.TempDir()
	// The layout of a Kubernetes ConfigMap volume.
	writeFiles(t, dir, map[string]string{"..v1/shop.yaml": config("shop", 1)})
	symlink := func(target, name string) {
		t.Helper()
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	symlink("..v1", "..data")
	symlink(filepath.Join("..data", "shop.yaml"), "shop.yaml")
	if s, err := Load(dir); err != nil || describeSet(s) != "shop=1" {
		t.Fatalf("initial Load: got %v, %v, want shop=1", s, err)
	}
	w := startWatch(t, dir)

	// The kubelet's swap: a new timestamped dir, a new symlink renamed over ..data, the old
	// dir removed.
	writeFiles(t, dir, map[string]string{"..v2/shop.yaml": config("shop", 2)})
	symlink("..v2", "..data_tmp")
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "..v1")); err != nil {
		t.Fatal(err)
	}
	w.waitLoad(t, "shop=2")
}

func TestWatchStartErrors(t *testing.T) {
	verifyNoLeaks(t)
	tests := []struct {
		name string
		dir  string
		want string
	}{
		{"no dir", "", "watch config: no directory"},
		{"missing dir", filepath.Join(t.TempDir(), "nope"), "watch config "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Watch(context.Background(), WatchOptions{Dir: tt.dir})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Watch: got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestWatchReturnsWhenDone(t *testing.T) {
	verifyNoLeaks(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Watch(ctx, WatchOptions{Dir: t.TempDir()}); err != nil {
		t.Errorf("Watch: got %v, want nil", err)
	}
}

// TestWatchLoadsOnceAtStart: a change made between the caller's first load and the watch is
// not missed, and an unchanged directory loads with the same digest.
func TestWatchLoadsOnceAtStart(t *testing.T) {
	verifyNoLeaks(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.yaml"), config("a", 1))
	first, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	w := startWatch(t, dir)
	select {
	case s := <-w.loads:
		if s.Digest() != first.Digest() {
			t.Errorf("digest of the unchanged directory %s, want %s", s.Digest(), first.Digest())
		}
	case <-time.After(watchTimeout):
		t.Fatal("no load when the watch started")
	}
	writeFile(t, filepath.Join(dir, "a.yaml"), config("a", 2))
	w.waitLoad(t, "a=2")
	again, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest() == first.Digest() {
		t.Errorf("the digest did not change with the file")
	}
}
