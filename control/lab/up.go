package lab

import (
	"bytes"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/xdpprog"
)

// Options of Up.
type Options struct {
	Name    string
	Cluster []string // files or directories, as model.Load takes them
	Nodes   int
	// Binary is the xdpolicy executable run as `lab serve` in the pods and
	// `agent` in the nodes; default: this executable.
	Binary    string
	Agent     bool
	AgentArgs []string
	// APIServer starts a kube-apiserver for the lab (from the cache of
	// scripts/k8s/build.sh); Kubeconfig uses an existing one. Either
	// puts the lab's objects there and runs the agents on it.
	APIServer  bool
	Kubeconfig string
	// Warn receives warnings (e.g. no SCTP in this kernel).
	Warn io.Writer
}

// Up builds a lab. It fails before creating anything when the name is taken
// or the cluster cannot be laid out, and removes everything it created when
// it fails half-way.
func Up(o Options) (_ *State, err error) {
	if err := CheckName(o.Name); err != nil {
		return nil, err
	}
	if err := CheckHost(); err != nil {
		return nil, err
	}
	if o.Nodes < 1 || o.Nodes > 200 {
		return nil, fmt.Errorf("--nodes %d: want 1 to 200", o.Nodes)
	}
	if o.Warn == nil {
		o.Warn = io.Discard
	}
	if o.Binary == "" {
		if o.Binary, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	if len(o.Cluster) == 0 {
		return nil, errors.New("--cluster is required: a file or directory with the Namespaces and Pods")
	}
	res, err := model.Load(o.Cluster...)
	if err != nil {
		return nil, err
	}
	if res.Skipped != "" {
		fmt.Fprintln(o.Warn, "warning:", res.Skipped)
	}
	if len(res.Cluster.Policies) > 0 {
		fmt.Fprintf(o.Warn, "warning: ignoring %d NetworkPolicies in --cluster; add them with 'xdpolicy lab apply -f'\n", len(res.Cluster.Policies))
	}

	unlock, err := lockRoot()
	if err != nil {
		return nil, err
	}
	defer func() {
		if unlock != nil {
			unlock()
		}
	}()
	dir := Dir(o.Name)
	if _, err := os.Lstat(dir); err == nil {
		return nil, fmt.Errorf("lab %q already exists (%s); take it down first with 'xdpolicy lab down --name %s'", o.Name, dir, o.Name)
	}
	if left := existingNetns(o.Name + "_"); len(left) > 0 {
		return nil, fmt.Errorf("lab %q: network namespaces of an earlier lab are left over (%s); remove them with 'xdpolicy lab down --name %s'", o.Name, strings.Join(left, ", "), o.Name)
	}
	idx, err := freeIndex()
	if err != nil {
		return nil, err
	}
	s, err := plan(o, idx, res.Cluster)
	if err != nil {
		return nil, err
	}
	s.RawSCTP = !s.SCTP
	if s.RawSCTP && hasSCTP(res.Cluster) {
		fmt.Fprintln(o.Warn, "warning: this kernel has no SCTP stack (sctp module not loaded or not built): SCTP is served and probed over raw sockets (an INIT answered by an ABORT naming the pod)")
	}
	for _, d := range []string{dir, ClusterDir(dir), PoliciesDir(dir), filepath.Join(dir, "logs"), filepath.Join(dir, "run")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, err
		}
	}
	defer func() {
		if err != nil {
			if derr := down(s); derr != nil {
				err = fmt.Errorf("%w (and rolling back failed: %v)", err, derr)
			}
		}
	}()
	if err := s.save(); err != nil {
		return nil, err
	}
	unlock()
	unlock = nil

	if err := s.build(); err != nil {
		return nil, err
	}
	if err := writeCluster(dir, res.Cluster); err != nil {
		return nil, err
	}
	if o.APIServer || o.Kubeconfig != "" {
		if err := s.upAPI(o); err != nil {
			return nil, err
		}
	}
	if err := s.startServers(); err != nil {
		return nil, err
	}
	if o.Agent {
		if err := s.startAgents(o.AgentArgs); err != nil {
			return nil, err
		}
	}
	return s, s.save()
}

// freeIndex picks the smallest lab index no present lab uses.
func freeIndex() (int, error) {
	labs, err := List()
	if err != nil {
		return 0, err
	}
	used := map[int]bool{}
	for _, l := range labs {
		used[l.Index] = true
	}
	for i := 1; i < 250; i++ {
		if !used[i] {
			return i, nil
		}
	}
	return 0, errors.New("too many labs present (249); take some down")
}

func hasSCTP(c *model.Cluster) bool {
	for _, p := range c.Pods {
		for _, cp := range model.Ports(p) {
			if cp.Protocol == corev1.ProtocolSCTP {
				return true
			}
		}
	}
	return false
}

// plan lays the cluster out on the lab: nodes, pod addresses, names. It
// edits the cluster's pods (nodeName, addresses, annotations) into what the
// lab's cluster YAML says, and creates nothing.
func plan(o Options, idx int, c *model.Cluster) (*State, error) {
	s := &State{Name: o.Name, Index: idx, Dir: Dir(o.Name), Binary: o.Binary, Underlay: UnderlayNetns(o.Name), BPFFS: BPFFSRoot(o.Name), SCTP: sctpAvailable()}
	u4, u6 := underlay4(idx), underlay6(idx)
	for k := 1; k <= o.Nodes; k++ {
		s.Nodes = append(s.Nodes, Node{Name: NodeName(k), Netns: NodeNetns(o.Name, k), IPs: []netip.Addr{hostAddr(u4, k), hostAddr(u6, k)}})
	}
	s.External = Endpoint{Netns: ExternalNetns(o.Name), IPs: []netip.Addr{hostAddr(u4, externalHost), hostAddr(u6, externalHost)}}

	used := map[netip.Addr]string{}
	has6 := false
	var pods []*corev1.Pod
	for _, p := range c.Pods {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue // terminated: no namespace, left as given
		}
		if p.Spec.HostNetwork {
			return nil, fmt.Errorf("pod %s/%s: hostNetwork pods are not supported by the lab", p.Namespace, p.Name)
		}
		ips, err := model.PodIPs(p)
		if err != nil {
			return nil, fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		for _, a := range ips {
			id := p.Namespace + "/" + p.Name
			if prev, ok := used[a]; ok {
				return nil, fmt.Errorf("pods %s and %s both have address %s", prev, id, a)
			}
			if u4.Contains(a) || u6.Contains(a) || a == gateway4 || a == gateway6 || !a.IsGlobalUnicast() && !a.IsPrivate() {
				return nil, fmt.Errorf("pod %s: address %s collides with the lab's underlay or gateways (%s, %s, %s, %s)", id, a, u4, u6, gateway4, gateway6)
			}
			used[a] = id
			has6 = has6 || a.Is6()
		}
		pods = append(pods, p)
	}
	// Nodes: node-K stays node-K; other names map to nodes round-robin in
	// order of appearance (pods sharing a node stay together); pods without
	// a node go round-robin.
	rr := 0
	next := func() int { rr = rr%o.Nodes + 1; return rr }
	named := map[string]int{}
	alloc := map[int]int{} // node → next host number
	for _, p := range pods {
		k := 0
		if n, ok := strings.CutPrefix(p.Spec.NodeName, "node-"); ok {
			if v, err := strconv.Atoi(n); err == nil && v >= 1 && v <= o.Nodes {
				k = v
			}
		}
		if k == 0 && p.Spec.NodeName != "" {
			if v, ok := named[p.Spec.NodeName]; ok {
				k = v
			} else {
				k = next()
				named[p.Spec.NodeName] = k
			}
		}
		if k == 0 {
			k = next()
		}
		ips, _ := model.PodIPs(p)
		if len(ips) == 0 {
			for {
				alloc[k]++
				h := 99 + alloc[k]
				if h > 254 {
					return nil, fmt.Errorf("node-%d: no free pod address left in 10.244.%d.100-254", k, k)
				}
				a4 := netip.AddrFrom4([4]byte{10, 244, byte(k), byte(h)})
				a6 := netip.MustParseAddr(fmt.Sprintf("fd00:10:244:%d::%d", k, h))
				if _, taken := used[a4]; taken {
					continue
				}
				if _, taken := used[a6]; taken && has6 {
					continue
				}
				ips = []netip.Addr{a4}
				if has6 {
					ips = append(ips, a6)
				}
				break
			}
			for _, a := range ips {
				used[a] = p.Namespace + "/" + p.Name
			}
			p.Status.Phase = corev1.PodRunning
		}
		p.Spec.NodeName = NodeName(k)
		p.Status.PodIP = ips[0].String()
		p.Status.PodIPs = nil
		for _, a := range ips {
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: a.String()})
		}
		pod := Pod{Namespace: p.Namespace, Name: p.Name, Node: NodeName(k), Netns: PodNetns(o.Name, p.Namespace, p.Name), IPs: ips}
		sum := sha1.Sum([]byte(pod.ID()))
		pod.HostIface = "cali" + hex.EncodeToString(sum[:])[:11]
		for _, cp := range model.Ports(p) {
			pp := fmt.Sprintf("%d/%s", cp.Port, cp.Protocol)
			if !slices.Contains(pod.Ports, pp) {
				pod.Ports = append(pod.Ports, pp)
			}
		}
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		p.Annotations[AnnotationNetns] = pod.Netns
		p.Annotations[AnnotationHostIface] = pod.HostIface
		s.Pods = append(s.Pods, pod)
	}
	for _, p := range s.Pods {
		if len(p.Netns) > 200 {
			return nil, fmt.Errorf("pod %s: name too long for a network namespace name", p.ID())
		}
	}
	s.Netns = append(s.Netns, s.Underlay)
	for _, n := range s.Nodes {
		s.Netns = append(s.Netns, n.Netns)
	}
	s.Netns = append(s.Netns, s.External.Netns)
	for _, p := range s.Pods {
		s.Netns = append(s.Netns, p.Netns)
	}
	return s, nil
}

func (s *State) node(name string) *Node {
	for i := range s.Nodes {
		if s.Nodes[i].Name == name {
			return &s.Nodes[i]
		}
	}
	return nil
}

// via returns the node's underlay address of the family of a.
func (n *Node) via(a netip.Addr) netip.Addr {
	for _, u := range n.IPs {
		if u.Is4() == a.Is4() {
			return u
		}
	}
	return netip.Addr{}
}

func hostPrefix(a netip.Addr) string { return netip.PrefixFrom(a, a.BitLen()).String() }

// build creates the namespaces, links, addresses, routes and sysctls.
func (s *State) build() error {
	for _, ns := range s.Netns {
		if err := addNetns(ns); err != nil {
			return err
		}
	}
	// No duplicate address detection anywhere: addresses are usable at once.
	base := [][2]string{{"ipv6/conf/all/accept_dad", "0"}, {"ipv6/conf/default/accept_dad", "0"}}
	router := append(slices.Clone(base), [2]string{"ipv4/ip_forward", "1"}, [2]string{"ipv6/conf/all/forwarding", "1"})
	if err := parallel(s.Netns, func(ns string) error {
		if strings.HasSuffix(ns, "_underlay") || slices.ContainsFunc(s.Nodes, func(n Node) bool { return n.Netns == ns }) {
			return sysctls(ns, router)
		}
		return sysctls(ns, base)
	}); err != nil {
		return err
	}

	// Underlay: a bridge with a veth to each node and to external; the
	// far end is eth0 in the node's namespace.
	ul := []string{"link set lo up", "link add br0 type bridge", "link set br0 up"}
	for i, n := range s.Nodes {
		ul = append(ul, fmt.Sprintf("link add n%d type veth peer name eth0 netns %s", i+1, n.Netns),
			fmt.Sprintf("link set n%d master br0 up", i+1))
	}
	ul = append(ul, "link add ext type veth peer name eth0 netns "+s.External.Netns, "link set ext master br0 up")
	if err := ipBatch(s.Underlay, ul); err != nil {
		return err
	}

	ext4, ext6 := s.External.IPs[0], s.External.IPs[1]
	nodeCmds := map[string][]string{}
	for _, n := range s.Nodes {
		nodeCmds[n.Name] = []string{"link set lo up",
			fmt.Sprintf("addr add %s/24 dev eth0", n.IPs[0]),
			fmt.Sprintf("addr add %s/64 dev eth0 nodad", n.IPs[1]),
			"link set eth0 up",
			// A default route, as real nodes have: proxy ARP answers for
			// 169.254.1.1 only when it routes elsewhere.
			fmt.Sprintf("route add default via %s dev eth0", ext4),
			fmt.Sprintf("route add default via %s dev eth0", ext6),
		}
	}
	var extCmds = []string{"link set lo up",
		fmt.Sprintf("addr add %s/24 dev eth0", ext4),
		fmt.Sprintf("addr add %s/64 dev eth0 nodad", ext6),
		"link set eth0 up",
	}
	nodeSys := map[string][][2]string{}
	for _, p := range s.Pods {
		home := s.node(p.Node)
		c := nodeCmds[p.Node]
		c = append(c, fmt.Sprintf("link add %s type veth peer name eth0 netns %s", p.HostIface, p.Netns),
			fmt.Sprintf("link set %s up", p.HostIface),
			fmt.Sprintf("neigh add proxy %s dev %s", gateway6, p.HostIface))
		for _, a := range p.IPs {
			c = append(c, fmt.Sprintf("route add %s dev %s", hostPrefix(a), p.HostIface))
		}
		nodeCmds[p.Node] = c
		for _, n := range s.Nodes {
			if n.Name == p.Node {
				continue
			}
			for _, a := range p.IPs {
				nodeCmds[n.Name] = append(nodeCmds[n.Name], fmt.Sprintf("route add %s via %s dev eth0", hostPrefix(a), home.via(a)))
			}
		}
		for _, a := range p.IPs {
			extCmds = append(extCmds, fmt.Sprintf("route add %s via %s dev eth0", hostPrefix(a), home.via(a)))
		}
		nodeSys[p.Node] = append(nodeSys[p.Node],
			[2]string{"ipv4/conf/" + p.HostIface + "/proxy_arp", "1"},
			[2]string{"ipv4/neigh/" + p.HostIface + "/proxy_delay", "0"},
			[2]string{"ipv6/conf/" + p.HostIface + "/proxy_ndp", "1"},
			[2]string{"ipv6/neigh/" + p.HostIface + "/proxy_delay", "0"})
	}
	if err := parallel(s.Nodes, func(n Node) error {
		if err := ipBatch(n.Netns, nodeCmds[n.Name]); err != nil {
			return err
		}
		return sysctls(n.Netns, nodeSys[n.Name])
	}); err != nil {
		return err
	}
	if err := ipBatch(s.External.Netns, extCmds); err != nil {
		return err
	}
	return parallel(s.Pods, func(p Pod) error {
		c := []string{"link set lo up", "link set eth0 up"}
		for _, a := range p.IPs {
			if a.Is4() {
				c = append(c, fmt.Sprintf("addr add %s dev eth0", hostPrefix(a)))
			} else {
				c = append(c, fmt.Sprintf("addr add %s dev eth0 nodad", hostPrefix(a)))
			}
		}
		c = append(c, fmt.Sprintf("route add default via %s dev eth0 onlink", gateway4),
			fmt.Sprintf("route add default via %s dev eth0 onlink", gateway6))
		return ipBatch(p.Netns, c)
	})
}

// parallel runs fn for every item, a few at a time, and returns the first
// error.
func parallel[T any](items []T, fn func(T) error) error {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	errs := make([]error, len(items))
	for i, it := range items {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = fn(it)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// writeCluster writes the lab's cluster YAML: the namespaces and pods as
// given, with the nodes and addresses the lab used.
func writeCluster(dir string, c *model.Cluster) error {
	var buf bytes.Buffer
	for _, ns := range c.Namespaces {
		ns.APIVersion, ns.Kind = "v1", "Namespace"
		if err := appendYAML(&buf, ns); err != nil {
			return err
		}
	}
	for _, p := range c.Pods {
		p.APIVersion, p.Kind = "v1", "Pod"
		if err := appendYAML(&buf, p); err != nil {
			return err
		}
	}
	return writeAtomic(clusterFile(dir), buf.Bytes())
}

func appendYAML(buf *bytes.Buffer, obj any) error {
	b, err := yaml.Marshal(obj)
	if err != nil {
		return err
	}
	if buf.Len() > 0 {
		buf.WriteString("---\n")
	}
	buf.Write(b)
	return nil
}

// execIn is the command running bin inside a named namespace in its own
// session, detached from this process.
//
// nsenter, not `ip netns exec`: the latter remounts /sys in a mount
// namespace of its own, so an agent would pin into a private bpffs that dies
// with it and --keep-on-exit would keep nothing.
func execIn(netns, bin string, args ...string) *exec.Cmd {
	cmd := exec.Command("nsenter", append([]string{"--net=" + filepath.Join("/run/netns", netns), "--", bin}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	return cmd
}

// start runs the xdpolicy binary inside a named namespace in its own
// session, detached from this process, logging to log.
func (s *State) start(netns, log string, args ...string) (*exec.Cmd, error) {
	f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := execIn(netns, s.Binary, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s in %s: %w", strings.Join(args[:min(2, len(args))], " "), netns, err)
	}
	return cmd, nil
}

func serverPidfile(dir string, p *Pod) string {
	return filepath.Join(dir, "run", "server-"+p.Namespace+"_"+p.Name+".pid")
}

// startServers runs `xdpolicy lab serve` in every pod with ports (in every
// pod when SCTP goes over raw sockets: the server then also stands in for
// the missing SCTP stack, which answers INITs to ports nobody serves) and
// waits until each has bound its sockets (it writes its pidfile then).
func (s *State) startServers() error {
	type started struct {
		pod  *Pod
		cmd  *exec.Cmd
		done chan struct{}
	}
	var all []started
	for i := range s.Pods {
		p := &s.Pods[i]
		if len(p.Ports) == 0 && !s.RawSCTP {
			continue // the kernel refuses every TCP and UDP port for it
		}
		log := filepath.Join(s.Dir, "logs", "server-"+p.Namespace+"_"+p.Name+".log")
		args := []string{"lab", "serve", "--pod", p.ID(), "--pidfile", serverPidfile(s.Dir, p)}
		for _, pp := range p.Ports {
			args = append(args, "--port", pp)
		}
		cmd, err := s.start(p.Netns, log, args...)
		if err != nil {
			return err
		}
		s.Procs = append(s.Procs, Process{Role: "server", Of: p.ID(), PID: cmd.Process.Pid, Log: log})
		st := started{p, cmd, make(chan struct{})}
		go func() { cmd.Wait(); close(st.done) }()
		all = append(all, st)
	}
	if err := s.save(); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, st := range all {
		for {
			if _, err := os.Stat(serverPidfile(s.Dir, st.pod)); err == nil {
				break
			}
			select {
			case <-st.done:
				return fmt.Errorf("server of pod %s exited: %s", st.pod.ID(), tail(s.Procs[slices.IndexFunc(s.Procs, func(p Process) bool { return p.Of == st.pod.ID() })].Log))
			case <-time.After(10 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("server of pod %s not ready after 10s", st.pod.ID())
			}
		}
	}
	return nil
}

// startAgents runs the agent in every node namespace and checks that none
// exits at once.
func (s *State) startAgents(extra []string) error {
	type started struct {
		node string
		log  string
		done chan struct{}
	}
	var all []started
	for i, n := range s.Nodes {
		s.Nodes[i].API = filepath.Join(s.Dir, n.Name+".sock")
		extra := append([]string{"--api-socket", s.Nodes[i].API}, extra...)
		bpffs := filepath.Join(s.BPFFS, n.Name)
		if err := xdpprog.PreparePinDir(bpffs); err != nil {
			return err
		}
		log := filepath.Join(s.Dir, "logs", "agent-"+n.Name+".log")
		args := append(append([]string{"agent"}, s.sourceArgs()...), append([]string{"--node", n.Name, "--bpffs-dir", bpffs}, extra...)...)
		cmd, err := s.start(n.Netns, log, args...)
		if err != nil {
			return err
		}
		s.Procs = append(s.Procs, Process{Role: "agent", Of: n.Name, PID: cmd.Process.Pid, Log: log})
		st := started{n.Name, log, make(chan struct{})}
		go func() { cmd.Wait(); close(st.done) }()
		all = append(all, st)
	}
	if err := s.save(); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)
	for _, st := range all {
		select {
		case <-st.done:
			return fmt.Errorf("agent on %s exited at once; its log said: %s", st.node, tail(st.log))
		default:
		}
	}
	return nil
}

// tail returns the last lines of a log file.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}

// Describe prints what a lab is made of.
func Describe(w io.Writer, s *State) {
	fmt.Fprintf(w, "lab %s (index %d)\n", s.Name, s.Index)
	fmt.Fprintf(w, "  underlay  netns %s, %s and %s\n", s.Underlay, underlay4(s.Index), underlay6(s.Index))
	for _, n := range s.Nodes {
		fmt.Fprintf(w, "  node      %-10s netns %-28s %s\n", n.Name, n.Netns, joinAddrs(n.IPs))
	}
	fmt.Fprintf(w, "  external  %-10s netns %-28s %s\n", "", s.External.Netns, joinAddrs(s.External.IPs))
	for _, p := range s.Pods {
		ports := strings.Join(p.Ports, ",")
		if ports == "" {
			ports = "no ports"
		}
		fmt.Fprintf(w, "  pod       %-24s %-7s %-30s veth %s netns %s (%s)\n", p.ID(), p.Node, joinAddrs(p.IPs), p.HostIface, p.Netns, ports)
	}
	fmt.Fprintf(w, "  dir       %s (cluster %s, policies %s)\n", s.Dir, ClusterDir(s.Dir), PoliciesDir(s.Dir))
	for _, pr := range s.Procs {
		if pr.Role == "agent" {
			fmt.Fprintf(w, "  agent     %-10s pid %-7d log %s\n", pr.Of, pr.PID, pr.Log)
		}
	}
	fmt.Fprintf(w, "  logs      %s\n", filepath.Join(s.Dir, "logs"))
	if s.Kubeconfig != "" {
		fmt.Fprintf(w, "  kubeconfig %s (kubectl --kubeconfig %s apply -f POLICY.yaml)\n", s.Kubeconfig, s.Kubeconfig)
	}
}

func joinAddrs(as []netip.Addr) string {
	var out []string
	for _, a := range as {
		out = append(out, a.String())
	}
	return strings.Join(out, " ")
}
