package lab

import (
	"fmt"
	"net"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// RunIn runs fn on a thread inside a named network namespace (a pod's or a
// node's): sockets fn opens live there for their whole life, whichever
// thread uses them later. It blocks until fn returns.
//
// Unlike inNetns it returns the thread to its namespace and to the
// scheduler: it is meant for long-lived processes such as tests, where the
// thread may be the main one, whose namespace is the process's as others
// see it (/proc/PID/ns/net; `lab down` stops the processes in a lab's
// namespaces).
func RunIn(netns string, fn func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer unix.Close(orig)
		fd, err := unix.Open(filepath.Join(netnsDir, netns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: %w", netns, err)
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", netns, err)
			return
		}
		fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- nil // stay locked: the thread dies with this goroutine
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	return <-errc
}

// ListenUDPIn opens a UDP socket inside a named network namespace. addr is
// as net.ListenUDP takes it ("0.0.0.0:0", ":7777").
func ListenUDPIn(netns, addr string) (*net.UDPConn, error) {
	a, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	var c *net.UDPConn
	var lerr error
	if err := RunIn(netns, func() { c, lerr = net.ListenUDP("udp", a) }); err != nil {
		return nil, err
	}
	return c, lerr
}
