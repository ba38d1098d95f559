package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/xdpolicy/xdpolicy/dataplane/podwire"
	"github.com/xdpolicy/xdpolicy/dataplane/punt"
	"github.com/xdpolicy/xdpolicy/xdpprog"
)

// Cleanup removes what agents of this node left in the node's network
// namespace and in its pin directory dir: on purpose (--keep-on-exit, so
// that the next agent takes over) or because they were killed. That is the
// tcx programs on the pods' host veths (pinned links, or clsact filters on
// kernels without tcx), the punt veth and its XDP program, and the pinned
// maps; the directory goes too, and the bpffs at /sys/fs/bpf when an
// xdpolicy process mounted it and nothing else is pinned there. It refuses
// while an agent holds dir. It returns what it removed.
//
// Afterwards no pod of the node is enforced: run it to uninstall, or to
// start over.
func Cleanup(dir string, log *slog.Logger) ([]string, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root (CAP_BPF, CAP_NET_ADMIN)")
	}
	var lock *os.File
	if _, err := os.Stat(dir); err == nil {
		lock, err = xdpprog.LockPinDir(dir)
		if errors.Is(err, xdpprog.ErrPinDirBusy) {
			return nil, fmt.Errorf("%w: stop the agent first (cleanup would leave its pods unenforced while it runs)", err)
		} else if err != nil {
			return nil, err
		}
	}
	done, err := remove(dir, log)
	if lock != nil {
		lock.Close() // before ReleaseBPFFS: an open directory keeps bpffs busy
	}
	return done, errors.Join(err, xdpprog.ReleaseBPFFS())
}

func remove(dir string, log *slog.Logger) ([]string, error) {
	var done []string
	for _, p := range podwire.RemoveStalePins(dir, nil, log) {
		done = append(done, "tcx program on a pod veth ("+p+")")
	}
	removed, perr := punt.Remove(dir)
	done = append(done, removed...)
	removed, cerr := xdpprog.RemoveClsactFilters()
	done = append(done, removed...)
	errs := []error{perr, cerr}
	if ents, err := os.ReadDir(dir); err == nil {
		// What is left are the pinned maps.
		for _, e := range ents {
			p := filepath.Join(dir, e.Name())
			if err := os.Remove(p); err != nil {
				errs = append(errs, err)
				continue
			}
			done = append(done, "pinned map "+p)
		}
		xdpprog.RemovePinDir(dir)
	}
	return done, errors.Join(errs...)
}
