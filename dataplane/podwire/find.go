package podwire

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// finder finds H, the host end of a pod's veth, for a pod address. Routed
// CNIs (ptp, Calico, Cilium's veth mode) route each pod address out its own
// veth; bridge CNIs (the reference bridge plugin, flannel, most simple
// bare-metal setups) route the pod subnet out a bridge, and H is the bridge
// port whose peer, in the pod's netns, carries the address. Bridge ports are
// found by scanning the bridge's veths once per miss and remembered, so a
// Sync over wired pods costs one route lookup and one link lookup per pod.
type finder struct {
	bridged map[netip.Addr]bridgePort
}

type bridgePort struct {
	ifindex, master int
}

// hostIndex returns H's ifindex for pod address ip.
func (f *finder) hostIndex(ip netip.Addr) (uint32, error) {
	routes, err := netlink.RouteGet(net.IP(ip.AsSlice()))
	if err != nil {
		return 0, fmt.Errorf("route to %s: %w", ip, err)
	}
	if len(routes) == 0 || routes[0].LinkIndex == 0 {
		return 0, fmt.Errorf("no route to %s", ip)
	}
	l, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return 0, err
	}
	switch l.(type) {
	case *netlink.Veth:
		return uint32(routes[0].LinkIndex), nil
	case *netlink.Bridge:
		return f.bridgePort(l.Attrs(), ip)
	}
	return 0, fmt.Errorf("route to %s goes out %s (%s), neither a pod's veth nor a bridge of pod veths", ip, l.Attrs().Name, l.Type())
}

// bridgePort returns the port of bridge br whose peer has ip.
func (f *finder) bridgePort(br *netlink.LinkAttrs, ip netip.Addr) (uint32, error) {
	if p, ok := f.bridged[ip]; ok && p.master == br.Index {
		if l, err := netlink.LinkByIndex(p.ifindex); err == nil && l.Attrs().MasterIndex == br.Index {
			return uint32(p.ifindex), nil
		}
	}
	if err := f.scan(br); err != nil {
		return 0, err
	}
	if p, ok := f.bridged[ip]; ok && p.master == br.Index {
		return uint32(p.ifindex), nil
	}
	return 0, fmt.Errorf("no veth on bridge %s leads to a netns with %s", br.Name, ip)
}

// scan records the addresses behind every veth port of bridge br.
func (f *finder) scan(br *netlink.LinkAttrs) error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	byNsid := map[int][]netlink.Link{}
	for _, l := range links {
		a := l.Attrs()
		if _, ok := l.(*netlink.Veth); ok && a.MasterIndex == br.Index && a.NetNsID >= 0 && a.ParentIndex != 0 {
			byNsid[a.NetNsID] = append(byNsid[a.NetNsID], l)
		}
	}
	for ip, p := range f.bridged {
		if p.master == br.Index {
			delete(f.bridged, ip)
		}
	}
	if f.bridged == nil {
		f.bridged = map[netip.Addr]bridgePort{}
	}
	handles := openNetns(byNsid)
	defer func() {
		for _, h := range handles {
			h.Close()
		}
	}()
	for nsid, ls := range byNsid {
		h, ok := handles[nsid]
		if !ok {
			continue
		}
		nh, err := netlink.NewHandleAt(h)
		if err != nil {
			continue
		}
		for _, l := range ls {
			addrs, err := nh.AddrList(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: l.Attrs().ParentIndex}}, netlink.FAMILY_ALL)
			if err != nil {
				continue
			}
			for _, a := range addrs {
				if ip, ok := netip.AddrFromSlice(a.IP); ok {
					f.bridged[ip.Unmap()] = bridgePort{ifindex: l.Attrs().Index, master: br.Index}
				}
			}
		}
		nh.Close()
	}
	return nil
}

// findNetns opens the network namespace that has id nsid in the current
// netns.
func findNetns(nsid int) (netns.NsHandle, error) {
	hs := openNetns(map[int][]netlink.Link{nsid: nil})
	if h, ok := hs[nsid]; ok {
		return h, nil
	}
	return netns.None(), fmt.Errorf("no netns with id %d found in /run/netns or /proc/*/ns/net", nsid)
}

// openNetns opens the network namespaces whose ids (in the current netns)
// are the keys of want, looking at named namespaces first, then at every
// process's, in one pass.
func openNetns[V any](want map[int]V) map[int]netns.NsHandle {
	out := map[int]netns.NsHandle{}
	var cands []string
	for _, dir := range []string{"/var/run/netns", "/run/netns"} {
		m, _ := filepath.Glob(filepath.Join(dir, "*"))
		cands = append(cands, m...)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	cands = append(cands, procs...)
	seen := map[[2]uint64]bool{}
	for _, p := range cands {
		if len(out) == len(want) {
			break
		}
		if fi, err := os.Stat(p); err == nil {
			if st, ok := statIno(fi); ok {
				if seen[st] {
					continue
				}
				seen[st] = true
			}
		}
		h, err := netns.GetFromPath(p)
		if err != nil {
			continue
		}
		id, err := netlink.GetNetNsIdByFd(int(h))
		if _, ok := want[id]; err == nil && ok {
			if _, dup := out[id]; !dup {
				out[id] = h
				continue
			}
		}
		h.Close()
	}
	return out
}
