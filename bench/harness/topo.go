package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/xdpolicy/xdpolicy/xdpprog"
)

// Addresses of the bench topology. Generator sources are drawn from
// GenPrefix (a /16 routed to the generator's veth, so the node's reverse
// path check holds for every source); the sink is SinkIP.
var (
	GenPrefix = netip.MustParsePrefix("10.250.0.0/16")
	GenIP     = netip.MustParseAddr("10.250.0.1")
	SinkIP    = netip.MustParseAddr("10.251.0.1")
	hostMACg  = net.HardwareAddr{0x02, 0xb0, 0, 0, 0, 1}
	podMACg   = net.HardwareAddr{0x02, 0xb0, 0, 0, 0, 2}
	hostMACs  = net.HardwareAddr{0x02, 0xb0, 0, 0, 1, 1}
	podMACs   = net.HardwareAddr{0x02, 0xb0, 0, 0, 1, 2}
)

// Ports: the load goes to LoadPort (allowed, dropped by the sink's raw
// hook), probes to ProbePort (allowed, a socket), DeniedPort is not allowed.
const (
	LoadPort   = 5000
	ProbePort  = 7777
	DeniedPort = 6000
	NodeName   = "bench"
)

// Topo is one bench topology.
type Topo struct {
	ID                 string
	Node, Gen, Sink    string // netns names
	nodeH, genH, sinkH netns.NsHandle
	Dir                string // cluster/, policies/, logs
	BPFFS              string
	sinkLink           *netlink.Handle
}

// NewTopo builds the namespaces and veths. Close removes them.
func NewTopo() (_ *Topo, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("bench needs root (network namespaces, BPF, AF_XDP)")
	}
	for _, c := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(c); err != nil {
			return nil, fmt.Errorf("bench needs the %s command", c)
		}
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	t := &Topo{ID: id, Node: "xdpb-" + id + "-node", Gen: "xdpb-" + id + "-gen", Sink: "xdpb-" + id + "-sink",
		BPFFS: "/sys/fs/bpf/xdpbench-" + id}
	t.Dir, err = os.MkdirTemp("", "xdpbench-"+id+"-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	for _, d := range []string{"cluster", "policies", "logs"} {
		if err := os.Mkdir(filepath.Join(t.Dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	for _, ns := range []string{t.Node, t.Gen, t.Sink} {
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("ip netns add %s: %w: %s", ns, err, out)
		}
	}
	if t.nodeH, err = netns.GetFromName(t.Node); err != nil {
		return nil, err
	}
	if t.genH, err = netns.GetFromName(t.Gen); err != nil {
		return nil, err
	}
	if t.sinkH, err = netns.GetFromName(t.Sink); err != nil {
		return nil, err
	}
	if err := ipBatch(t.Node, []string{
		"link set lo up",
		fmt.Sprintf("link add hg address %s type veth peer name eth0 address %s netns %s", hostMACg, podMACg, t.Gen),
		fmt.Sprintf("link add hs address %s type veth peer name eth0 address %s netns %s", hostMACs, podMACs, t.Sink),
		"link set hg up", "link set hs up",
		fmt.Sprintf("route add %s dev hg", GenPrefix),
		fmt.Sprintf("route add %s/32 dev hs", SinkIP),
		fmt.Sprintf("neigh add %s lladdr %s dev hs nud permanent", SinkIP, podMACs),
	}); err != nil {
		return nil, err
	}
	for ns, ip := range map[string]netip.Addr{t.Gen: GenIP, t.Sink: SinkIP} {
		if err := ipBatch(ns, []string{"link set lo up", "link set eth0 up",
			fmt.Sprintf("addr add %s/32 dev eth0", ip),
			"route add 169.254.1.1 dev eth0 scope link",
			"route add default via 169.254.1.1 dev eth0"}); err != nil {
			return nil, err
		}
	}
	if err := t.sysctls(t.Node, map[string]string{"ipv4/ip_forward": "1", "ipv4/conf/all/rp_filter": "0",
		"ipv4/conf/hg/rp_filter": "0", "ipv4/conf/hs/rp_filter": "0", "ipv4/conf/hg/proxy_arp": "1", "ipv4/conf/hs/proxy_arp": "1"}); err != nil {
		return nil, err
	}
	// The sink drops the load port before conntrack and sockets: no ICMP
	// port unreachable or RST goes back, whatever the rate.
	sinkNft := fmt.Sprintf("table inet sink {\n\tchain pre {\n\t\ttype filter hook prerouting priority raw; policy accept;\n\t\tudp dport %d drop\n\t\ttcp dport %d drop\n\t}\n}\n", LoadPort, LoadPort)
	if err := loadNft(t.Sink, sinkNft); err != nil {
		return nil, err
	}
	if t.sinkLink, err = netlink.NewHandleAt(t.sinkH); err != nil {
		return nil, err
	}
	return t, nil
}

// Close removes everything the topology made.
func (t *Topo) Close() {
	if t.sinkLink != nil {
		t.sinkLink.Close()
	}
	for _, h := range []netns.NsHandle{t.nodeH, t.genH, t.sinkH} {
		if h > 0 {
			h.Close()
		}
	}
	for _, ns := range []string{t.Node, t.Gen, t.Sink} {
		if _, err := os.Stat(filepath.Join("/var/run/netns", ns)); err == nil {
			_ = exec.Command("ip", "netns", "delete", ns).Run()
		}
	}
	_ = os.RemoveAll(t.BPFFS)
	_ = xdpprog.ReleaseBPFFS()
	if t.Dir != "" && os.Getenv("XDPBENCH_KEEP") == "" {
		_ = os.RemoveAll(t.Dir)
	}
}

// SinkRx returns the packets the sink's veth end has received.
func (t *Topo) SinkRx() (uint64, error) {
	l, err := t.sinkLink.LinkByName("eth0")
	if err != nil {
		return 0, err
	}
	return l.Attrs().Statistics.RxPackets, nil
}

func (t *Topo) sysctls(ns string, kv map[string]string) error {
	return inNetns(t.handle(ns), func() error {
		for k, v := range kv {
			if err := os.WriteFile(filepath.Join("/proc/sys/net", k), []byte(v), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
}

func (t *Topo) handle(name string) netns.NsHandle {
	switch name {
	case t.Node:
		return t.nodeH
	case t.Gen:
		return t.genH
	}
	return t.sinkH
}

// inNetns runs fn on a locked OS thread inside ns; the thread is never
// handed back (the goroutine exits locked, and Go ends the thread).
func inNetns(ns netns.NsHandle, fn func() error) error {
	if ns < 0 {
		return errors.New("no such netns")
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func ipBatch(ns string, lines []string) error {
	cmd := exec.Command("ip", "-n", ns, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s: %w: %s", ns, err, bytes.TrimSpace(out))
	}
	return nil
}

// nft loads a script into a namespace.
func loadNft(ns, script string) error {
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %w: %s", ns, err, bytes.TrimSpace(out))
	}
	return nil
}

// Agent is a running `xdpolicy agent` in the node namespace.
type Agent struct {
	cmd     *exec.Cmd
	done    chan struct{}
	Log     string
	Metrics string // host:port inside the node netns
	client  *http.Client
}

// StartAgent runs the agent in the node netns and waits until it enforces
// its first snapshot.
func (t *Topo) StartAgent(binary string, fastpath bool, workers int) (*Agent, error) {
	if err := xdpprog.PreparePinDir(t.BPFFS); err != nil {
		return nil, err
	}
	log := filepath.Join(t.Dir, "logs", "agent.log")
	f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fp := "on"
	if !fastpath {
		fp = "off"
	}
	a := &Agent{Log: log, Metrics: "127.0.0.1:19090", done: make(chan struct{})}
	args := []string{"netns", "exec", t.Node, binary, "agent", "--cluster", filepath.Join(t.Dir, "cluster"),
		"--policies", filepath.Join(t.Dir, "policies"), "--node", NodeName, "--bpffs-dir", t.BPFFS,
		"--fastpath=" + fp, "--metrics-addr", a.Metrics}
	if workers > 0 {
		args = append(args, "--workers", strconv.Itoa(workers))
	}
	a.cmd = exec.Command("ip", args...)
	a.cmd.Stdout, a.cmd.Stderr = f, f
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := a.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { a.cmd.Wait(); close(a.done) }()
	nodeH := t.nodeH
	a.client = &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := inNetns(nodeH, func() (err error) {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}}
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-a.done:
			return nil, fmt.Errorf("agent exited: %s", tail(log))
		default:
		}
		resp, err := a.client.Get("http://" + a.Metrics + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return a, nil
			}
		}
		if time.Now().After(deadline) {
			a.Stop()
			return nil, fmt.Errorf("agent not ready after 60s: %s", tail(log))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// PID of the agent process (ip netns exec execs it in place).
func (a *Agent) PID() int { return a.cmd.Process.Pid }

// Profile saves a CPU profile of the agent taken over d.
func (a *Agent) Profile(d time.Duration, path string) error {
	resp, err := a.client.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", a.Metrics, max(1, int(d.Seconds()))))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// Stop ends the agent (SIGTERM, then SIGKILL after 10 s).
func (a *Agent) Stop() {
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}
