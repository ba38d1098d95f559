package punt

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdpolicy/xdpolicy/dataplane/afxdp"
	"github.com/xdpolicy/xdpolicy/xdpprog"
)

// Names of the punt veth ends.
const (
	Dev0 = "dp0" // the tcx programs redirect into this end
	Dev1 = "dp1" // XDP + AF_XDP RX sockets on this end
)

// MTU of the punt veth: the largest a native XDP program without
// multi-buffer support accepts on a veth with 4 KiB pages (PAGE_SIZE minus
// XDP headroom minus skb_shared_info), and what a 4 KiB UMEM frame holds.
// Larger packets (9000-byte pod MTUs, GSO) are not punted: the tcx program
// drops them and asks for a verdict through the requests ring buffer.
const MTU = 3500

// FrameSize is the UMEM frame size the punt port needs for MTU.
const FrameSize = 4096

// Options configure Open.
type Options struct {
	Objects *xdpprog.Objects
	PinDir  string
	// Queues is the number of RX queues for a newly created dp1 (a
	// reused one keeps its own).
	Queues    int
	NumFrames int
}

// Port is the open punt port.
type Port struct {
	Index0, Index1 int
	UMEM           *afxdp.UMEM
	RX             []*afxdp.Socket
	xdp            *xdpprog.XDPAttachment
	created        bool
}

// Open creates (or reuses) dp0/dp1, attaches the punt program to dp1 and
// binds an RX socket per queue.
func Open(o Options) (*Port, error) {
	p := &Port{}
	l0, err := netlink.LinkByName(Dev0)
	if err != nil {
		q := max(o.Queues, 1)
		v := &netlink.Veth{
			LinkAttrs: netlink.LinkAttrs{Name: Dev0, MTU: MTU, NumTxQueues: q, NumRxQueues: q},
			PeerName:  Dev1,
		}
		v.PeerMTU = MTU
		if err := netlink.LinkAdd(v); err != nil {
			return nil, fmt.Errorf("create punt veth %s/%s: %w", Dev0, Dev1, err)
		}
		p.created = true
		if l0, err = netlink.LinkByName(Dev0); err != nil {
			return nil, err
		}
	} else if _, ok := l0.(*netlink.Veth); !ok {
		return nil, fmt.Errorf("%s exists and is not a veth (%s): remove it or choose another netns", Dev0, l0.Type())
	}
	l1, err := netlink.LinkByName(Dev1)
	if err != nil {
		return nil, fmt.Errorf("%s exists without its peer %s: %w", Dev0, Dev1, err)
	}
	for _, l := range []netlink.Link{l0, l1} {
		if l.Attrs().MTU != MTU {
			if err := netlink.LinkSetMTU(l, MTU); err != nil {
				return nil, fmt.Errorf("set MTU of %s: %w", l.Attrs().Name, err)
			}
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("set %s up: %w", l.Attrs().Name, err)
		}
	}
	p.Index0, p.Index1 = l0.Attrs().Index, l1.Attrs().Index
	// No IPv6 link-local traffic of our own on the punt port.
	for _, n := range []string{Dev0, Dev1} {
		_ = writeSysctl("/proc/sys/net/ipv6/conf/"+n+"/disable_ipv6", "1")
	}

	p.xdp, err = xdpprog.AttachXDP(o.Objects.Punt, p.Index1, xdpprog.XDPOptions{PinPath: XDPPin(o.PinDir)})
	if err != nil {
		p.Close(false)
		return nil, err
	}
	queues, err := afxdp.RxQueues(Dev1, 0)
	if err != nil {
		p.Close(false)
		return nil, err
	}
	p.UMEM, err = afxdp.NewUMEM(afxdp.UMEMConfig{FrameSize: FrameSize, NumFrames: o.NumFrames, BindFlags: unix.XDP_COPY})
	if err != nil {
		p.Close(false)
		return nil, err
	}
	for q := 0; q < queues; q++ {
		s, err := p.UMEM.NewSocket(p.Index1, q, afxdp.SocketOptions{RX: true, RxSize: 1024, FillSize: 1024, TxSize: 0})
		if err != nil {
			p.Close(false)
			return nil, err
		}
		if err := o.Objects.XSKs.Put(uint32(q), uint32(s.FD())); err != nil {
			p.Close(false)
			return nil, fmt.Errorf("register RX socket of queue %d in xsks: %w", q, err)
		}
		p.RX = append(p.RX, s)
	}
	return p, nil
}

// Close closes the sockets; with keep it leaves dp0/dp1 and the pinned XDP
// program for the next agent, else it detaches and deletes them.
func (p *Port) Close(keep bool) error {
	var errs []error
	if p.UMEM != nil {
		errs = append(errs, p.UMEM.Close())
	}
	if p.xdp != nil {
		if keep {
			errs = append(errs, p.xdp.Close())
		} else {
			errs = append(errs, p.xdp.Detach())
		}
	}
	if !keep {
		_, err := deleteVeth()
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// XDPPin is where Open pins the punt program's XDP link in pinDir.
func XDPPin(pinDir string) string { return filepath.Join(pinDir, "xdp-"+Dev1) }

// Remove takes away what an agent left of the punt port (kept on exit, or
// the agent was killed): the pinned XDP link in pinDir and dp0/dp1. It
// reports what it removed.
func Remove(pinDir string) ([]string, error) {
	var done []string
	had, err := xdpprog.RemovePinnedLink(XDPPin(pinDir))
	if had {
		done = append(done, "XDP program on "+Dev1+" ("+XDPPin(pinDir)+")")
	}
	deleted, verr := deleteVeth()
	if deleted {
		done = append(done, "punt veth "+Dev0+"/"+Dev1)
	}
	return done, errors.Join(err, verr)
}

// deleteVeth deletes dp0 (and so dp1) when it is a veth.
func deleteVeth() (bool, error) {
	l, err := netlink.LinkByName(Dev0)
	if err != nil {
		return false, nil
	}
	if _, ok := l.(*netlink.Veth); !ok {
		return false, nil
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return false, fmt.Errorf("delete %s: %w", Dev0, err)
	}
	return true, nil
}
