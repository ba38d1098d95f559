package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/xdpolicy/xdpolicy/control/query"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// Serve answers on every port with the pod's name and a newline: TCP and
// SCTP write it on every accepted connection and close, UDP replies to every
// datagram. Sockets are bound to the wildcard address of both families. On
// a kernel without SCTP, it answers SCTP INITs over raw sockets instead
// (rawsctp.go): with an ABORT naming the pod on its SCTP ports, with a bare
// ABORT on any other port, as an SCTP stack without a listener would. It
// writes pidfile once every socket is bound, removes it on return, and runs
// until ctx is done. Serve runs inside the pod's namespace (`xdpolicy lab
// serve`, started by Up through nsenter).
func Serve(ctx context.Context, pod string, ports []string, pidfile string, log io.Writer) error {
	reply := []byte(pod + "\n")
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	var wg sync.WaitGroup
	raw := !sctpAvailable()
	rawPorts := map[uint16]bool{}
	for _, s := range ports {
		p, err := query.ParsePort(s)
		if err != nil {
			return err
		}
		addr := ":" + strconv.Itoa(int(p.Port))
		if p.Proto == ruleset.SCTP && raw {
			rawPorts[p.Port] = true
			fmt.Fprintf(log, "%s: serving %s over raw sockets (%s)\n", pod, p, RawSCTPNote)
			continue
		}
		switch p.Proto {
		case ruleset.TCP, ruleset.SCTP:
			var l net.Listener
			if p.Proto == ruleset.TCP {
				l, err = net.Listen("tcp", addr)
			} else {
				l, err = listenSCTP(int(p.Port))
			}
			if err != nil {
				if p.Proto == ruleset.SCTP {
					fmt.Fprintf(log, "%s: not served: %v\n", p, err)
					continue
				}
				return fmt.Errorf("%s: %w", p, err)
			}
			closers = append(closers, l)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					c, err := l.Accept()
					if err != nil {
						if !errors.Is(err, net.ErrClosed) {
							fmt.Fprintf(log, "%s: accept: %v\n", p, err)
						}
						return
					}
					c.Write(reply)
					c.Close()
				}
			}()
		case ruleset.UDP:
			c, err := net.ListenPacket("udp", addr)
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			closers = append(closers, c)
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 2048)
				for {
					_, from, err := c.ReadFrom(buf)
					if err != nil {
						if !errors.Is(err, net.ErrClosed) {
							fmt.Fprintf(log, "%s: read: %v\n", p, err)
						}
						return
					}
					c.WriteTo(reply, from)
				}
			}()
		}
		fmt.Fprintf(log, "%s: serving %s\n", pod, p)
	}
	if raw {
		// Also for no SCTP port: it stands in for the missing stack, which
		// would answer an INIT to any other port with an ABORT.
		cs, err := serveRawSCTP(ctx, pod, rawPorts, &wg, log)
		if err != nil {
			return err
		}
		closers = append(closers, cs...)
	}
	if err := writeAtomic(pidfile, []byte(strconv.Itoa(os.Getpid())+"\n")); err != nil {
		return err
	}
	defer os.Remove(pidfile)
	<-ctx.Done()
	for _, c := range closers {
		c.Close()
	}
	closers = nil
	wg.Wait()
	return nil
}

// listenSCTP opens a one-to-one (SOCK_STREAM) SCTP socket on [::]:port,
// which accepts like a TCP listener.
func listenSCTP(port int) (net.Listener, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "sctp")
	defer f.Close()
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
	if err := unix.Bind(fd, &unix.SockaddrInet6{Port: port}); err != nil {
		return nil, err
	}
	if err := unix.Listen(fd, 128); err != nil {
		return nil, err
	}
	return net.FileListener(f)
}
