package lab_test

import (
	"bytes"
	"context"
	encbin "encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/xdpolicy/xdpolicy/bench/pktgen"
	"github.com/xdpolicy/xdpolicy/control/lab"
)

// BenchmarkFirstPacketAtLoad measures first-packet latency (a new UDP
// flow's first datagram, from just before its send in the generator pod to
// its kernel receive time at a socket in the sink pod) while a background
// load of other new flows keeps the slow path busy at a fraction of its
// capacity, for xdpolicy and, at the same absolute load, for nftables with
// conntrack and for no enforcement.
//
// The lab: pods gen and sink on node-1; a policy isolates sink for
// ingress and admits 10.250.0.0/16 (the load's sources) and gen on UDP
// fpLoadPort and fpProbePort. The load is bench/pktgen (AF_XDP, copy
// mode, in gen's namespace): 64-byte UDP datagrams to fpLoadPort, every
// one a new 5-tuple (sources over 10.250.0.0/16, routed to gen's host veth
// so the reverse-path check holds), dropped by sink in a raw prerouting
// hook (no ICMP back). The probes are ordinary UDP sockets in gen's
// namespace, one per probe with a source port not used before, the send
// time (CLOCK_REALTIME) in the payload, fpProbeRate per second; sink
// timestamps them on receipt (SO_TIMESTAMPNS). Both namespaces share the
// clock.
//
// The parent measures the capacity first: new flows per second delivered
// to sink (its veth's rx counter over the generator's time) at the
// generator's full rate, for each dataplane; xdpolicy's is the slow path's
// capacity C. Then one sub-benchmark per load level (idle: probes only;
// 10%, 50%, 100% of C, probes included), each iteration measuring none,
// nft and xdpolicy for fpWindow each at the same offered rate; it reports
// per dataplane p50/p99/max (µs) over every probe received in every
// iteration, beside them the probes lost (sent, never received: they are
// not in the percentiles), the offered rate, xdpolicy's p99 over
// nftables', and the CPU the agent used (cores).
// Conntrack is flushed after every nftables run, so its table never
// fills up across runs. Speed is reported, not asserted; only that some
// probes arrived.
func BenchmarkFirstPacketAtLoad(b *testing.B) {
	needAgentLab(b)
	off, on, nftOn, nftOff := baselineLabs(b, "fp", fpCluster(b), fpPolicies)

	rigOff, rigOn := newFPRig(b, off), newFPRig(b, on)
	dps := []fpDataplane{
		{name: "none", rig: rigOff},
		{name: "nft", rig: rigOff, before: nftOn, after: func() { nftOff(); rigOff.flushConntrack(b) }},
		{name: "xdpolicy", rig: rigOn},
	}
	// Every dataplane delivers probes before anything is measured.
	for _, dp := range dps {
		dp.run(b, func() {
			if r := dp.rig.measure(b, 0, 100*time.Millisecond); r.got == 0 {
				b.Fatalf("%s: none of %d probes reached the sink", dp.name, r.sent)
			}
		})
	}
	capacity := map[string]float64{}
	for _, dp := range dps {
		dp.run(b, func() { capacity[dp.name] = dp.rig.capacity(b) })
	}
	c := capacity["xdpolicy"]
	b.Run("capacity", func(b *testing.B) {
		for _, dp := range dps {
			b.ReportMetric(capacity[dp.name], dp.name+"-flows/s")
		}
	})
	for _, lv := range []struct {
		name  string
		share float64
	}{{"idle", 0}, {"10%", 0.1}, {"50%", 0.5}, {"100%", 1}} {
		b.Run("load="+lv.name, func(b *testing.B) {
			rate := lv.share * c
			res := map[string]*fpResult{}
			for _, dp := range dps {
				res[dp.name] = &fpResult{}
			}
			for range b.N {
				for _, dp := range dps {
					dp.run(b, func() { res[dp.name].add(dp.rig.measure(b, rate, fpWindow)) })
				}
			}
			for _, dp := range dps {
				r := res[dp.name]
				if r.got == 0 {
					b.Fatalf("%s at %s: none of %d probes arrived", dp.name, lv.name, r.sent)
				}
				b.ReportMetric(pctUS(r.lat, 50), dp.name+"-p50-us")
				b.ReportMetric(pctUS(r.lat, 99), dp.name+"-p99-us")
				b.ReportMetric(pctUS(r.lat, 100), dp.name+"-max-us")
				b.ReportMetric(float64(r.sent-r.got), dp.name+"-lost")
				b.ReportMetric(r.offered/float64(b.N), dp.name+"-offered-flows/s")
			}
			b.ReportMetric(ratio(pctUS(res["xdpolicy"].lat, 99), pctUS(res["nft"].lat, 99)), "p99-x-nftables")
			b.ReportMetric(res["xdpolicy"].agentCPU/float64(b.N)/fpWindow.Seconds(), "xdpolicy-agent-cores")
		})
	}
}

const (
	fpLoadPort  = 5000
	fpProbePort = 7777
	// fpProbeRate probes per second during fpWindow at every level.
	fpProbeRate = 2000
	fpWindow    = time.Second
)

// fpSrc is where the load's source addresses come from.
var fpSrc = netip.MustParsePrefix("10.250.0.0/16")

func fpCluster(b *testing.B) string {
	ns := &corev1.Namespace{}
	ns.APIVersion, ns.Kind, ns.Name = "v1", "Namespace", "fp"
	objs := []any{ns}
	for _, p := range []struct{ name, ip string }{{"gen", "10.246.1.20"}, {"sink", "10.246.1.21"}} {
		pod := &corev1.Pod{}
		pod.APIVersion, pod.Kind = "v1", "Pod"
		pod.Namespace, pod.Name, pod.Labels = "fp", p.name, map[string]string{"app": p.name}
		pod.Spec.NodeName = "node-1"
		pod.Spec.Containers = []corev1.Container{{Name: "c"}}
		if p.name == "sink" {
			pod.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 81, Protocol: corev1.ProtocolTCP}}
		}
		pod.Status.Phase = corev1.PodRunning
		pod.Status.PodIP = p.ip
		objs = append(objs, pod)
	}
	return objectsFile(b, objs...)
}

// fpPolicies isolate sink for ingress; the load's sources and gen may
// send to the load and probe ports (UDP), nothing else.
var fpPolicies = fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sink-from-gen, namespace: fp}
spec:
  podSelector: {matchLabels: {app: sink}}
  ingress:
  - from: [{ipBlock: {cidr: %s}}, {podSelector: {matchLabels: {app: gen}}}]
    ports: [{protocol: UDP, port: %d}, {protocol: UDP, port: %d}]
`, fpSrc, fpLoadPort, fpProbePort)

// fpDataplane is one of the three dataplanes: a rig, and what to do before
// and after each of its runs.
type fpDataplane struct {
	name          string
	rig           *fpRig
	before, after func()
}

func (dp fpDataplane) run(tb testing.TB, fn func()) {
	if dp.before != nil {
		dp.before()
	}
	fn()
	if dp.after != nil {
		dp.after()
	}
}

// fpRig is one lab's generator, probe sender and sink.
type fpRig struct {
	s         *lab.State
	gen, sink *lab.Pod
	load      *pktgen.Gen
	sinkLink  *netlink.Handle
	nodeLink  *netlink.Handle
	sock      *net.UDPConn
	agentPID  int
	nextPort  int

	mu  sync.Mutex
	got int
	lat []time.Duration
}

func newFPRig(tb testing.TB, s *lab.State) *fpRig {
	tb.Helper()
	r := &fpRig{s: s, gen: labPod(tb, s, "fp/gen"), sink: labPod(tb, s, "fp/sink"), nextPort: 1024}
	for _, p := range s.Procs {
		if p.Role == "agent" && p.Of == r.gen.Node {
			r.agentPID = p.PID
		}
	}
	var node *lab.Node
	for i := range s.Nodes {
		if s.Nodes[i].Name == r.gen.Node {
			node = &s.Nodes[i]
		}
	}
	handle := func(name string) netns.NsHandle {
		h, err := netns.GetFromName(name)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { h.Close() })
		return h
	}
	nodeH, genH, sinkH := handle(node.Netns), handle(r.gen.Netns), handle(r.sink.Netns)
	var err error
	if r.nodeLink, err = netlink.NewHandleAt(nodeH); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(r.nodeLink.Close)
	if r.sinkLink, err = netlink.NewHandleAt(sinkH); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(r.sinkLink.Close)
	hv, err := r.nodeLink.LinkByName(r.gen.HostIface)
	if err != nil {
		tb.Fatal(err)
	}
	// The load's sources are routed to gen's veth, so that the node's
	// reverse-path check (strict or loose) passes them.
	if out, err := exec.Command("ip", "-n", node.Netns, "route", "add", fpSrc.String(), "dev", r.gen.HostIface).CombinedOutput(); err != nil {
		tb.Fatalf("route %s: %v: %s", fpSrc, err, out)
	}
	if rerr := lab.RunIn(node.Netns, func() {
		for _, k := range []string{"all", r.gen.HostIface} {
			if err = os.WriteFile(filepath.Join("/proc/sys/net/ipv4/conf", k, "rp_filter"), []byte("0"), 0o644); err != nil {
				return
			}
		}
	}); rerr != nil || err != nil {
		tb.Fatalf("rp_filter in %s: %v", node.Netns, errors.Join(rerr, err))
	}
	// sink drops the load before conntrack and sockets: no ICMP back.
	if err := nftIn(r.sink.Netns, fmt.Sprintf("table inet fpsink {\n\tchain pre {\n\t\ttype filter hook prerouting priority raw; policy accept;\n\t\tudp dport %d drop\n\t}\n}\n", fpLoadPort)); err != nil {
		tb.Fatal(err)
	}
	r.load, err = pktgen.New(pktgen.Config{Netns: genH, Iface: "eth0", DstMAC: hv.Attrs().HardwareAddr, Src: fpSrc, Dst: r.sink.IPs[0], Proto: pktgen.UDP, Seed: 1})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { r.load.Close() })
	if r.sock, err = lab.ListenUDPIn(r.sink.Netns, fmt.Sprintf("0.0.0.0:%d", fpProbePort)); err != nil {
		tb.Fatal(err)
	}
	rc, err := r.sock.SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	rc.Control(func(fd uintptr) {
		unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
		unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	})
	done := make(chan struct{})
	go r.receive(done)
	tb.Cleanup(func() { r.sock.Close(); <-done })
	return r
}

// receive records the probes' latencies.
func (r *fpRig) receive(done chan struct{}) {
	defer close(done)
	buf := make([]byte, 2048)
	oob := make([]byte, 128)
	for {
		n, oobn, _, _, err := r.sock.ReadMsgUDP(buf, oob)
		if err != nil {
			return
		}
		recv := time.Now()
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SO_TIMESTAMPNS && len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})) {
					ts := (*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
					recv = time.Unix(ts.Unix())
				}
			}
		}
		_, sent, ok := pktgen.ParsePayload(buf[:n])
		if !ok {
			continue
		}
		r.mu.Lock()
		r.got++
		r.lat = append(r.lat, recv.Sub(sent))
		r.mu.Unlock()
	}
}

// fpRun is one measurement.
type fpRun struct {
	sent, got int
	lat       []time.Duration
	offered   float64 // load + probes, per second
	agentCPU  float64 // seconds
}

// measure offers new flows at rate (probes included) for d: the load from
// pktgen, fpProbeRate probes from gen's own address.
func (r *fpRig) measure(tb testing.TB, rate float64, d time.Duration) fpRun {
	tb.Helper()
	r.mu.Lock()
	r.got, r.lat = 0, r.lat[:0]
	r.mu.Unlock()
	cpu0 := procSeconds(r.agentPID)
	var st pktgen.Stats
	var wg sync.WaitGroup
	if load := rate - fpProbeRate; load > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st = r.load.Run(context.Background(), pktgen.Spec{Mode: pktgen.NewFlows, DstPort: fpLoadPort, Rate: load, Duration: d})
		}()
	}
	sent, err := r.probe(d)
	wg.Wait()
	time.Sleep(50 * time.Millisecond) // the last probes in flight
	if err != nil {
		tb.Fatalf("probes: %v", err)
	}
	run := fpRun{sent: sent, agentCPU: procSeconds(r.agentPID) - cpu0}
	run.offered = st.PPS() + float64(sent)/d.Seconds()
	r.mu.Lock()
	run.got, run.lat = r.got, append([]time.Duration(nil), r.lat...)
	r.mu.Unlock()
	return run
}

// probe sends fpProbeRate probes per second for d, each from a new socket
// bound to a source port the rig has not used before.
func (r *fpRig) probe(d time.Duration) (int, error) {
	sent := 0
	var perr error
	dst := &unix.SockaddrInet4{Port: fpProbePort, Addr: r.sink.IPs[0].As4()}
	err := lab.RunIn(r.gen.Netns, func() {
		payload := make([]byte, pktgen.PayloadLen)
		encbin.BigEndian.PutUint16(payload, pktgen.Magic)
		start := time.Now()
		n := int(d.Seconds() * fpProbeRate)
		for i := range n {
			if wait := time.Until(start.Add(time.Duration(i) * time.Second / fpProbeRate)); wait > 0 {
				time.Sleep(wait)
			}
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				perr = err
				return
			}
			port := r.nextPort
			if r.nextPort++; r.nextPort > 65535 {
				r.nextPort = 1024 // 5-tuples repeat only after 64k probes
			}
			if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port}); err != nil {
				unix.Close(fd)
				continue // in use: skip the port
			}
			encbin.BigEndian.PutUint64(payload[2:], uint64(i))
			encbin.BigEndian.PutUint64(payload[10:], uint64(time.Now().UnixNano()))
			err = unix.Sendto(fd, payload, 0, dst)
			unix.Close(fd)
			if err != nil {
				perr = err
				return
			}
			sent++
		}
	})
	return sent, errors.Join(err, perr)
}

// capacity is the rate of new flows delivered to sink with the generator
// at its full rate for fpWindow.
func (r *fpRig) capacity(tb testing.TB) float64 {
	tb.Helper()
	rx0 := r.sinkRx(tb)
	st := r.load.Run(context.Background(), pktgen.Spec{Mode: pktgen.NewFlows, DstPort: fpLoadPort, Duration: fpWindow})
	time.Sleep(50 * time.Millisecond)
	return float64(r.sinkRx(tb)-rx0) / st.Elapsed.Seconds()
}

func (r *fpRig) sinkRx(tb testing.TB) uint64 {
	l, err := r.sinkLink.LinkByName("eth0")
	if err != nil {
		tb.Fatal(err)
	}
	return l.Attrs().Statistics.RxPackets
}

// flushConntrack empties the node's conntrack table (nftables runs fill
// it with one entry per new flow).
func (r *fpRig) flushConntrack(tb testing.TB) {
	if err := r.nodeLink.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
		tb.Fatalf("conntrack flush: %v", err)
	}
}

// fpResult accumulates one dataplane's runs at one level.
type fpResult struct {
	sent, got int
	lat       []time.Duration
	offered   float64
	agentCPU  float64
}

func (a *fpResult) add(r fpRun) {
	a.sent += r.sent
	a.got += r.got
	a.lat = append(a.lat, r.lat...)
	a.offered += r.offered
	a.agentCPU += r.agentCPU
}

// procSeconds is utime+stime of pid (0 for pid 0).
func procSeconds(pid int) float64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}
