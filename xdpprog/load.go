package xdpprog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// BPFFSRoot is where bpffs is mounted when pinning needs it.
const BPFFSRoot = "/sys/fs/bpf"

// Options tune Load. Zero values take the defaults compiled into the C
// programs.
type Options struct {
	// PinDir pins every map under this bpffs directory, e.g.
	// /sys/fs/bpf/xdpolicy/<node>, and reuses the maps already pinned there,
	// so a restarted agent keeps the flow cache and the pods map. Empty
	// means no pinning: the maps die with the last reference to them.
	PinDir string

	FlowsMaxEntries uint32 // flows LRU size (default 262144)
	PodsMaxEntries  uint32 // pods map size (default 4096)
	RequestsBytes   uint32 // requests ring buffer size, a power-of-2 multiple of the page size (default 256 KiB)
	XSKsMaxEntries  uint32 // xsks map size = highest RX queue index + 1 (default 64)
}

// Objects are the loaded programs and maps.
type Objects struct {
	FromPod *ebpf.Program // tcx program for HookEgress: attach to tcx ingress of H
	ToPod   *ebpf.Program // tcx program for HookIngress: attach to tcx egress of H
	Punt    *ebpf.Program // XDP program for dp1

	Flows        *ebpf.Map // FlowKey -> FlowVal (LRU)
	Pods         *ebpf.Map // uint32 H ifindex -> PodInfo
	Config       *ebpf.Map // uint32 0 -> Config
	Counters     *ebpf.Map // Counter -> per-CPU uint64
	Requests     *ebpf.Map // ring buffer of FlowKey (Pad: RequestVerdict or RequestSample)
	PodDrops     *ebpf.Map // uint32 H ifindex -> per-CPU uint64 cached-deny drops
	Frags        *ebpf.Map // FragKey -> FragVal: ports of fragmented datagrams (LRU)
	XSKs         *ebpf.Map // RX queue index -> AF_XDP socket fd
	PuntCounters *ebpf.Map // PuntCounter -> per-CPU uint64

	tcx    tcxObjects
	punt   puntObjects
	pinDir string
}

// Load loads both programs and their maps into the kernel. It attaches
// nothing.
func Load(opts Options) (*Objects, error) {
	tcxSpec, err := loadTcx()
	if err != nil {
		return nil, err
	}
	puntSpec, err := loadPunt()
	if err != nil {
		return nil, err
	}
	resize(tcxSpec, "flows", opts.FlowsMaxEntries)
	resize(tcxSpec, "pods", opts.PodsMaxEntries)
	resize(tcxSpec, "pod_drops", opts.PodsMaxEntries)
	resize(tcxSpec, "requests", opts.RequestsBytes)
	resize(puntSpec, "xsks", opts.XSKsMaxEntries)

	var co ebpf.CollectionOptions
	if opts.PinDir != "" {
		if err := PreparePinDir(opts.PinDir); err != nil {
			return nil, err
		}
		co.Maps.PinPath = opts.PinDir
		if err := replaceStatePins(opts.PinDir, tcxSpec, puntSpec); err != nil {
			return nil, err
		}
	} else {
		for _, spec := range []*ebpf.CollectionSpec{tcxSpec, puntSpec} {
			for _, m := range spec.Maps {
				m.Pinning = ebpf.PinNone
			}
		}
	}

	o := &Objects{pinDir: opts.PinDir}
	if err := tcxSpec.LoadAndAssign(&o.tcx, &co); err != nil {
		return nil, loadErr("tcx", err)
	}
	if err := puntSpec.LoadAndAssign(&o.punt, &co); err != nil {
		o.tcx.Close()
		return nil, loadErr("punt", err)
	}
	o.FromPod, o.ToPod, o.Punt = o.tcx.TcxFromPod, o.tcx.TcxToPod, o.punt.XdpPunt
	o.Flows, o.Pods, o.Config = o.tcx.Flows, o.tcx.Pods, o.tcx.Config
	o.Counters, o.Requests, o.PodDrops, o.Frags = o.tcx.Counters, o.tcx.Requests, o.tcx.PodDrops, o.tcx.Frags
	o.XSKs, o.PuntCounters = o.punt.Xsks, o.punt.PuntCounters
	return o, nil
}

// transientMaps hold nothing a restarted agent needs: counters, the
// requests ring and fragment ports. A pin of one that no longer fits this
// build (a counter added by an upgrade) is replaced instead of failing the
// load; the flows, pods and config maps must still match.
var transientMaps = []string{"counters", "requests", "frags", "punt_counters"}

func replaceStatePins(dir string, specs ...*ebpf.CollectionSpec) error {
	for _, spec := range specs {
		for _, name := range transientMaps {
			ms, ok := spec.Maps[name]
			if !ok {
				continue
			}
			path := filepath.Join(dir, name)
			m, err := ebpf.LoadPinnedMap(path, nil)
			if errors.Is(err, os.ErrNotExist) {
				continue
			} else if err != nil {
				return fmt.Errorf("load pinned map %s: %w", path, err)
			}
			if ms.Compatible(m) != nil {
				err = m.Unpin()
			}
			m.Close()
			if err != nil {
				return fmt.Errorf("replace pinned map %s: %w", path, err)
			}
		}
	}
	return nil
}

func resize(spec *ebpf.CollectionSpec, name string, n uint32) {
	if n != 0 {
		spec.Maps[name].MaxEntries = n
	}
}

func loadErr(what string, err error) error {
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return fmt.Errorf("load %s: a pinned map differs from this build (size or layout); remove the pin directory to start afresh: %w", what, err)
	}
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("load %s: %+v", what, ve)
	}
	return fmt.Errorf("load %s: %w", what, err)
}

// PodDropCount sums the cached-deny drops of the pod behind H ifindex.
func (o *Objects) PodDropCount(ifindex uint32) (uint64, error) {
	var per []uint64
	if err := o.PodDrops.Lookup(ifindex, &per); err != nil {
		return 0, err
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

// Program returns the tcx program for hook h.
func (o *Objects) Program(h Hook) *ebpf.Program {
	if h == HookIngress {
		return o.ToPod
	}
	return o.FromPod
}

// Close releases the file descriptors. Pinned maps and pinned links stay.
func (o *Objects) Close() error {
	return errors.Join(o.tcx.Close(), o.punt.Close())
}

// Unpin removes the pins of these maps and the pin directory if that leaves
// it empty. Use it for a full teardown, not on an ordinary restart.
func (o *Objects) Unpin() error {
	var errs []error
	for _, m := range []*ebpf.Map{o.Flows, o.Pods, o.Config, o.Counters, o.Requests, o.Frags, o.XSKs, o.PuntCounters} {
		if m != nil && m.IsPinned() {
			errs = append(errs, m.Unpin())
		}
	}
	RemovePinDir(o.pinDir)
	return errors.Join(errs...)
}

// RemovePinDir removes the pin directory dir and its parents up to
// BPFFSRoot, as long as they are empty: removing one fails harmlessly
// while someone else's pins are still there.
func RemovePinDir(dir string) {
	if dir == "" || os.Remove(dir) != nil {
		return
	}
	for d := filepath.Dir(dir); strings.HasPrefix(d, BPFFSRoot+"/"); d = filepath.Dir(d) {
		if os.Remove(d) != nil {
			return
		}
	}
}

// SetConfig writes the config entry.
func (o *Objects) SetConfig(c Config) error {
	return o.Config.Put(uint32(0), c)
}

// ReadConfig reads the config entry.
func (o *Objects) ReadConfig() (Config, error) {
	var c Config
	err := o.Config.Lookup(uint32(0), &c)
	return c, err
}

// ReadCounters sums the per-CPU tcx counters.
func (o *Objects) ReadCounters() ([NumCounters]uint64, error) {
	var out [NumCounters]uint64
	return out, sumPerCPU(o.Counters, out[:])
}

// ReadPuntCounters sums the per-CPU counters of the XDP punt program.
func (o *Objects) ReadPuntCounters() ([NumPuntCounters]uint64, error) {
	var out [NumPuntCounters]uint64
	return out, sumPerCPU(o.PuntCounters, out[:])
}

func sumPerCPU(m *ebpf.Map, out []uint64) error {
	var perCPU []uint64
	for i := range out {
		if err := m.Lookup(uint32(i), &perCPU); err != nil {
			return fmt.Errorf("read counter %d: %w", i, err)
		}
		for _, v := range perCPU {
			out[i] += v
		}
	}
	return nil
}

// mountMarker is the directory PreparePinDir leaves in a bpffs it mounted,
// so that whoever finishes last (an agent, a lab, a bench, a test binary)
// can tell the mount is xdpolicy's to undo. (bpffs refuses names with a
// dot.)
const mountMarker = "xdpolicy-mounted-this-bpffs"

// PreparePinDir makes dir ready to hold pins, and is the one way every entry
// point (agent, lab, bench, tests) gets a pin directory: when dir lies under
// BPFFSRoot and no bpffs is mounted there (a fresh machine without systemd),
// it mounts one, marked as xdpolicy's (see ReleaseBPFFS), then creates dir.
func PreparePinDir(dir string) error {
	dir = filepath.Clean(dir)
	if dir == BPFFSRoot || strings.HasPrefix(dir, BPFFSRoot+"/") {
		on, err := onBPFFS(BPFFSRoot)
		if err != nil {
			return err
		}
		if !on {
			if err := unix.Mount("bpffs", BPFFSRoot, "bpf", 0, "mode=0700"); err != nil {
				if errors.Is(err, unix.EPERM) {
					return fmt.Errorf("mount bpffs at %s: %w (run as root, or mount it first: mount -t bpf bpffs %s)", BPFFSRoot, err, BPFFSRoot)
				}
				return fmt.Errorf("mount bpffs at %s: %w", BPFFSRoot, err)
			}
			if err := os.Mkdir(filepath.Join(BPFFSRoot, mountMarker), 0o700); err != nil {
				_ = unix.Unmount(BPFFSRoot, 0)
				return fmt.Errorf("mark the bpffs mount: %w", err)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin directory: %w", err)
	}
	on, err := onBPFFS(dir)
	if err != nil {
		return err
	}
	if !on {
		return fmt.Errorf("pin directory %s is not on bpffs (mount one: mount -t bpf bpffs %s)", dir, dir)
	}
	return nil
}

// ErrPinDirBusy: another process (a running agent) holds the pin
// directory's lock.
var ErrPinDirBusy = errors.New("in use by a running agent")

// LockPinDir takes an exclusive lock on the pin directory dir for as long
// as the returned file stays open (the kernel drops it when the process
// dies, however it dies). An agent holds it while it runs; `xdpolicy
// cleanup` takes it to be sure no agent is running. A held lock fails at
// once with ErrPinDirBusy.
func LockPinDir(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("lock pin directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("pin directory %s: %w", dir, ErrPinDirBusy)
		}
		return nil, fmt.Errorf("lock pin directory %s: %w", dir, err)
	}
	return f, nil
}

// ReleaseBPFFS unmounts the bpffs at BPFFSRoot when PreparePinDir mounted it
// and nothing is pinned there any more. A bpffs somebody else mounted, or
// pins still present (another agent's, or ours kept on purpose), keep it.
// Every xdpolicy process that pins calls it when it is done, so the last
// one undoes the mount.
func ReleaseBPFFS() error {
	if on, err := onBPFFS(BPFFSRoot); err != nil || !on {
		return err
	}
	ents, err := os.ReadDir(BPFFSRoot)
	if err != nil {
		return err
	}
	marked := false
	for _, e := range ents {
		switch e.Name() {
		case mountMarker:
			marked = true
		case "maps.debug", "progs.debug":
			// Kernels with CONFIG_BPF_PRELOAD put these two iterators
			// into every new bpffs; they are not anybody's pins.
		default:
			return nil
		}
	}
	if !marked {
		return nil
	}
	var ours unix.Stat_t
	if err := unix.Stat(BPFFSRoot, &ours); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(BPFFSRoot, mountMarker)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	// Mount propagation (a DaemonSet's Bidirectional volume on an rshared
	// /sys) can stack several mounts of our bpffs there: unmount each.
	for {
		switch err := unix.Unmount(BPFFSRoot, 0); {
		case errors.Is(err, unix.EBUSY):
			// Someone still has something open in it: theirs to release.
			return os.Mkdir(filepath.Join(BPFFSRoot, mountMarker), 0o700)
		case errors.Is(err, unix.EINVAL):
			return nil // not a mount point any more
		case err != nil:
			return fmt.Errorf("unmount %s: %w", BPFFSRoot, err)
		}
		var st unix.Stat_t
		if unix.Stat(BPFFSRoot, &st) != nil || st.Dev != ours.Dev {
			return nil
		}
	}
}

func onBPFFS(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Type == unix.BPF_FS_MAGIC, nil
}
