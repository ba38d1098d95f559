package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf/rlimit"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/control/source"
	"github.com/xdpolicy/xdpolicy/dataplane/flowtable"
	"github.com/xdpolicy/xdpolicy/dataplane/podwire"
	"github.com/xdpolicy/xdpolicy/dataplane/punt"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
	"github.com/xdpolicy/xdpolicy/dataplane/worker"
	"github.com/xdpolicy/xdpolicy/xdpprog"
)

// Config is the agent's configuration (the flags of `xdpolicy agent`).
type Config struct {
	Source   source.Source
	Node     string
	StateDir string
	// BPFFSDir holds the pinned maps and links (default
	// /sys/fs/bpf/xdpolicy/<node>).
	BPFFSDir string
	Fastpath bool
	Mode     flowtable.Mode
	// KeepOnExit leaves programs, the punt port and pins in place.
	KeepOnExit  bool
	Workers     int
	MetricsAddr string
	// NumFrames of the UMEM (default 1024). Every re-injection socket
	// costs the kernel ~126 bytes per UMEM frame (dataplane/afxdp doc), so
	// 1024 frames keep 250 pods (500 sockets) near 71 MiB, where 4096
	// would take 262 MiB.
	NumFrames int
	Log       *slog.Logger
	// Ready, if set, receives the bound metrics address once listening.
	OnListen func(addr string)
	// APISocket is a unix socket serving the same ops API (default
	// StateDir/agent.sock when StateDir is set, else none).
	APISocket string
	// SampleDrops reports 1 in SampleDrops cached denies the kernel
	// applies into the trace stream (0: none).
	SampleDrops int
	// TraceAlways records verdicts with nobody following, so that GET
	// /trace without follow returns the latest ones.
	TraceAlways bool
}

// DefaultBPFFSDir is the pin directory of node's agent.
func DefaultBPFFSDir(node string) string { return filepath.Join(xdpprog.BPFFSRoot, "xdpolicy", node) }

// Run runs the agent until ctx ends.
func Run(ctx context.Context, cfg Config) (err error) {
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root (CAP_BPF, CAP_NET_ADMIN, CAP_NET_RAW)")
	}
	if cfg.Node == "" {
		return errors.New("--node is required")
	}
	if cfg.BPFFSDir == "" {
		cfg.BPFFSDir = DefaultBPFFSDir(cfg.Node)
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.NumCPU()
	}
	if cfg.NumFrames <= 0 {
		cfg.NumFrames = 1024
	}
	if cfg.StateDir != "" {
		if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
			return fmt.Errorf("state dir: %w", err)
		}
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("raise RLIMIT_MEMLOCK: %w", err)
	}
	if fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0); err != nil {
		return fmt.Errorf("AF_XDP socket: %w (kernel needs CONFIG_XDP_SOCKETS=y)", err)
	} else {
		unix.Close(fd)
	}

	if err := xdpprog.PreparePinDir(cfg.BPFFSDir); err != nil {
		return err
	}
	// One agent per pin directory: a second would fight the first over
	// the same attachments and maps.
	lock, err := xdpprog.LockPinDir(cfg.BPFFSDir)
	if err != nil {
		return fmt.Errorf("%w (another agent runs for node %s; stop it first)", err, cfg.Node)
	}
	defer lock.Close()
	objs, err := xdpprog.Load(xdpprog.Options{PinDir: cfg.BPFFSDir})
	if err != nil {
		return fmt.Errorf("load BPF programs (is bpffs mounted at %s? `mount -t bpf bpffs %s`): %w", xdpprog.BPFFSRoot, xdpprog.BPFFSRoot, err)
	}
	old, _ := objs.ReadConfig()
	genBase := old.Generation
	log.Info("loaded programs", "pin_dir", cfg.BPFFSDir, "previous_generation", genBase, "previous_punt_ifindex", old.PuntIfindex)

	pp, err := punt.Open(punt.Options{Objects: objs, PinDir: cfg.BPFFSDir, Queues: cfg.Workers, NumFrames: cfg.NumFrames})
	if err != nil {
		objs.Close()
		return fmt.Errorf("punt port: %w", err)
	}
	wirer := podwire.New(podwire.Options{Objects: objs, UMEM: pp.UMEM, PinDir: cfg.BPFFSDir, Node: cfg.Node, Log: log})
	defer func() {
		// Teardown, also after a failure.
		keep := cfg.KeepOnExit
		wirer.Close(keep)
		if cerr := pp.Close(keep); cerr != nil {
			log.Warn("close punt port", "err", cerr)
		}
		if !keep {
			// Nobody punts to a deleted dp0; fail closed for a later agent.
			_ = objs.SetConfig(xdpprog.Config{})
			if uerr := objs.Unpin(); uerr != nil {
				log.Warn("unpin maps", "err", uerr)
			}
			if uerr := xdpprog.ReleaseBPFFS(); uerr != nil {
				log.Warn("unmount the bpffs this agent mounted", "err", uerr)
			}
		}
		objs.Close()
		log.Info("agent stopped", "kept_attached", keep)
	}()

	var flags uint32
	if !cfg.Fastpath {
		flags |= xdpprog.ConfigFastpathOff
	}
	kcfg := xdpprog.Config{Generation: genBase, PuntIfindex: uint32(pp.Index0), Flags: flags, MaxPuntLen: punt.MTU + 14, SampleEvery: uint32(cfg.SampleDrops)}
	if err := objs.SetConfig(kcfg); err != nil {
		return fmt.Errorf("write config: %w", err)
	}

	var pub ruleset.Publisher
	cls := &flowtable.Classifier{}
	cls.SetNodeAddrs(nodeAddrs())
	flows := flowtable.NewTable(objs.Flows, objs.Frags)
	flows.SetGeneration(genBase)
	flows.SetBase(genBase)
	counters := &worker.Counters{}
	xops := newOps(cfg, counters, flows)
	ctl := newControl(cfg, log)
	var ready atomic.Bool
	var kernelGen atomic.Uint32
	kernelGen.Store(genBase)

	// Ops server.
	srv, err := serveOps(cfg, log, &ready, objs, counters, wirer, pp, &kernelGen, xops, ctl)
	if err != nil {
		return err
	}
	defer srv.Close()

	wctx, stopWorkers := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		stopWorkers()
		wg.Wait()
	}()
	per := cfg.NumFrames / len(pp.RX)
	for i, rx := range pp.RX {
		w := worker.New(worker.Config{
			UMEM: pp.UMEM, RX: rx, Free: pp.UMEM.NewFreeList(i*per, per),
			Publisher: &pub, Classifier: cls, Flows: flows, Targets: wirer.Registry(),
			Counters: counters, Mode: cfg.Mode, Fastpath: cfg.Fastpath, Trace: xops.ring,
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.Run(wctx)
			w.Drain(200 * time.Millisecond)
		}()
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		q := &worker.Requests{Map: objs.Requests, Publisher: &pub, Classifier: cls, Flows: flows, Mode: cfg.Mode, Counters: counters, Trace: xops.ring}
		if err := q.Run(wctx); err != nil {
			log.Error("requests ring buffer", "err", err)
		}
	}()
	go func() {
		defer wg.Done()
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-t.C:
				if _, err := flows.SweepDenies(flowtable.DenyTTL); err != nil {
					log.Debug("sweep denies", "err", err)
				}
			}
		}
	}()

	// The control loop: snapshots from the source, periodic re-sync of the
	// wiring (pods whose veth appears after their YAML).
	snaps := make(chan *model.Cluster, 1)
	srcErr := make(chan error, 1)
	go func() {
		srcErr <- cfg.Source.Run(ctx, func(c *model.Cluster) {
			select {
			case <-snaps: // coalesce: only the newest matters
			default:
			}
			snaps <- c
		})
	}()
	resync := time.NewTicker(time.Second)
	defer resync.Stop()
	var cur *ruleset.Ruleset
	for {
		select {
		case <-ctx.Done():
			log.Info("stopping", "keep_on_exit", cfg.KeepOnExit)
			return nil
		case err := <-srcErr:
			if err != nil {
				return fmt.Errorf("control source: %w", err)
			}
			<-ctx.Done()
			return nil
		case c := <-snaps:
			start := time.Now()
			ctl.received(c)
			rs, problems := ctl.compile(c)
			for _, p := range problems {
				log.Warn("policy fails closed", "problem", p.Error())
			}
			g := pub.Publish(rs)
			xops.published(rs, time.Since(start))
			cur = rs
			kg := genBase + uint32(g)
			cls.SetNodeAddrs(ctl.addrs())
			if err := wirer.Sync(rs); err != nil {
				log.Error("sync pods", "err", err)
			}
			ctl.reportUnwired(wirer.Unwired())
			flows.SetGeneration(kg)
			kcfg.Generation = kg
			if err := objs.SetConfig(kcfg); err != nil {
				log.Error("write config generation", "err", err)
			}
			kernelGen.Store(kg)
			ctl.enforced(c, problems)
			st, err := flows.Revalidate(cls, rs, cfg.Mode)
			if err != nil {
				log.Error("revalidate flows", "err", err)
			}
			xops.enforced(c, rs, problems)
			ready.Store(true)
			log.Info("snapshot enforced", "generation", kg, "pods", len(rs.Pods), "policies", len(rs.Policies),
				"wired", wirer.Count(), "flows_seen", st.Seen, "kept", st.Kept, "denied", st.Denied, "deleted", st.Deleted,
				"took", time.Since(start).Round(time.Microsecond))
		case <-resync.C:
			if cur != nil {
				cls.SetNodeAddrs(ctl.addrs())
				if err := wirer.Sync(cur); err != nil {
					log.Error("sync pods", "err", err)
				}
				ctl.reportUnwired(wirer.Unwired())
			}
		}
	}
}

// unwiredGrace is how long an isolated pod may stay unwired before /readyz
// fails: a pod's address can reach the agent a moment before its veth is
// found.
const unwiredGrace = 5 * time.Second

// unenforced says which isolated pods have been unwired for longer than
// unwiredGrace, or "" when none.
func unenforced(us []podwire.Unwired, now time.Time) string {
	var b strings.Builder
	for _, u := range us {
		if now.Sub(u.Since) >= unwiredGrace {
			fmt.Fprintf(&b, "pod %s is isolated by a policy but not enforced: %s\n", u.Pod, u.Reason)
		}
	}
	return b.String()
}

// nodeAddrs lists the addresses of the node's netns.
func nodeAddrs() []netip.Addr {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

func serveOps(cfg Config, log *slog.Logger, ready *atomic.Bool, objs *xdpprog.Objects, c *worker.Counters,
	wirer *podwire.Wirer, pp *punt.Port, gen *atomic.Uint32, xops *ops, ctl *control) (*http.Server, error) {
	addr := cfg.MetricsAddr
	if addr == "" {
		addr = "127.0.0.1:9090"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{objs: objs, c: c, wirer: wirer, pp: pp, gen: gen})
	reg.MustRegister(ctl.collectors()...)
	reg.MustRegister(xops.collectors(objs, wirer.Registry(), pp.RX)...)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "no snapshot enforced yet", http.StatusServiceUnavailable)
			return
		}
		if msg := unenforced(wirer.Unwired(), time.Now()); msg != "" {
			http.Error(w, msg, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	xops.register(mux)
	go srv.Serve(ln)
	if err := serveSocket(cfg, srv, log); err != nil {
		srv.Close()
		return nil, err
	}
	log.Info("ops server listening", "addr", ln.Addr().String())
	if cfg.OnListen != nil {
		cfg.OnListen(ln.Addr().String())
	}
	return srv, nil
}
