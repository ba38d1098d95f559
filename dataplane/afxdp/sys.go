package afxdp

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	xdpRingNeedWakeup = unix.XDP_RING_NEED_WAKEUP
	sizeofDesc        = unsafe.Sizeof(Desc{})
	sizeofAddr        = unsafe.Sizeof(uint64(0))
)

// Compile-time check that Desc matches struct xdp_desc.
var _ [unsafe.Sizeof(unix.XDPDesc{}) - sizeofDesc]struct{}
var _ [sizeofDesc - unsafe.Sizeof(unix.XDPDesc{})]struct{}

// ErrClosed is returned by operations on a closed UMEM or Socket.
var ErrClosed = errors.New("afxdp: closed")

func setsockoptPtr(fd, opt int, p unsafe.Pointer, size uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(opt), uintptr(p), size, 0)
	if e != 0 {
		return e
	}
	return nil
}

func getsockoptPtr(fd, opt int, p unsafe.Pointer, size uintptr) error {
	l := uint32(size)
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(opt), uintptr(p), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// explain wraps a setup error with what the operator can do about it.
func explain(op string, err error) error {
	var hint string
	switch {
	case errors.Is(err, unix.EAFNOSUPPORT):
		hint = "AF_XDP not supported: kernel built without CONFIG_XDP_SOCKETS"
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		hint = "needs CAP_NET_ADMIN+CAP_NET_RAW (or root)"
	case errors.Is(err, unix.ENOBUFS) && op == "register UMEM":
		hint = "UMEM exceeds RLIMIT_MEMLOCK: raise it (ulimit -l / LimitMEMLOCK) or use fewer frames"
	case errors.Is(err, unix.ENOMEM):
		hint = "out of memory: use fewer frames or smaller rings"
	case errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
		hint = "no such interface in the socket's network namespace (set SocketOptions.Netns)"
	case errors.Is(err, unix.EBUSY):
		hint = "the queue already has an AF_XDP socket, or its UMEM is in use in another mode"
	case errors.Is(err, unix.EOPNOTSUPP):
		hint = "the driver cannot do the requested mode: bind with XDP_COPY"
	case errors.Is(err, unix.EINVAL) && op == "bind":
		hint = "bad queue id (see RxQueues), or a second socket on the same device and queue"
	case errors.Is(err, unix.ENETDOWN):
		hint = "interface is down or was removed"
	}
	if hint == "" {
		return fmt.Errorf("afxdp: %s: %w", op, err)
	}
	return fmt.Errorf("afxdp: %s: %w (%s)", op, err, hint)
}

// inNetns runs fn on a locked OS thread switched into ns and switches back.
// It uses its own goroutine so that, if switching back fails, the tainted
// thread exits with it (LockOSThread without Unlock) instead of serving
// other goroutines from the wrong namespace. Only the socket() call needs to
// happen inside: an AF_XDP socket remembers its namespace and bind resolves
// the ifindex there.
func inNetns(ns netns.NsHandle, fn func() error) error {
	if ns <= 0 {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("afxdp: get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("afxdp: enter netns %v: %w", ns, err)
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// ethtoolChannels is struct ethtool_channels.
type ethtoolChannels struct {
	cmd                                         uint32
	maxRx, maxTx, maxOther, maxCombined         uint32
	rxCount, txCount, otherCount, combinedCount uint32
}

// ifreqData is struct ifreq with ifr_data set; the pointer field keeps the
// target alive and visible to the GC during the ioctl.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(unsafe.Pointer(nil))]byte
}

// RxQueues returns the number of real RX queues of the interface ifname in
// network namespace ns (ns <= 0: the current one). Bind one RX socket per
// queue: a frame that lands on a queue without a socket is not received. A
// veth created without options has one.
//
// It asks ethtool (ETHTOOL_GCHANNELS: rx-only plus combined channels), which
// works in any namespace; if the driver has no channel support it counts
// /sys/class/net/<if>/queues/rx-*, which is only right for the namespace
// sysfs was mounted in.
func RxQueues(ifname string, ns netns.NsHandle) (int, error) {
	var n int
	err := inNetns(ns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return explain("socket for ethtool", err)
		}
		defer unix.Close(fd)
		ch := &ethtoolChannels{cmd: unix.ETHTOOL_GCHANNELS}
		ifr := &ifreqData{data: unsafe.Pointer(ch)}
		copy(ifr.name[:unix.IFNAMSIZ-1], ifname)
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(ifr)))
		runtime.KeepAlive(ch)
		switch {
		case e == 0 && ch.rxCount+ch.combinedCount > 0:
			n = int(ch.rxCount + ch.combinedCount)
			return nil
		case e == unix.ENODEV:
			return explain("ethtool channels of "+ifname, e)
		}
		m, err := filepath.Glob(filepath.Join("/sys/class/net", ifname, "queues", "rx-*"))
		if err != nil || len(m) == 0 {
			if _, serr := os.Stat(filepath.Join("/sys/class/net", ifname)); serr != nil {
				return explain("count RX queues of "+ifname, unix.ENODEV)
			}
			n = 1
			return nil
		}
		n = len(m)
		return nil
	})
	return n, err
}
