package source

import (
	"context"
	"fmt"
	"hash/fnv"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/xdpolicy/xdpolicy/control/model"
)

// Source produces cluster snapshots.
type Source interface {
	// Run calls deliver with every new complete snapshot, from one
	// goroutine, until ctx ends. It returns nil when ctx ends.
	Run(ctx context.Context, deliver func(*model.Cluster)) error
}

// Dir is a Source reading YAML/JSON from directories (or files), polled
// for changes of names, sizes and modification times.
type Dir struct {
	Paths []string
	// Interval between polls (default 200ms). A change is loaded once it
	// has been stable for one interval (debounce).
	Interval time.Duration
	Log      *slog.Logger
}

// Run implements Source.
func (d *Dir) Run(ctx context.Context, deliver func(*model.Cluster)) error {
	iv := d.Interval
	if iv <= 0 {
		iv = 200 * time.Millisecond
	}
	log := d.Log
	if log == nil {
		log = slog.Default()
	}
	var loaded, pending uint64
	first := true
	tick := time.NewTicker(iv)
	defer tick.Stop()
	for {
		fp := d.fingerprint()
		switch {
		case first || (fp == pending && fp != loaded):
			first = false
			loaded = fp
			res, err := model.Load(d.Paths...)
			if err != nil {
				log.Error("control source: keeping the last good state", "err", err)
				break
			}
			if res.Skipped != "" {
				log.Info("control source: " + res.Skipped)
			}
			deliver(res.Cluster)
		}
		pending = fp
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// fingerprint hashes the names, sizes and mtimes of every file.
func (d *Dir) fingerprint() uint64 {
	h := fnv.New64a()
	for _, p := range d.Paths {
		filepath.WalkDir(p, func(path string, e fs.DirEntry, err error) error {
			if err != nil {
				fmt.Fprintf(h, "%s:err;", path)
				return nil
			}
			fi, err := e.Info()
			if err != nil {
				return nil
			}
			fmt.Fprintf(h, "%s:%d:%d;", path, fi.Size(), fi.ModTime().UnixNano())
			return nil
		})
		if _, err := os.Stat(p); err != nil {
			fmt.Fprintf(h, "%s:missing;", p)
		}
	}
	return h.Sum64()
}
