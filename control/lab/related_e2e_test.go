package lab_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdpolicy/xdpolicy/control/lab"
	"github.com/xdpolicy/xdpolicy/control/query"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// relatedPolicies isolate the client a for ingress (nothing may enter it)
// and let a reach the servers on UDP 5000 (a listener), UDP 5003 (closed:
// the server answers port unreachable) and TCP 5001 (bulk). UDP 5002 has a
// listener and is denied.
const relatedPolicies = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: rel, name: a-isolated}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: rel, name: servers-from-a}
spec:
  podSelector: {matchLabels: {role: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: a}}}]
    ports:
    - {protocol: UDP, port: 5000}
    - {protocol: UDP, port: 5003}
    - {protocol: TCP, port: 5001}
`

// TestBeyondFirstPacket checks, on the wire, over IPv4 and IPv6, to a
// server on the client's node and on the other node, what is not the first
// packet of a flow: fragmented UDP datagrams to an allowed port arrive
// whole and to a denied port not at all; the ICMP port unreachable of a
// closed allowed port reaches the isolated client (ECONNREFUSED); a
// traceroute-style TTL gets its time exceeded back; and a bulk TCP transfer
// through a lower-MTU hop completes (path-MTU discovery: fragmentation
// needed / packet too big reach the client). Across nodes those errors come
// from the other node's address, which no policy allows into a: only their
// relation to a's allowed flow lets them in.
func TestBeyondFirstPacket(t *testing.T) {
	needAgentLab(t)
	t.Parallel()
	s, pods := relatedLab(t, "rel")
	a := pods["a"]
	for _, fam := range []int{4, 6} {
		for _, dst := range []lab.Pod{pods["b"], pods["c"]} {
			where := "same node"
			if dst.Node != a.Node {
				where = "across nodes"
			}
			t.Run(fmt.Sprintf("IPv%d %s", fam, where), func(t *testing.T) {
				to := podAddr(t, dst, fam)
				t.Run("fragmented UDP", func(t *testing.T) {
					allowed := listenUDP(t, dst, to, 5000)
					denied := listenUDP(t, dst, to, 5002)
					if got := sendUntilReceived(t, a, to, 5000, 4000, allowed); got != 4000 {
						t.Errorf("a 4000-byte datagram to the allowed port arrived as %d bytes", got)
					}
					if got := sendUntilReceived(t, a, to, 5002, 4000, denied); got != 0 {
						t.Errorf("a 4000-byte datagram to the denied port arrived (%d bytes)", got)
					}
					if got := sendUntilReceived(t, a, to, 5002, 100, denied); got != 0 {
						t.Errorf("a 100-byte datagram to the denied port arrived (%d bytes)", got)
					}
				})
				t.Run("port unreachable", func(t *testing.T) {
					if err := udpError(t, a, to, 5003, 0); !errors.Is(err, syscall.ECONNREFUSED) {
						t.Errorf("UDP to a closed allowed port: %v, want ECONNREFUSED", err)
					}
				})
				t.Run("time exceeded", func(t *testing.T) {
					// One hop to a server on a's node, two across: the
					// datagram dies at the server's node.
					ttl := 1
					if dst.Node != a.Node {
						ttl = 2
					}
					if err := udpError(t, a, to, 5000, ttl); !errors.Is(err, syscall.EHOSTUNREACH) {
						t.Errorf("UDP with TTL %d: %v, want EHOSTUNREACH (time exceeded)", ttl, err)
					}
				})
				t.Run("path MTU", func(t *testing.T) {
					// The server's host veth becomes a 1280-byte hop.
					setMTU(t, s.Nodes, dst, 1280)
					defer setMTU(t, s.Nodes, dst, 1500)
					if err := bulkTCP(t, a, dst, to, 5001, 4<<20); err != nil {
						t.Errorf("bulk TCP through a 1280-byte hop: %v", err)
					}
				})
			})
		}
	}
	// Across nodes, the errors came from node-2's address: they were let in
	// as related, by the kernel program or a worker.
	var node1 lab.Node
	for _, n := range s.Nodes {
		if n.Name == a.Node {
			node1 = n
		}
	}
	_, metrics := agentBody(t, node1.API, "/metrics")
	if metricValue(metrics, `xdpolicy_tcx_packets_total{outcome="pass_related"}`)+metricValue(metrics, "xdpolicy_slowpath_related_total") == 0 {
		t.Errorf("node-1's agent let no ICMP error in as related:\n%s", grepLines(metrics, "related"))
	}
}

// relatedLab brings up testdata/related.yaml with agents, enforcing
// relatedPolicies, and returns it with its pods by name.
func relatedLab(t *testing.T, short string) (*lab.State, map[string]lab.Pod) {
	t.Helper()
	s := upLab(t, labName(t, short), "testdata/related.yaml", true)
	since := time.Now()
	if _, err := lab.Apply(s.Dir, []string{writeFile(t, relatedPolicies)}); err != nil {
		t.Fatal(err)
	}
	expectEnforced(t, s, since, lab.ProbeOptions{Ports: []query.Port{{Port: 80, Proto: ruleset.TCP}}})
	pods := map[string]lab.Pod{}
	for _, p := range s.Pods {
		pods[p.Name] = p
	}
	return s, pods
}

func podAddr(t *testing.T, p lab.Pod, fam int) netip.Addr {
	for _, ip := range p.IPs {
		if ip.Is4() == (fam == 4) {
			return ip
		}
	}
	t.Fatalf("pod %s has no IPv%d address", p.ID(), fam)
	return netip.Addr{}
}

// listenUDP opens a UDP socket on addr:port in the pod, closed when the test
// ends.
func listenUDP(t *testing.T, p lab.Pod, addr netip.Addr, port int) *net.UDPConn {
	t.Helper()
	c, err := lab.ListenUDPIn(p.Netns, netip.AddrPortFrom(addr, uint16(port)).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sendUntilReceived sends datagrams of size bytes from the pod to to:port
// (a few times: the first of a flow waits for a verdict) and returns the
// size of the first one the listener receives, 0 if none does.
func sendUntilReceived(t *testing.T, from lab.Pod, to netip.Addr, port, size int, l *net.UDPConn) int {
	t.Helper()
	var c *net.UDPConn
	var err error
	if rerr := lab.RunIn(from.Netns, func() {
		c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(to, uint16(port))))
	}); rerr != nil || err != nil {
		t.Fatal(rerr, err)
	}
	defer c.Close()
	buf := make([]byte, 65536)
	for range 3 {
		if _, err := c.Write(bytes.Repeat([]byte{'x'}, size)); err != nil {
			t.Fatalf("send: %v", err)
		}
		l.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if n, _, err := l.ReadFromUDP(buf); err == nil {
			return n
		}
	}
	return 0
}

// udpError sends datagrams from the pod to to:port on a connected socket
// (with IP_TTL / IPV6_UNICAST_HOPS ttl unless 0, and IP_RECVERR so that
// soft errors are reported too) and returns the error a read gets.
func udpError(t *testing.T, from lab.Pod, to netip.Addr, port, ttl int) error {
	t.Helper()
	var c *net.UDPConn
	var err error
	if rerr := lab.RunIn(from.Netns, func() {
		c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(to, uint16(port))))
	}); rerr != nil || err != nil {
		t.Fatal(rerr, err)
	}
	defer c.Close()
	rc, _ := c.SyscallConn()
	var serr error
	rc.Control(func(fd uintptr) {
		if to.Is4() {
			serr = errors.Join(unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVERR, 1), ttlOpt(fd, unix.IPPROTO_IP, unix.IP_TTL, ttl))
		} else {
			serr = errors.Join(unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVERR, 1), ttlOpt(fd, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, ttl))
		}
	})
	if serr != nil {
		t.Fatal(serr)
	}
	buf := make([]byte, 100)
	for range 3 {
		if _, err := c.Write([]byte("probe")); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
		if _, err := c.Read(buf); err == nil || !errors.Is(err, unix.EAGAIN) && !isTimeout(err) {
			return err
		}
	}
	return errors.New("no answer and no error")
}

func ttlOpt(fd uintptr, level, opt, ttl int) error {
	if ttl == 0 {
		return nil
	}
	return unix.SetsockoptInt(int(fd), level, opt, ttl)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// bulkTCP sends n bytes from one pod to a listener on to:port in another
// and waits for all of them to arrive.
func bulkTCP(t *testing.T, from, server lab.Pod, to netip.Addr, port, n int) error {
	t.Helper()
	var ln net.Listener
	var err error
	if rerr := lab.RunIn(server.Netns, func() {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(to, uint16(port)).String())
	}); rerr != nil || err != nil {
		t.Fatal(rerr, err)
	}
	defer ln.Close()
	got := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		m, err := io.Copy(io.Discard, c)
		if err == nil && m != int64(n) {
			err = fmt.Errorf("received %d of %d bytes", m, n)
		}
		got <- err
	}()
	var c net.Conn
	if rerr := lab.RunIn(from.Netns, func() {
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(to, uint16(port)).String(), 5*time.Second)
	}); rerr != nil || err != nil {
		return errors.Join(rerr, err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	_, werr := c.Write(make([]byte, n))
	c.Close()
	return errors.Join(werr, <-got)
}

// setMTU sets the MTU of the pod's host veth in its node's namespace.
func setMTU(t *testing.T, nodes []lab.Node, p lab.Pod, mtu int) {
	t.Helper()
	for _, n := range nodes {
		if n.Name == p.Node {
			if out, err := exec.Command("ip", "-n", n.Netns, "link", "set", p.HostIface, "mtu", strconv.Itoa(mtu)).CombinedOutput(); err != nil {
				t.Fatalf("set MTU of %s: %v: %s", p.HostIface, err, out)
			}
			return
		}
	}
	t.Fatalf("no node %s", p.Node)
}

// metricValue returns the value of the sample named exactly series (name
// and labels as /metrics prints them), 0 if absent.
func metricValue(metrics, series string) float64 {
	for _, l := range strings.Split(metrics, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
