package config

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
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
// change, then calls OnLoad with the new Set or OnError with the problems (every failed
// reload is reported; callers that log may want to skip repeats). When the directory itself
// is removed or renamed away, Watch reports it once and looks for it again every second; when
// it is back, Watch loads it and watches it as before. It also loads the directory once as soon
// as it watches it, so that a change made after the caller's own first load is not missed;
// callers compare Set.Digest to skip a set they already have. OnLoad and OnError are called
// from Watch's goroutine, one at a time, and must not block for long.
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
	dir := filepath.Clean(opts.Dir)
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
		return fmt.Errorf("watch config %s: %w", dir, err)
	}
	defer w.Close()
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watch config %s: %w", dir, err)
	}
	if ready != nil {
		ready()
	}

	// lost is set while the directory itself is gone: the timer then polls for it.
	lost := false
	const poll = time.Second
	// Load once as soon as the directory is watched: a change between the caller's own load
	// and the watch is not missed (OnLoad then sees the same Digest when nothing changed).
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if filepath.Clean(ev.Name) == dir && ev.Has(fsnotify.Remove|fsnotify.Rename) && !lost {
				lost = true
				onError(fmt.Errorf("watch config %s: the directory was removed; waiting for it to come back", dir))
			}
			timer.Reset(debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			onError(fmt.Errorf("watch config %s: %w", dir, err))
			// Events may have been lost (an overflowing queue): reload to be sure.
			timer.Reset(debounce)
		case <-timer.C:
			if lost {
				if w.Add(dir) != nil {
					timer.Reset(poll)
					continue
				}
				lost = false
			}
			set, err := Load(dir)
			switch {
			case ctx.Err() != nil:
				return nil
			case err == nil:
				onLoad(set)
			default:
				onError(err)
			}
		}
	}
}
