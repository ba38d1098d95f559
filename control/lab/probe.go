package lab

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/control/query"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// ProbeOptions of Probe.
type ProbeOptions struct {
	// Ports to probe; none means every containerPort of every pod. On a
	// kernel without SCTP, SCTP goes over raw sockets (rawsctp.go).
	Ports []query.Port
	// Family is "" (each flow uses the destination's first address, as
	// `xdpolicy probe` does), "4" or "6" (pods' addresses of that family
	// first, and external's of that family).
	Family  string
	Timeout time.Duration
	Warn    io.Writer
}

// Observation is one observed cell: the schema of `xdpolicy probe -o json`
// (query.Result, computed by query for the same flow) with Allowed
// overwritten by what the connection attempt saw, plus Observed (always
// true) and Observation, a short note on what happened ("reply ns/pod",
// "timeout", "refused", …). The egress and ingress fields are the
// prediction's explanation of the flow, not an observation.
type Observation struct {
	query.Result
	Observed    bool   `json:"observed"`
	Observation string `json:"observation"`
}

// ProbeResult holds the prediction and the observation, cell for cell in
// query.Matrix order (port, then source, then destination).
type ProbeResult struct {
	From, To  []query.Endpoint
	Ports     []query.Port
	Predicted []query.Result
	Observed  []Observation
}

// Results returns the observed cells as query.Results (for WriteTable).
func (r *ProbeResult) Results() []query.Result {
	out := make([]query.Result, len(r.Observed))
	for i := range r.Observed {
		out[i] = r.Observed[i].Result
	}
	return out
}

// Diff lists the cells where observation and prediction differ; a pod's
// cells to itself are not judged (as upstream).
func (r *ProbeResult) Diff() []string {
	var out []string
	for i, p := range r.Predicted {
		o := r.Observed[i]
		if p.From == p.To || o.Allowed == p.Allowed {
			continue
		}
		out = append(out, fmt.Sprintf("%s -> %s %d/%s (%s -> %s): predicted %s, observed %s (%s)",
			p.From, p.To, p.Port, p.Protocol, p.FromIP, p.ToIP, word(p.Allowed), word(o.Allowed), o.Observation))
	}
	return out
}

func word(allowed bool) string {
	if allowed {
		return "allowed"
	}
	return "denied"
}

// Cluster loads the lab's current cluster and policies, as the agents see
// them.
func (s *State) Cluster() (*model.Cluster, error) {
	if s.Kubeconfig != "" {
		return s.apiCluster()
	}
	res, err := model.Load(ClusterDir(s.Dir), PoliciesDir(s.Dir))
	if err != nil {
		return nil, err
	}
	return res.Cluster, nil
}

// Probe makes a connection attempt from every pod and from external to
// every pod on every port, from inside the source's namespace, all in
// parallel, and the prediction for the same cells.
func Probe(s *State, o ProbeOptions) (*ProbeResult, error) {
	if err := CheckHost(); err != nil {
		return nil, err
	}
	if o.Warn == nil {
		o.Warn = io.Discard
	}
	if o.Timeout <= 0 {
		o.Timeout = 300 * time.Millisecond
	}
	c, err := s.Cluster()
	if err != nil {
		return nil, err
	}
	var want func(netip.Addr) bool
	switch o.Family {
	case "":
	case "4":
		want = netip.Addr.Is4
	case "6":
		want = netip.Addr.Is6
	default:
		return nil, fmt.Errorf("family %q: want 4 or 6", o.Family)
	}
	if want != nil {
		for _, p := range c.Pods {
			preferFamily(p, want)
		}
	}
	q, problems := query.New(c)
	for _, pr := range problems {
		fmt.Fprintf(o.Warn, "warning: %v (fails closed)\n", pr)
	}
	r := &ProbeResult{}
	if r.To, err = q.Endpoints(nil); err != nil {
		return nil, err
	}
	r.From = slices.Clone(r.To)
	for _, a := range s.External.IPs {
		if want != nil && !want(a) {
			continue
		}
		if !slices.ContainsFunc(q.Rules.Pods, func(p ruleset.Pod) bool {
			return slices.ContainsFunc(p.IPs, func(b netip.Addr) bool { return b.Is4() == a.Is4() })
		}) {
			continue
		}
		ep, err := q.Endpoints([]string{a.String()})
		if err != nil {
			return nil, err
		}
		r.From = append(r.From, ep...)
	}
	// Without an SCTP stack, SCTP goes over raw sockets: the servers of a
	// lab made on such a kernel answer there (State.RawSCTP).
	rawSCTP := !sctpAvailable()
	r.Ports = o.Ports
	if len(r.Ports) == 0 {
		r.Ports = q.DefaultPorts()
	}
	if rawSCTP && !s.RawSCTP && slices.ContainsFunc(r.Ports, func(p query.Port) bool { return p.Proto == ruleset.SCTP }) {
		return nil, errors.New("cannot probe SCTP: this kernel has no SCTP stack and this lab's servers do not answer SCTP over raw sockets (it was made on a kernel with SCTP, or by an older xdpolicy); take it down and up again")
	}
	if len(r.Ports) == 0 {
		return nil, errors.New("no ports to probe: the pods declare no containerPorts, give --port N/PROTO")
	}
	r.Predicted = q.Matrix(r.From, r.To, r.Ports)

	netnsOf := map[string]string{}
	for _, p := range s.Pods {
		netnsOf[p.ID()] = p.Netns
	}
	for _, a := range s.External.IPs {
		netnsOf[a.String()] = s.External.Netns
	}
	r.Observed = make([]Observation, len(r.Predicted))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range r.Predicted {
		p := r.Predicted[i]
		r.Observed[i] = Observation{Result: p, Observed: true}
		ob := &r.Observed[i]
		ns, ok := netnsOf[p.From]
		switch {
		case !ok:
			ob.Allowed, ob.Observation = false, "source has no namespace in the lab"
			continue
		case p.ToIP == "":
			ob.Allowed, ob.Observation = false, "no address family in common"
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			var reply string
			err := inNetns(ns, func() error {
				var err error
				reply, err = dial(p.Protocol, p.ToIP, p.Port, o.Timeout, rawSCTP)
				return err
			})
			switch {
			case errors.Is(err, syscall.ECONNREFUSED):
				// A reset or port-unreachable came back: the attempt
				// reached the pod, which serves nothing on that port.
				// Policy allowed it both ways.
				ob.Allowed, ob.Observation = true, "refused: reached the pod, nothing listens there"
			case err != nil:
				ob.Allowed, ob.Observation = false, describe(err)
			case reply != p.To:
				ob.Allowed, ob.Observation = false, fmt.Sprintf("wrong reply %q", reply)
			default:
				ob.Allowed, ob.Observation = true, "reply "+reply
			}
			if p.Protocol == "SCTP" && rawSCTP {
				ob.Observation += " (" + RawSCTPNote + ")"
			}
		}()
	}
	wg.Wait()
	return r, nil
}

// preferFamily puts the pod's addresses of the wanted family first.
func preferFamily(p *corev1.Pod, want func(netip.Addr) bool) {
	ips, err := model.PodIPs(p)
	if err != nil || len(ips) == 0 {
		return
	}
	slices.SortStableFunc(ips, func(a, b netip.Addr) int {
		wa, wb := want(a), want(b)
		switch {
		case wa && !wb:
			return -1
		case wb && !wa:
			return 1
		}
		return 0
	})
	p.Status.PodIP = ips[0].String()
	p.Status.PodIPs = nil
	for _, a := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: a.String()})
	}
}

func describe(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EINPROGRESS), errors.Is(err, syscall.ETIMEDOUT):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	}
	return err.Error()
}

// dial makes one connection attempt and returns the server's reply line.
// It must run on a thread inside the source namespace: every socket is
// created here.
func dial(proto, ip string, port int, timeout time.Duration, rawSCTP bool) (string, error) {
	addr := net.JoinHostPort(ip, strconv.Itoa(port))
	switch proto {
	case "TCP":
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		return readLine(c)
	case "UDP":
		c, err := net.Dial("udp", addr)
		if err != nil {
			return "", err
		}
		defer c.Close()
		// Twice, half the time apart: a datagram has no retransmission.
		buf := make([]byte, 512)
		start := time.Now()
		for _, until := range []time.Duration{timeout / 2, timeout} {
			if _, err := c.Write([]byte("probe\n")); err != nil {
				return "", err
			}
			c.SetReadDeadline(start.Add(until))
			n, err := c.Read(buf)
			if err == nil {
				return strings.TrimSpace(string(buf[:n])), nil
			}
			var ne net.Error
			if !(errors.As(err, &ne) && ne.Timeout()) {
				return "", err
			}
		}
		return "", os.ErrDeadlineExceeded
	case "SCTP":
		if rawSCTP {
			return dialRawSCTP(ip, port, timeout)
		}
		return dialSCTP(ip, port, timeout)
	}
	return "", fmt.Errorf("unknown protocol %s", proto)
}

func readLine(r io.Reader) (string, error) {
	b, err := io.ReadAll(io.LimitReader(r, 512))
	if len(b) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	if err == nil {
		err = errors.New("closed without a reply")
	}
	return "", err
}

// dialSCTP connects a one-to-one SCTP socket with blocking calls bounded by
// SO_SNDTIMEO (connect) and SO_RCVTIMEO (read).
func dialSCTP(ip string, port int, timeout time.Duration) (string, error) {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return "", err
	}
	var sa unix.Sockaddr
	family := unix.AF_INET
	if a.Is4() {
		sa = &unix.SockaddrInet4{Port: port, Addr: a.As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: port, Addr: a.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err := unix.Connect(fd, sa); err != nil {
		return "", err
	}
	buf := make([]byte, 512)
	var got bytes.Buffer
	for got.Len() < 512 {
		n, err := unix.Read(fd, buf)
		if n > 0 {
			got.Write(buf[:n])
			if bytes.IndexByte(got.Bytes(), '\n') >= 0 {
				break
			}
			continue
		}
		if err != nil && got.Len() == 0 {
			return "", err
		}
		break
	}
	if got.Len() == 0 {
		return "", errors.New("closed without a reply")
	}
	return strings.TrimSpace(got.String()), nil
}
