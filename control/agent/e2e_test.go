package agent_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/xdpolicy/xdpolicy/xdpprog"
)

// The end-to-end test builds a node netns with pods on ptp veths (pod /32
// and /128, host routes, link-local gateway as Calico does it), runs the
// real binary in the node netns with `ip netns exec`, and checks real
// TCP/UDP traffic between the pods.

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (netns, veth, BPF, AF_XDP)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipping: needs iproute2's ip")
	}
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Skipf("skipping: AF_XDP unavailable (CONFIG_XDP_SOCKETS): %v", err)
	}
	unix.Close(fd)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

var buildOnce sync.Once
var binPath, buildErr = "", error(nil)

func buildBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "xdpolicy-e2e-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "xdpolicy")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/xdpolicy/xdpolicy/cmd/xdpolicy").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

type pod struct {
	name, ns, host string
	v4, v6         string
}

type env struct {
	t        *testing.T
	tag      string
	node     string // netns name
	nodeName string
	pods     []*pod
	cluster  string
	policies string
	bpffs    string
	bin      string
}

// newEnv builds a node with npods pods p1…pN wired the way routed CNIs
// (ptp, Calico) wire them: a /32 route per pod out its own veth, proxy ARP.
// Pod i is labelled app=apps[i-1] when given, app=p<i> otherwise.
func newEnv(t *testing.T, npods int, apps ...string) *env {
	return newEnvWired(t, false, npods, apps...)
}

// newBridgeEnv builds the node the way the reference bridge CNI plugin does:
// every pod's veth is a port of br0, pods share 10.99.0.0/24 and fd99::/64
// with the gateway on br0, and the node does not forward, so pods reach
// each other over L2 only.
func newBridgeEnv(t *testing.T, npods int, apps ...string) *env {
	return newEnvWired(t, true, npods, apps...)
}

func newEnvWired(t *testing.T, bridged bool, npods int, apps ...string) *env {
	requireRoot(t)
	// Unique per process and per test: netns, pin directory and nft table
	// names derive from it.
	e := &env{t: t, tag: fmt.Sprintf("xdpe%d-%d", os.Getpid()%100000, envSeq.Add(1))}
	e.node = e.tag + "-node"
	e.nodeName = "node-" + e.tag
	e.bin = buildBinary(t)
	e.cluster, e.policies = t.TempDir(), t.TempDir()
	e.bpffs = filepath.Join("/sys/fs/bpf", "xdpolicy-test-"+e.tag)
	// The pin directory exists for the whole test, so no other process
	// finishing meanwhile unmounts a bpffs xdpolicy mounted.
	if err := xdpprog.PreparePinDir(e.bpffs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(e.bpffs)
		xdpprog.ReleaseBPFFS() // when xdpolicy mounted it and nothing else is pinned
	})
	addNetns(t, e.node)
	n := e.node
	run(t, "ip", "-n", n, "link", "set", "lo", "up")
	if bridged {
		run(t, "ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0")
		run(t, "ip", "-n", n, "link", "add", "br0", "type", "bridge")
		run(t, "ip", "-n", n, "addr", "add", "10.99.0.254/24", "dev", "br0")
		run(t, "ip", "-n", n, "-6", "addr", "add", "fd99::fe/64", "dev", "br0", "nodad")
		run(t, "ip", "-n", n, "link", "set", "br0", "up")
	} else {
		run(t, "ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	}
	run(t, "ip", "-n", n, "link", "add", "nd0", "type", "veth", "peer", "name", "nd1")
	run(t, "ip", "-n", n, "link", "set", "nd1", "up")
	run(t, "ip", "-n", n, "addr", "add", "10.98.0.1/32", "dev", "nd0")
	run(t, "ip", "-n", n, "-6", "addr", "add", "fd98::1/128", "dev", "nd0", "nodad")
	run(t, "ip", "-n", n, "link", "set", "nd0", "up")
	var yaml strings.Builder
	yaml.WriteString("apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n")
	for i := 1; i <= npods; i++ {
		p := &pod{name: fmt.Sprintf("p%d", i), ns: fmt.Sprintf("%s-p%d", e.tag, i), host: fmt.Sprintf("xh%d", i),
			v4: fmt.Sprintf("10.99.0.%d", i), v6: fmt.Sprintf("fd99::%d", i)}
		addNetns(t, p.ns)
		run(t, "ip", "-n", n, "link", "add", p.host, "type", "veth", "peer", "name", "eth0", "netns", p.ns)
		run(t, "ip", "-n", n, "link", "set", p.host, "up")
		run(t, "ip", "-n", p.ns, "link", "set", "lo", "up")
		run(t, "ip", "-n", p.ns, "link", "set", "eth0", "up")
		if bridged {
			run(t, "ip", "-n", n, "link", "set", p.host, "master", "br0")
			run(t, "ip", "-n", p.ns, "addr", "add", p.v4+"/24", "dev", "eth0")
			run(t, "ip", "-n", p.ns, "-6", "addr", "add", p.v6+"/64", "dev", "eth0", "nodad")
			run(t, "ip", "-n", p.ns, "route", "add", "default", "via", "10.99.0.254")
			run(t, "ip", "-n", p.ns, "-6", "route", "add", "default", "via", "fd99::fe")
		} else {
			hmac := strings.TrimSpace(run(t, "ip", "netns", "exec", n, "cat", "/sys/class/net/"+p.host+"/address"))
			run(t, "ip", "-n", p.ns, "addr", "add", p.v4+"/32", "dev", "eth0")
			run(t, "ip", "-n", p.ns, "-6", "addr", "add", p.v6+"/128", "dev", "eth0", "nodad")
			run(t, "ip", "-n", p.ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
			run(t, "ip", "-n", p.ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
			run(t, "ip", "-n", p.ns, "neigh", "add", "169.254.1.1", "lladdr", hmac, "dev", "eth0", "nud", "permanent")
			run(t, "ip", "-n", n, "-6", "addr", "add", "fe80::1/64", "dev", p.host, "nodad")
			run(t, "ip", "-n", p.ns, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
			run(t, "ip", "-n", p.ns, "-6", "neigh", "add", "fe80::1", "lladdr", hmac, "dev", "eth0", "nud", "permanent")
			run(t, "ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv4.conf."+p.host+".proxy_arp=1")
			run(t, "ip", "-n", n, "route", "add", p.v4+"/32", "dev", p.host)
			run(t, "ip", "-n", n, "-6", "route", "add", p.v6+"/128", "dev", p.host)
		}
		app := p.name
		if i <= len(apps) {
			app = apps[i-1]
		}
		fmt.Fprintf(&yaml, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: default, labels: {app: %s}}\n"+
			"spec: {nodeName: %s, containers: [{name: c, image: x}]}\nstatus: {phase: Running, podIP: %s, podIPs: [{ip: %s}, {ip: %s}]}\n",
			p.name, app, e.nodeName, p.v4, p.v4, p.v6)
		e.pods = append(e.pods, p)
	}
	if err := os.WriteFile(filepath.Join(e.cluster, "cluster.yaml"), []byte(yaml.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

// appendCluster adds YAML documents to the cluster file (before the agent
// starts: the agent would see a half-written file otherwise).
func (e *env) appendCluster(docs string) {
	e.t.Helper()
	f, err := os.OpenFile(filepath.Join(e.cluster, "cluster.yaml"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("---\n" + docs); err != nil {
		e.t.Fatal(err)
	}
}

var envSeq atomic.Int32

func addNetns(t *testing.T, name string) {
	t.Helper()
	exec.Command("ip", "netns", "del", name).Run() // a leftover of a killed run of ours
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
}

// setPolicies replaces the policies directory's content.
func (e *env) setPolicies(yaml string) {
	e.t.Helper()
	f := filepath.Join(e.policies, "policies.yaml")
	if yaml == "" {
		os.Remove(f)
		return
	}
	if err := os.WriteFile(f+".tmp", []byte(yaml), 0o644); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(f+".tmp", f); err != nil {
		e.t.Fatal(err)
	}
}

// agentProc is one running agent.
type agentProc struct {
	cmd      *exec.Cmd
	mu       sync.Mutex
	log      bytes.Buffer
	enforced int
	cond     *sync.Cond
	done     chan struct{}
}

func (e *env) startAgent(args ...string) *agentProc {
	e.t.Helper()
	// nsenter, not `ip netns exec`: the latter remounts /sys in a mount
	// namespace of its own, so the agent would pin into a private bpffs
	// that dies with it, and --keep-on-exit would keep nothing (as on a
	// node, the agent must pin into the host's bpffs).
	all := append([]string{"--net=/var/run/netns/" + e.node, "--", e.bin, "agent", "--cluster", e.cluster, "--policies", e.policies,
		"--node", e.nodeName, "--bpffs-dir", e.bpffs, "--metrics-addr", "127.0.0.1:0", "--workers", "2"}, args...)
	a := &agentProc{cmd: exec.Command("nsenter", all...), done: make(chan struct{})}
	a.cond = sync.NewCond(&a.mu)
	pr, pw := io.Pipe()
	a.cmd.Stderr, a.cmd.Stdout = pw, pw
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := a.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			a.mu.Lock()
			a.log.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "snapshot enforced") {
				a.enforced++
			}
			a.cond.Broadcast()
			a.mu.Unlock()
		}
	}()
	go func() { a.cmd.Wait(); pw.Close(); close(a.done) }()
	e.t.Cleanup(func() {
		select {
		case <-a.done:
		default:
			a.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-a.done:
			case <-time.After(5 * time.Second):
				a.cmd.Process.Kill()
				<-a.done
			}
		}
		if e.t.Failed() {
			e.t.Logf("agent log:\n%s", a.logs())
		}
	})
	return a
}

func (a *agentProc) logs() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.log.String()
}

// waitEnforced waits until the agent has enforced n snapshots.
func (a *agentProc) waitEnforced(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	go func() {
		time.Sleep(10 * time.Second)
		a.mu.Lock()
		a.cond.Broadcast()
		a.mu.Unlock()
	}()
	a.mu.Lock()
	defer a.mu.Unlock()
	for a.enforced < n {
		select {
		case <-a.done:
			t.Fatalf("agent exited before enforcing snapshot %d:\n%s", n, a.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not enforce snapshot %d within 10s:\n%s", n, a.log.String())
		}
		a.cond.Wait()
	}
}

func (a *agentProc) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.enforced
}

func (a *agentProc) stop(t *testing.T) {
	t.Helper()
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("agent did not exit on SIGTERM:\n%s", a.logs())
	}
	if !a.cmd.ProcessState.Success() {
		t.Fatalf("agent exited with %v:\n%s", a.cmd.ProcessState, a.logs())
	}
}

// inNetns runs fn with the calling goroutine's thread in netns name.
func inNetns(t *testing.T, name string, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		h, err := netns.GetFromName(name)
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		orig.Close()
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("in netns %s: %v", name, err)
	}
}

// servers starts TCP and UDP echo servers on every address of ns.
func serve(t *testing.T, ns string, tcpPort, udpPort int) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	inNetns(t, ns, func() (err error) {
		if ln, err = net.Listen("tcp", fmt.Sprintf(":%d", tcpPort)); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", udpPort))
		return err
	})
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go io.Copy(c, c)
		}
	}()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
}

func dialIn(t *testing.T, ns, network, addr string) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	var derr error
	inNetns(t, ns, func() error {
		c, derr = net.DialTimeout(network, addr, time.Second)
		return nil
	})
	return c, derr
}

// echo sends a message on c and reports whether it came back in time.
func echo(c net.Conn, timeout time.Duration) bool {
	msg := []byte(fmt.Sprintf("ping %d", time.Now().UnixNano()))
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(msg); err != nil {
		return false
	}
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c, buf)
	return err == nil && bytes.Equal(buf, msg)
}

func tcpOK(t *testing.T, ns, addr string) bool {
	t.Helper()
	c, err := dialIn(t, ns, "tcp", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	return echo(c, time.Second)
}

func udpOK(t *testing.T, ns, addr string) bool {
	t.Helper()
	c, err := dialIn(t, ns, "udp", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	for i := 0; i < 3; i++ {
		if echo(c, 400*time.Millisecond) {
			return true
		}
	}
	return false
}

const denyB = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-b, namespace: default}
spec:
  podSelector: {matchLabels: {app: p2}}
  policyTypes: [Ingress]
`

const allowAToB = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-a, namespace: default}
spec:
  podSelector: {matchLabels: {app: p2}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: p1}}}]
    ports: [{protocol: TCP, port: 8080}]
`

func hostPort(ip string, port int) string { return net.JoinHostPort(ip, fmt.Sprint(port)) }

func TestAgentEndToEnd(t *testing.T) {
	e := newEnv(t, 3)
	a, b, c := e.pods[0], e.pods[1], e.pods[2]
	serve(t, b.ns, 8080, 9000)
	serve(t, b.ns, 8081, 9001)
	agent1 := e.startAgent("--keep-on-exit")
	agent1.waitEnforced(t, 1)

	expect := func(what string, got, want bool) {
		t.Helper()
		if got != want {
			t.Errorf("%s: reachable=%v, want %v", what, got, want)
		}
	}
	matrix := func(stage string, tcp8080, tcp8081, udp9000 bool) {
		t.Helper()
		for _, ip := range []string{b.v4, b.v6} {
			expect(stage+": a→b TCP "+hostPort(ip, 8080), tcpOK(t, a.ns, hostPort(ip, 8080)), tcp8080)
			expect(stage+": a→b TCP "+hostPort(ip, 8081), tcpOK(t, a.ns, hostPort(ip, 8081)), tcp8081)
			expect(stage+": a→b UDP "+hostPort(ip, 9000), udpOK(t, a.ns, hostPort(ip, 9000)), udp9000)
		}
	}

	t.Log("no policy: everything is allowed")
	matrix("no policy", true, true, true)
	expect("no policy: c→b TCP", tcpOK(t, c.ns, hostPort(b.v4, 8080)), true)

	t.Log("deny all ingress of b")
	n := agent1.count()
	e.setPolicies(denyB)
	agent1.waitEnforced(t, n+1)
	matrix("deny", false, false, false)
	expect("deny: node→b TCP (node addresses are always allowed)", tcpOK(t, e.node, hostPort(b.v4, 8080)), true)
	// Repeated datagrams of a denied flow meet the cached deny in the
	// kernel: counted against b, and sampled into the trace stream.
	for range 3 {
		udpOK(t, a.ns, hostPort(b.v4, 9000))
	}
	if _, m := e.get(t, agent1, "/metrics"); !regexp.MustCompile(`xdpolicy_fastpath_drops_total\{pod="[^"]+"\} [1-9]`).MatchString(m) {
		t.Errorf("no per-pod fast-path drops after repeated denied datagrams")
	}

	t.Log("allow a→b TCP 8080")
	n = agent1.count()
	e.setPolicies(allowAToB)
	agent1.waitEnforced(t, n+1)
	matrix("allow", true, false, false)
	expect("allow: c→b TCP 8080", tcpOK(t, c.ns, hostPort(b.v4, 8080)), false)

	t.Log("revalidate: revoking the policy cuts an established connection within 1s")
	conn, err := dialIn(t, a.ns, "tcp", hostPort(b.v4, 8080))
	if err != nil {
		t.Fatalf("connect a→b: %v", err)
	}
	defer conn.Close()
	if !echo(conn, time.Second) {
		t.Fatal("established connection does not echo")
	}
	n = agent1.count()
	e.setPolicies(denyB)
	agent1.waitEnforced(t, n+1)
	if echo(conn, time.Second) {
		t.Error("revalidate: connection still works 1s after its policy was revoked")
	}
	conn.Close()

	t.Log("restart with --keep-on-exit keeps an established connection; new ones fail in the gap")
	n = agent1.count()
	e.setPolicies(allowAToB)
	agent1.waitEnforced(t, n+1)
	conn, err = dialIn(t, a.ns, "tcp", hostPort(b.v4, 8080))
	if err != nil {
		t.Fatalf("connect a→b: %v", err)
	}
	defer conn.Close()
	if !echo(conn, time.Second) {
		t.Fatal("connection before restart does not echo")
	}
	agent1.stop(t)
	if !echo(conn, time.Second) {
		t.Error("gap: established connection broke while the agent was down")
	}
	expect("gap: new a→b TCP 8080", tcpOK(t, a.ns, hostPort(b.v4, 8080)), false)

	agent2 := e.startAgent("--existing-connections=keep")
	agent2.waitEnforced(t, 1)
	if !regexp.MustCompile(`loaded programs.*previous_generation=[1-9]`).MatchString(agent2.logs()) {
		t.Errorf("the restarted agent did not take over the pinned maps:\n%s", agent2.logs())
	}
	if !echo(conn, time.Second) {
		t.Error("after restart: established connection broke")
	}
	expect("after restart: new a→b TCP 8080", tcpOK(t, a.ns, hostPort(b.v4, 8080)), true)

	t.Log("keep: revoking the policy keeps an established connection, new ones fail")
	n = agent2.count()
	e.setPolicies(denyB)
	agent2.waitEnforced(t, n+1)
	if !echo(conn, time.Second) {
		t.Error("keep: established connection was cut")
	}
	expect("keep: new a→b TCP 8080", tcpOK(t, a.ns, hostPort(b.v4, 8080)), false)
	conn.Close()

	e.checkOps(t, agent2)

	t.Log("SCTP over raw sockets (rawsctp_e2e_test.go: works without a kernel SCTP stack): an INIT answered by an ABORT got through")
	initsB, initsC := sctpResponder(t, b.ns), sctpResponder(t, c.ns)
	for _, ip := range []string{c.v4, c.v6} {
		expect("deny: a→c SCTP "+hostPort(ip, 7000)+" (c is not isolated)", sctpReached(t, a.ns, ip, 7000, sctpTimeout), true)
	}
	for _, ip := range []string{b.v4, b.v6} {
		expect("deny: a→b SCTP "+hostPort(ip, 7000), sctpReached(t, a.ns, ip, 7000, sctpTimeout), false)
	}
	if got := initsB.Load(); got != 0 {
		t.Errorf("deny: %d SCTP INITs reached b", got)
	}
	if initsC.Load() == 0 {
		t.Error("no SCTP INIT reached c's responder")
	}
	n = agent2.count()
	e.setPolicies(allowASCTP)
	agent2.waitEnforced(t, n+1)
	for _, ip := range []string{b.v4, b.v6} {
		expect("allow SCTP 7000: a→b SCTP "+hostPort(ip, 7000), sctpReached(t, a.ns, ip, 7000, sctpTimeout), true)
		expect("allow SCTP 7000: a→b SCTP "+hostPort(ip, 7001), sctpReached(t, a.ns, ip, 7001, sctpTimeout), false)
		expect("allow SCTP 7000: a→b TCP "+hostPort(ip, 8080)+" (SCTP is not TCP)", tcpOK(t, a.ns, hostPort(ip, 8080)), false)
	}

	t.Log("stop without --keep-on-exit: nothing is left")
	agent2.stop(t)
	e.checkClean(t)
}

// checkOps reads /readyz and /metrics inside the node netns and checks the
// slow path decided flows of both hooks.
func (e *env) checkOps(t *testing.T, a *agentProc) {
	t.Helper()
	get := func(path string) (int, string) { return e.get(t, a, path) }
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz = %d, want 200", code)
	}
	_, metrics := get("/metrics")
	for _, re := range []string{
		`xdpolicy_slowpath_verdicts_total\{action="allow",hook="ingress"\} [1-9]`,
		`xdpolicy_slowpath_verdicts_total\{action="deny",hook="ingress"\} [1-9]`,
		`xdpolicy_tcx_packets_total\{outcome="pass_cached"\} [1-9]`,
		`xdpolicy_generation [1-9]`,
	} {
		if !regexp.MustCompile(re).MatchString(metrics) {
			t.Errorf("/metrics does not match %s", re)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", metrics)
	}
}

// get fetches path from the agent's ops server inside the node netns.
func (e *env) get(t *testing.T, a *agentProc, path string) (int, string) {
	t.Helper()
	m := regexp.MustCompile(`ops server listening.*addr=(\S+)`).FindStringSubmatch(a.logs())
	if m == nil {
		t.Fatal("no ops server address in the log")
	}
	var c net.Conn
	inNetns(t, e.node, func() (err error) {
		// http.Transport dials on another goroutine (another netns):
		// dial here and speak HTTP/1.0 by hand.
		c, err = net.Dial("tcp", m[1])
		return err
	})
	defer c.Close()
	fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: x\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// checkClean verifies the agent removed everything it made.
func (e *env) checkClean(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(e.bpffs); err == nil {
		ents, _ := os.ReadDir(e.bpffs)
		var names []string
		for _, x := range ents {
			names = append(names, x.Name())
		}
		t.Errorf("pin directory %s still exists: %v", e.bpffs, names)
	}
	inNetns(t, e.node, func() error {
		if _, err := netlink.LinkByName("dp0"); err == nil {
			t.Error("dp0 still exists")
		}
		for _, p := range e.pods {
			l, err := netlink.LinkByName(p.host)
			if err != nil {
				return err
			}
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: at})
				if err != nil {
					t.Errorf("query %v programs of %s: %v", at, p.host, err)
				} else if len(res.Programs) > 0 {
					t.Errorf("%s still has %d %v program(s)", p.host, len(res.Programs), at)
				}
			}
		}
		return nil
	})
}
