package xdpprog

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// All attach helpers work on interfaces of the calling thread's network
// namespace: callers switching namespaces must lock the OS thread.

// AttachMode chooses how a tc program is attached.
type AttachMode int

const (
	// AttachAuto uses tcx and falls back to clsact when the kernel lacks
	// tcx (before 6.6).
	AttachAuto AttachMode = iota
	// AttachTCX uses a tcx bpf_link.
	AttachTCX
	// AttachClsact uses a cls_bpf filter under a clsact qdisc via netlink.
	AttachClsact
)

func (m AttachMode) String() string {
	switch m {
	case AttachTCX:
		return "tcx"
	case AttachClsact:
		return "clsact"
	}
	return "auto"
}

// Defaults for the clsact fallback. The handle is ours alone ("xd"), so a
// replace never hits a CNI's filter; priority 1 runs us before most others.
const (
	ClsactPriority = 1
	ClsactHandle   = 0x7864
)

// TCOptions tune AttachTC.
type TCOptions struct {
	Mode AttachMode
	// PinPath pins the tcx link there, so the program stays attached when
	// the process exits. An existing pin for the same interface and
	// direction is updated to the new program in place, without a moment
	// unattached. Ignored for clsact, whose filters outlive the process
	// anyway.
	PinPath string
}

// TCAttachment is one program attached to one direction of one interface.
type TCAttachment struct {
	Ifindex int
	Hook    Hook
	Mode    AttachMode // AttachTCX or AttachClsact, never AttachAuto

	link    link.Link
	pinPath string

	filter       *netlink.BpfFilter
	createdQdisc bool
}

// AttachTC attaches prog to H (index ifindex) at hook: HookEgress is the
// ingress direction of H, HookIngress its egress direction.
func AttachTC(prog *ebpf.Program, ifindex int, hook Hook, opts TCOptions) (*TCAttachment, error) {
	if hook != HookEgress && hook != HookIngress {
		return nil, fmt.Errorf("attach tc: bad hook %d", hook)
	}
	a := &TCAttachment{Ifindex: ifindex, Hook: hook}
	if opts.Mode != AttachClsact {
		err := a.attachTCX(prog, opts.PinPath)
		if err == nil {
			return a, nil
		}
		if opts.Mode == AttachTCX || !errors.Is(err, ebpf.ErrNotSupported) {
			return nil, err
		}
	}
	if err := a.attachClsact(prog); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *TCAttachment) attachTCX(prog *ebpf.Program, pinPath string) error {
	attach := ebpf.AttachTCXIngress
	if a.Hook == HookIngress {
		attach = ebpf.AttachTCXEgress
	}
	l, err := attachPinned(pinPath, prog, func(info *link.Info) bool {
		tcx := info.TCX()
		return tcx != nil && int(tcx.Ifindex) == a.Ifindex && ebpf.AttachType(tcx.AttachType) == attach
	}, func() (link.Link, error) {
		// Head: decide before a CNI program can redirect the packet past us.
		return link.AttachTCX(link.TCXOptions{
			Interface: a.Ifindex, Program: prog, Attach: attach, Anchor: link.Head(),
		})
	})
	if err != nil {
		return fmt.Errorf("attach tcx %s to ifindex %d: %w", attach, a.Ifindex, err)
	}
	a.Mode, a.link, a.pinPath = AttachTCX, l, pinPath
	return nil
}

func (a *TCAttachment) attachClsact(prog *ebpf.Program) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: a.Ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	switch err := netlink.QdiscAdd(qdisc); {
	case err == nil:
		a.createdQdisc = true
	case errors.Is(err, unix.EEXIST):
	default:
		return fmt.Errorf("add clsact qdisc to ifindex %d: %w", a.Ifindex, err)
	}

	parent, name := uint32(netlink.HANDLE_MIN_INGRESS), "xdpolicy_from_pod"
	if a.Hook == HookIngress {
		parent, name = netlink.HANDLE_MIN_EGRESS, "xdpolicy_to_pod"
	}
	a.filter = &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: a.Ifindex,
			Parent:    parent,
			Handle:    ClsactHandle,
			Priority:  ClsactPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           prog.FD(),
		Name:         name,
		DirectAction: true,
	}
	// Replace, so a restart swaps the program of our own earlier filter.
	if err := netlink.FilterReplace(a.filter); err != nil {
		err = fmt.Errorf("add bpf filter to ifindex %d: %w", a.Ifindex, err)
		if a.createdQdisc {
			err = errors.Join(err, netlink.QdiscDel(qdisc))
		}
		return err
	}
	a.Mode = AttachClsact
	return nil
}

// Detach removes the attachment, its pin, and the clsact qdisc if this
// attachment created it and no other filter uses it now.
func (a *TCAttachment) Detach() error {
	switch a.Mode {
	case AttachTCX:
		return detachLink(a.link, a.pinPath)
	case AttachClsact:
		if err := netlink.FilterDel(a.filter); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete bpf filter on ifindex %d: %w", a.Ifindex, err)
		}
		if a.createdQdisc {
			return a.deleteQdiscIfUnused()
		}
	}
	return nil
}

func (a *TCAttachment) deleteQdiscIfUnused() error {
	l, err := netlink.LinkByIndex(a.Ifindex)
	if err != nil {
		return fmt.Errorf("find ifindex %d: %w", a.Ifindex, err)
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		filters, err := netlink.FilterList(l, parent)
		if err != nil {
			return fmt.Errorf("list filters on ifindex %d: %w", a.Ifindex, err)
		}
		if len(filters) > 0 {
			return nil
		}
	}
	err = netlink.QdiscDel(&netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: a.Ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	})
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete clsact qdisc on ifindex %d: %w", a.Ifindex, err)
	}
	return nil
}

// Close releases the process's handle but leaves the program attached
// when the tcx link is pinned or the attachment is a clsact filter. An
// unpinned tcx link is detached by Close, as the kernel does on exit.
func (a *TCAttachment) Close() error {
	if a.link != nil {
		return a.link.Close()
	}
	return nil
}

// XDPOptions tune AttachXDP.
type XDPOptions struct {
	// PinPath pins the XDP link; an existing pin for the same interface is
	// updated to the new program in place.
	PinPath string
	Flags   link.XDPAttachFlags
}

// XDPAttachment is the punt program attached to dp1.
type XDPAttachment struct {
	Ifindex int

	link    link.Link
	pinPath string
}

// AttachXDP attaches prog (normally Objects.Punt) to the interface.
func AttachXDP(prog *ebpf.Program, ifindex int, opts XDPOptions) (*XDPAttachment, error) {
	l, err := attachPinned(opts.PinPath, prog, func(info *link.Info) bool {
		xdp := info.XDP()
		return xdp != nil && int(xdp.Ifindex) == ifindex
	}, func() (link.Link, error) {
		return link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: opts.Flags})
	})
	if err != nil {
		return nil, fmt.Errorf("attach xdp to ifindex %d: %w", ifindex, err)
	}
	return &XDPAttachment{Ifindex: ifindex, link: l, pinPath: opts.PinPath}, nil
}

// Detach removes the XDP program and its pin.
func (a *XDPAttachment) Detach() error { return detachLink(a.link, a.pinPath) }

// Close releases the handle; a pinned link stays attached.
func (a *XDPAttachment) Close() error { return a.link.Close() }

// attachPinned reuses the link pinned at path when it still belongs to the
// same target (matches), updating it to prog; otherwise it attaches afresh
// and pins the new link there. A pin of a link whose interface is gone is
// replaced.
func attachPinned(path string, prog *ebpf.Program, matches func(*link.Info) bool, attach func() (link.Link, error)) (link.Link, error) {
	if path != "" {
		if old, err := link.LoadPinnedLink(path, nil); err == nil {
			info, err := old.Info()
			if err == nil && matches(info) && old.Update(prog) == nil {
				return old, nil
			}
			// Stale or foreign: drop our pin of it, then attach anew.
			_ = old.Unpin()
			_ = old.Close()
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("load pinned link %s: %w", path, err)
		}
	}
	l, err := attach()
	if err != nil {
		return nil, err
	}
	if path != "" {
		if err := l.Pin(path); err != nil {
			return nil, errors.Join(fmt.Errorf("pin link at %s: %w", path, err), l.Close())
		}
	}
	return l, nil
}

// RemoveClsactFilters deletes the clsact fallback's filters (AttachClsact:
// our handle, priority and program names) from every interface of the
// calling thread's network namespace, and returns where it found them.
// Their qdiscs stay: another program may use them.
func RemoveClsactFilters() ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var done []string
	var errs []error
	for _, l := range links {
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			filters, err := netlink.FilterList(l, parent)
			if err != nil {
				continue // no clsact qdisc
			}
			for _, f := range filters {
				bf, ok := f.(*netlink.BpfFilter)
				if !ok || bf.Handle != ClsactHandle || bf.Priority != ClsactPriority || !strings.HasPrefix(bf.Name, "xdpolicy_") {
					continue
				}
				if err := netlink.FilterDel(bf); err != nil && !errors.Is(err, unix.ENOENT) {
					errs = append(errs, fmt.Errorf("delete filter %s on %s: %w", bf.Name, l.Attrs().Name, err))
					continue
				}
				done = append(done, fmt.Sprintf("clsact filter %s on %s", bf.Name, l.Attrs().Name))
			}
		}
	}
	return done, errors.Join(errs...)
}

// RemovePinnedLink detaches the link pinned at path and removes the pin; a
// pin whose link is defunct (its interface gone) is just removed. It
// reports whether there was a pin.
func RemovePinnedLink(path string) (bool, error) {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return true, os.Remove(path)
	}
	return true, detachLink(l, path)
}

func detachLink(l link.Link, pinPath string) error {
	var errs []error
	if pinPath != "" {
		errs = append(errs, l.Unpin())
	}
	// Closing the last reference detaches a link; Detach makes it
	// immediate even if someone else holds a reference.
	if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
		errs = append(errs, err)
	}
	errs = append(errs, l.Close())
	return errors.Join(errs...)
}
