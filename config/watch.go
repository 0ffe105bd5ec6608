package config

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultDebounce is how long Watch waits after the last change before it reloads, unless
// WatchOptions.Debounce says otherwise.
const DefaultDebounce = 100 * time.Millisecond

// WatchOptions configures Watch.
type WatchOptions struct {
	// Dir is the directory to watch and load, as for Load.
	Dir string
	// Debounce is the quiet time after the last change before a reload; DefaultDebounce when
	// zero or negative.
	Debounce time.Duration
	// OnLoad receives each new valid Set. It may be nil.
	OnLoad func(*Set)
	// OnError receives each failed reload (the caller keeps the old Set in force) and each
	// error of the underlying watcher. It may be nil.
	OnError func(error)
}

// Watch reloads opts.Dir with Load whenever something in it changes, until ctx is done.
//
// It watches the directory's entries: in-place writes, new, removed and renamed files, and
// Kubernetes ConfigMap swaps, where the ..data symlink is atomically replaced to point at a new
// timestamped directory and the *.yaml files are symlinks through ..data. Changes are
// debounced: Watch reloads the whole directory once opts.Debounce has passed without another
// change, then calls OnLoad with the new Set or OnError with the problems. A failure is
// reported once: reloads that fail with the same problems again call nothing until the
// directory loads or the problems change. It does not load
// the directory when it starts (the caller loads it first) nor without a change. OnLoad and
// OnError are called from Watch's goroutine, one at a time, and must not block for long.
// The directory itself must stay in place: removing it ends the reloads.
//
// Watch blocks until ctx is done and then returns nil, having ended everything it started; it
// returns an error at once if the watch cannot be set up.
func Watch(ctx context.Context, opts WatchOptions) error {
	return watch(ctx, opts, nil)
}

// watch is Watch with a hook called once the directory is watched, for tests.
func watch(ctx context.Context, opts WatchOptions, ready func()) error {
	if opts.Dir == "" {
		return errors.New("watch config: no directory")
	}
	debounce := opts.Debounce
	if debounce <= 0 {
		debounce = DefaultDebounce
	}
	onLoad, onError := opts.OnLoad, opts.OnError
	if onLoad == nil {
		onLoad = func(*Set) {}
	}
	if onError == nil {
		onError = func(error) {}
	}

	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch config %s: %w", opts.Dir, err)
	}
	defer w.Close()
	if err := w.Add(opts.Dir); err != nil {
		return fmt.Errorf("watch config %s: %w", opts.Dir, err)
	}
	if ready != nil {
		ready()
	}

	lastFailure := ""
	timer := time.NewTimer(debounce)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-w.Events:
			if !ok {
				return nil
			}
			timer.Reset(debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			onError(fmt.Errorf("watch config %s: %w", opts.Dir, err))
			// Events may have been lost (an overflowing queue): reload to be sure.
			timer.Reset(debounce)
		case <-timer.C:
			set, err := Load(opts.Dir)
			if ctx.Err() != nil {
				return nil
			}
			switch {
			case err == nil:
				lastFailure = ""
				onLoad(set)
			case err.Error() != lastFailure:
				lastFailure = err.Error()
				onError(err)
			}
		}
	}
}
