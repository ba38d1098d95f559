package lab_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/xdpolicy/xdpolicy/bench/nft"
	"github.com/xdpolicy/xdpolicy/control/lab"
	"github.com/xdpolicy/xdpolicy/control/query"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
	"github.com/xdpolicy/xdpolicy/dataplane/worker"
)

// BenchmarkConnectRequestClose is netperf's TCP_CRR between two pods of a
// lab: crrClients clients in the client pod's namespace, each in a loop of
// connect → write a request → read the reply until the server closes →
// close, every connection from a source port that client has not used
// before in that lab (so every connection is a new flow, and every SYN
// meets an empty flow cache), for crrWindow per dataplane and iteration:
//
//   - none: agents off, nothing enforced;
//   - nft: agents off, the same policies compiled by bench/nft into every
//     node's forward hook (per node: that node's pods), with conntrack
//     (`ct state established,related accept` first);
//   - xdpolicy: the agents, enforcing the same policies: each SYN misses
//     the tcx cache on the server's host veth, is punted and decided by a
//     worker, the rest of the connection stays in tcx.
//
// The policy isolates the servers for ingress and admits the client on
// TCP 8080-8087; one sub-benchmark per placement (server on the client's
// node, or on the other node). It reports connections/s and the connect
// time (connect() until the handshake completed) p50/p99 of each
// dataplane over all iterations, failed connections, the ratios to
// nftables and to none, and the punts per xdpolicy connection (≥ 1:
// every SYN went through the slow path). Speed is reported, not asserted.
//
// Knobs for tuning experiments (both benchmarks of this kind):
// XDPOLICY_BENCH_AGENT_SCHED (see schedAgents) and
// XDPOLICY_BENCH_AGENT_ARGS (see upAgentLab); XDPOLICY_CRR_PROFILE=DIR
// saves a CPU profile of node-1's agent over each xdpolicy window.
func BenchmarkConnectRequestClose(b *testing.B) {
	needAgentLab(b)
	off, on, nftOn, nftOff := baselineLabs(b, "crr", crrCluster(b), crrPolicies)

	for _, s := range []*lab.State{off, on} {
		for _, id := range []string{"crr/server", "crr/far"} {
			srv, err := startCRRServer(labPod(b, s, id))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(srv.Close)
		}
	}
	ports := map[*lab.State]*crrPorts{off: {}, on: {}}
	for _, pl := range []struct{ name, server string }{{"same-node", "crr/server"}, {"cross-node", "crr/far"}} {
		b.Run(pl.name, func(b *testing.B) {
			client := labPod(b, off, "crr/client")
			var none, nf, xdp crrStats
			var punts float64
			for range b.N {
				none.add(runCRR(client, labPod(b, off, pl.server), ports[off]))
				nftOn()
				r := runCRR(client, labPod(b, off, pl.server), ports[off])
				nftOff()
				nf.add(r)
				p0 := punted(b, on)
				prof := profileAgent(b, on, pl.name)
				r = runCRR(labPod(b, on, "crr/client"), labPod(b, on, pl.server), ports[on])
				prof()
				punts += punted(b, on) - p0
				xdp.add(r)
			}
			for _, v := range []struct {
				name string
				st   *crrStats
			}{{"none", &none}, {"nft", &nf}, {"xdpolicy", &xdp}} {
				if v.st.conns == 0 {
					b.Fatalf("%s: no connection completed (%d failed: %s)", v.name, v.st.failed, v.st.firstErr)
				}
				b.ReportMetric(v.st.rate(), v.name+"-conn/s")
				b.ReportMetric(v.st.pct(50), v.name+"-p50-us")
				b.ReportMetric(v.st.pct(99), v.name+"-p99-us")
				b.ReportMetric(float64(v.st.failed), v.name+"-failed")
				if v.st.failed > 0 {
					b.Logf("%s: %d connections failed, first: %s", v.name, v.st.failed, v.st.firstErr)
				}
			}
			if ports[off].wrapped.Load() || ports[on].wrapped.Load() {
				b.Logf("source ports wrapped around: later connections reused 5-tuples of earlier ones (cached flows for xdpolicy)")
			}
			b.ReportMetric(ratio(xdp.rate(), nf.rate()), "x-nftables")
			b.ReportMetric(ratio(xdp.rate(), none.rate()), "x-none")
			b.ReportMetric(punts/float64(xdp.conns+xdp.failed), "punts/conn")
			if punts < float64(xdp.conns) {
				b.Errorf("%v punts for %d xdpolicy connections: some SYNs did not go through the slow path", punts, xdp.conns)
			}
		})
	}
}

const (
	// crrClients is the number of concurrent clients; client i connects
	// to port crrPort+i.
	crrClients = 8
	crrPort    = 8080
	// crrWindow is how long each dataplane is measured per iteration.
	crrWindow = 2 * time.Second
	// crrTimeout bounds each step of a connection (a lost SYN is
	// retransmitted after 1 s, so a connect can take that long).
	crrTimeout = 3 * time.Second
)

var (
	crrRequest = []byte("GET / HTTP/1.0\r\nHost: server\r\n\r\n")
	crrReply   = []byte("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
)

// crrCluster: client and server on node-1, far on node-2; the servers
// serve 81/TCP through the lab's server (to check enforcement: the policy
// does not admit it) and 8080-8087 through startCRRServer.
func crrCluster(b *testing.B) string {
	ns := &corev1.Namespace{}
	ns.APIVersion, ns.Kind, ns.Name = "v1", "Namespace", "crr"
	objs := []any{ns}
	for _, p := range []struct{ name, role, node, ip string }{
		{"client", "client", "node-1", "10.246.1.10"},
		{"server", "server", "node-1", "10.246.1.11"},
		{"far", "server", "node-2", "10.246.2.12"},
	} {
		pod := &corev1.Pod{}
		pod.APIVersion, pod.Kind = "v1", "Pod"
		pod.Namespace, pod.Name, pod.Labels = "crr", p.name, map[string]string{"app": p.name, "role": p.role}
		pod.Spec.NodeName = p.node
		pod.Spec.Containers = []corev1.Container{{Name: "c"}}
		if p.role == "server" {
			pod.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 81, Protocol: corev1.ProtocolTCP}}
		}
		pod.Status.Phase = corev1.PodRunning
		pod.Status.PodIP = p.ip
		objs = append(objs, pod)
	}
	return objectsFile(b, objs...)
}

// objectsFile writes objects as multi-document YAML into a new file.
func objectsFile(tb testing.TB, objs ...any) string {
	tb.Helper()
	var buf bytes.Buffer
	for _, o := range objs {
		y, err := yaml.Marshal(o)
		if err != nil {
			tb.Fatal(err)
		}
		buf.WriteString("---\n")
		buf.Write(y)
	}
	return writeFile(tb, buf.String())
}

// crrPolicies isolate the servers for ingress and admit the client on
// the benchmark's ports only.
const crrPolicies = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: servers-from-client, namespace: crr}
spec:
  podSelector: {matchLabels: {role: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: TCP, port: 8080, endPort: 8087}]
`

// labPod returns the pod "namespace/name" of lab s.
func labPod(tb testing.TB, s *lab.State, id string) *lab.Pod {
	tb.Helper()
	for i := range s.Pods {
		if s.Pods[i].ID() == id {
			return &s.Pods[i]
		}
	}
	tb.Fatalf("lab %s has no pod %s", s.Name, id)
	return nil
}

// waitProbed probes port/TCP between all pods of s until the observation
// matches the prediction (the port is one the policies deny), or fails
// with what after settle.
func waitProbed(tb testing.TB, s *lab.State, port uint16, what string) {
	tb.Helper()
	deadline := time.Now().Add(settle)
	for {
		r, err := lab.Probe(s, lab.ProbeOptions{Ports: []query.Port{{Port: port, Proto: ruleset.TCP}}, Timeout: probeTimeout})
		if err != nil {
			tb.Fatal(err)
		}
		d := r.Diff()
		if len(d) == 0 {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("lab %s: %s after %v: %v", s.Name, what, settle, d)
		}
	}
}

// nftScripts renders the lab's policies with bench/nft for each node and
// returns functions that load them into every node's namespace and
// remove them again.
func nftScripts(tb testing.TB, s *lab.State) (load, unload func()) {
	tb.Helper()
	c, err := s.Cluster()
	if err != nil {
		tb.Fatal(err)
	}
	scripts := map[string]string{}
	for _, n := range s.Nodes {
		script, _, err := nft.RenderNode(c, n.Name)
		if err != nil {
			tb.Fatal(err)
		}
		scripts[n.Netns] = script
	}
	loaded := false
	unload = func() {
		if !loaded {
			return
		}
		for ns := range scripts {
			if err := nftIn(ns, "delete table inet "+nft.Table+"\n"); err != nil {
				tb.Fatal(err)
			}
		}
		loaded = false
	}
	load = func() {
		for ns, script := range scripts {
			if err := nftIn(ns, script); err != nil {
				tb.Fatal(err)
			}
		}
		loaded = true
	}
	tb.Cleanup(unload)
	return load, unload
}

// nftIn runs an nft script inside a named network namespace.
func nftIn(netns, script string) error {
	cmd := exec.Command("ip", "netns", "exec", netns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %w: %s", netns, err, bytes.TrimSpace(out))
	}
	return nil
}

// agentMetric sums the samples of a Prometheus metric (all label sets) of
// every agent of lab s, read from their /metrics.
func agentMetric(tb testing.TB, s *lab.State, name string) float64 {
	tb.Helper()
	var sum float64
	for _, n := range s.Nodes {
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", n.API)
		}}}
		resp, err := hc.Get("http://agent/metrics")
		if err != nil {
			tb.Fatalf("agent of %s: %v", n.Name, err)
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			l := sc.Text()
			if !strings.HasPrefix(l, name) || len(l) > len(name) && l[len(name)] != ' ' && l[len(name)] != '{' {
				continue
			}
			f := strings.Fields(l)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err == nil {
				sum += v
			}
		}
		resp.Body.Close()
	}
	return sum
}

// profileAgent starts a CPU profile of node-1's agent over crrWindow when
// XDPOLICY_CRR_PROFILE names a directory, and returns the function that
// waits for it and writes it there (agent-<what>.pprof).
func profileAgent(tb testing.TB, s *lab.State, what string) func() {
	dir := os.Getenv("XDPOLICY_CRR_PROFILE")
	if dir == "" {
		return func() {}
	}
	done := make(chan error, 1)
	go func() {
		hc := &http.Client{Timeout: crrWindow + 10*time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", s.Nodes[0].API)
		}}}
		resp, err := hc.Get(fmt.Sprintf("http://agent/debug/pprof/profile?seconds=%d", int(crrWindow.Seconds())))
		if err != nil {
			done <- err
			return
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, "agent-"+what+".pprof"), data, 0o644)
		}
		done <- err
	}()
	return func() {
		if err := <-done; err != nil {
			tb.Errorf("agent profile: %v", err)
		}
	}
}

func punted(tb testing.TB, s *lab.State) float64 {
	return agentMetric(tb, s, "xdpolicy_punted_frames_total")
}

// crrServer answers crrReply on ports crrPort..+crrClients-1 of a pod:
// accept, read the request, write the reply, close (so the server closes
// first and keeps the TIME_WAIT, as HTTP/1.0 servers do).
type crrServer struct {
	ls []net.Listener
	wg sync.WaitGroup
}

func startCRRServer(p *lab.Pod) (*crrServer, error) {
	srv := &crrServer{}
	var err error
	if rerr := lab.RunIn(p.Netns, func() {
		for i := range crrClients {
			var l net.Listener
			if l, err = net.Listen("tcp4", fmt.Sprintf(":%d", crrPort+i)); err != nil {
				return
			}
			srv.ls = append(srv.ls, l)
		}
	}); rerr != nil {
		err = rerr
	}
	if err != nil {
		srv.Close()
		return nil, err
	}
	for _, l := range srv.ls {
		srv.wg.Add(1)
		go func() {
			defer srv.wg.Done()
			buf := make([]byte, 512)
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.SetDeadline(time.Now().Add(crrTimeout))
				if n, err := c.Read(buf); err == nil && bytes.HasSuffix(buf[:n], []byte("\r\n\r\n")) {
					c.Write(crrReply)
				}
				c.Close()
			}
		}()
	}
	return srv, nil
}

func (s *crrServer) Close() {
	for _, l := range s.ls {
		l.Close()
	}
	s.wg.Wait()
}

// crrPorts hands out source ports per client: client i connects to its
// own server port, so its 5-tuples differ from every other client's and
// it needs only to never repeat its own source port.
type crrPorts struct {
	next    [crrClients]uint32
	wrapped atomic.Bool
}

const crrFirstPort, crrLastPort = 1024, 65535

func (p *crrPorts) take(client int) int {
	n := p.next[client]
	p.next[client]++
	if n > crrLastPort-crrFirstPort {
		p.wrapped.Store(true)
	}
	return crrFirstPort + int(n%(crrLastPort-crrFirstPort+1))
}

// crrRun is one window of one dataplane.
type crrRun struct {
	conns, failed int
	elapsed       time.Duration
	connect       []time.Duration
	firstErr      string
}

// runCRR runs crrClients clients in the client pod for crrWindow against
// the server pod. Each client is a thread in the client's namespace making
// blocking-style system calls (non-blocking sockets and poll), so that the
// connect time is the kernel's, not the Go scheduler's.
func runCRR(client, server *lab.Pod, ports *crrPorts) crrRun {
	dst := server.IPs[0].As4()
	var mu sync.Mutex
	var all crrRun
	var wg sync.WaitGroup
	start := time.Now()
	until := start.Add(crrWindow)
	for i := range crrClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var r crrRun
			err := lab.RunIn(client.Netns, func() {
				buf := make([]byte, 512)
				sa := &unix.SockaddrInet4{Port: crrPort + i, Addr: dst}
				for time.Now().Before(until) {
					d, err := crrOnce(sa, ports.take(i), buf)
					if err != nil {
						r.failed++
						if r.firstErr == "" {
							r.firstErr = err.Error()
						}
						continue
					}
					r.conns++
					r.connect = append(r.connect, d)
				}
			})
			if err != nil && r.firstErr == "" {
				r.failed++
				r.firstErr = err.Error()
			}
			mu.Lock()
			all.conns += r.conns
			all.failed += r.failed
			all.connect = append(all.connect, r.connect...)
			if all.firstErr == "" {
				all.firstErr = r.firstErr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	all.elapsed = time.Since(start)
	return all
}

// crrOnce makes one connection from source port sport: connect, write the
// request, read the reply to the end, close. It returns the connect time.
func crrOnce(sa *unix.SockaddrInet4, sport int, buf []byte) (time.Duration, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	// Other clients use the same source ports towards other server ports.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return 0, err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: sport}); err != nil {
		return 0, fmt.Errorf("bind :%d: %w", sport, err)
	}
	t0 := time.Now()
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return 0, fmt.Errorf("connect: %w", err)
	}
	if err := waitFD(fd, unix.POLLOUT); err != nil {
		return 0, fmt.Errorf("connect: %w", err)
	}
	if e, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || e != 0 {
		return 0, fmt.Errorf("connect: %w", errors.Join(err, unix.Errno(e)))
	}
	d := time.Since(t0)
	if n, err := unix.Write(fd, crrRequest); err != nil || n != len(crrRequest) {
		return 0, fmt.Errorf("write: %d bytes, %v", n, err)
	}
	got := 0
	for {
		if err := waitFD(fd, unix.POLLIN); err != nil {
			return 0, fmt.Errorf("read: %w", err)
		}
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("read: %w", err)
		}
		if n == 0 {
			break
		}
		got += n
	}
	if got != len(crrReply) {
		return 0, fmt.Errorf("reply of %d bytes, want %d", got, len(crrReply))
	}
	return d, nil
}

// waitFD polls fd for events (up to crrTimeout).
func waitFD(fd int, events int16) error {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: events}}
	deadline := time.Now().Add(crrTimeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return errors.New("timeout")
		}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
	}
}

// crrStats accumulates a dataplane's windows over the iterations.
type crrStats struct {
	conns, failed int
	elapsed       time.Duration
	connect       []time.Duration
	firstErr      string
}

func (s *crrStats) add(r crrRun) {
	s.conns += r.conns
	s.failed += r.failed
	s.elapsed += r.elapsed
	s.connect = append(s.connect, r.connect...)
	if s.firstErr == "" {
		s.firstErr = r.firstErr
	}
}

func (s *crrStats) rate() float64 {
	if s.elapsed <= 0 {
		return 0
	}
	return float64(s.conns) / s.elapsed.Seconds()
}

func (s *crrStats) pct(p float64) float64 { return pctUS(s.connect, p) }

// pctUS is the p-th percentile (nearest rank) of d in microseconds.
func pctUS(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return float64(s[max(0, min(i, len(s)-1))].Nanoseconds()) / 1e3
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// schedAgents applies XDPOLICY_BENCH_AGENT_SCHED to every thread of lab s's
// agents, to try scheduling policies without rebuilding: "autogroup:N"
// (the nice value of the agent's autogroup), "nice:N"
// (setpriority), "slice:NS" (sched_setattr: SCHED_OTHER with a slice of NS
// nanoseconds) or "fifo:P" / "rr:P" (chrt); "workers-KIND:V" applies
// KIND:V to the workers' threads only (named worker.ThreadName). Unset:
// nothing changes.
func schedAgents(tb testing.TB, s *lab.State) {
	tb.Helper()
	spec := os.Getenv("XDPOLICY_BENCH_AGENT_SCHED")
	if spec == "" {
		return
	}
	kind, val, _ := strings.Cut(spec, ":")
	kind, workersOnly := strings.CutPrefix(kind, "workers-")
	n, err := strconv.Atoi(val)
	if err != nil {
		tb.Fatalf("XDPOLICY_BENCH_AGENT_SCHED=%q: want [workers-]nice:N, [workers-]slice:NS, [workers-]fifo:P, [workers-]rr:P or autogroup:N", spec)
	}
	for _, p := range s.Procs {
		if p.Role != "agent" {
			continue
		}
		if kind == "autogroup" {
			// The agent runs in a session of its own, so in an autogroup
			// of its own: its threads compete with other sessions as one
			// entity of that weight.
			if err := os.WriteFile(fmt.Sprintf("/proc/%d/autogroup", p.PID), []byte(val), 0o644); err != nil {
				tb.Fatal(err)
			}
			tb.Logf("agent %s: autogroup nice %s", p.Of, val)
			continue
		}
		tids, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.PID))
		if err != nil {
			tb.Fatal(err)
		}
		set := 0
		for _, t := range tids {
			tid, _ := strconv.Atoi(t.Name())
			if workersOnly {
				comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/comm", p.PID, tid))
				if strings.TrimSpace(string(comm)) != worker.ThreadName {
					continue
				}
			}
			set++
			switch kind {
			case "nice":
				err = unix.Setpriority(unix.PRIO_PROCESS, tid, n)
			case "slice":
				// SCHED_OTHER with a requested slice (EEVDF, Linux 6.12+):
				// a shorter slice than the running task's may preempt it
				// on wakeup.
				err = unix.SchedSetAttr(tid, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_NORMAL, Runtime: uint64(n)}, 0)
			case "fifo", "rr":
				var out []byte
				if out, err = exec.Command("chrt", "--"+kind, "-p", val, t.Name()).CombinedOutput(); err != nil {
					err = fmt.Errorf("%w: %s", err, out)
				}
			default:
				tb.Fatalf("XDPOLICY_BENCH_AGENT_SCHED=%q: want [workers-]nice:N, [workers-]slice:NS, [workers-]fifo:P, [workers-]rr:P or autogroup:N", spec)
			}
			if err != nil {
				tb.Fatalf("agent thread %d: %v", tid, err)
			}
		}
		tb.Logf("agent %s: %d of %d threads set to %s", p.Of, set, len(tids), spec)
	}
}

// upAgentLab is upLab with the agents, given extra agent arguments from
// XDPOLICY_BENCH_AGENT_ARGS (space-separated, e.g. "--workers 1"), to try
// agent settings in the benchmarks without editing them.
func upAgentLab(tb testing.TB, name, cluster string) *lab.State {
	tb.Helper()
	args := strings.Fields(os.Getenv("XDPOLICY_BENCH_AGENT_ARGS"))
	if len(args) == 0 {
		return upLab(tb, name, cluster, true)
	}
	tb.Cleanup(func() {
		if err := lab.Down(name); err != nil {
			tb.Errorf("cleanup: lab down %s: %v", name, err)
		}
	})
	var warn bytes.Buffer
	s, err := lab.Up(lab.Options{Name: name, Cluster: []string{cluster}, Nodes: 2, Binary: binary, Agent: true, AgentArgs: args, Warn: &warn})
	if err != nil {
		tb.Fatalf("lab up %s (agent %s): %v", name, strings.Join(args, " "), err)
	}
	tb.Logf("lab %s: agents run with %s", name, strings.Join(args, " "))
	return s
}

// baselineLabs brings up the cluster twice, without agents (for no
// enforcement and the nftables baseline) and with them, applies the
// policies to both, and checks that the agents and nftables each enforce
// them before anything is measured. nftOn and nftOff load and remove the
// nftables ruleset in the agentless lab.
func baselineLabs(b *testing.B, short, cluster, policies string) (off, on *lab.State, nftOn, nftOff func()) {
	b.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		b.Skip("skipping: the nftables baseline needs the nft command")
	}
	off = upLab(b, labName(b, short+"-off"), cluster, false)
	on = upAgentLab(b, labName(b, short+"-on"), cluster)
	pols := writeFile(b, policies)
	for _, s := range []*lab.State{off, on} {
		if _, err := lab.Apply(s.Dir, []string{pols}); err != nil {
			b.Fatal(err)
		}
	}
	waitProbed(b, on, 81, "the agents do not enforce the policies")
	schedAgents(b, on)
	nftOn, nftOff = nftScripts(b, off)
	// nftables enforces exactly what the prediction says, once.
	nftOn()
	waitProbed(b, off, 81, "nftables does not enforce the policies")
	nftOff()
	return off, on, nftOn, nftOff
}
