package harness

import (
	"net"
	"net/netip"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/xdpolicy/xdpolicy/bench/pktgen"
)

// Sink is a UDP socket in the sink's namespace that records generator
// probes: their sequence numbers and one-way latency (kernel receive time,
// SO_TIMESTAMPNS, minus the send time in the payload).
type Sink struct {
	conn *net.UDPConn
	mu   sync.Mutex
	got  int
	lat  []time.Duration
	done chan struct{}
}

// Listen opens a sink socket on port inside the sink netns.
func (t *Topo) Listen(port uint16) (*Sink, error) {
	var c *net.UDPConn
	err := inNetns(t.sinkH, func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.IPv4Unspecified(), port)))
		return err
	})
	if err != nil {
		return nil, err
	}
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	})
	s := &Sink{conn: c, done: make(chan struct{})}
	go s.loop()
	return s, nil
}

func (s *Sink) loop() {
	defer close(s.done)
	buf := make([]byte, 2048)
	oob := make([]byte, 128)
	for {
		n, oobn, _, _, err := s.conn.ReadMsgUDP(buf, oob)
		if err != nil {
			return
		}
		recv := time.Now()
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SO_TIMESTAMPNS && len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})) {
					ts := (*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
					if ts.Sec != 0 {
						recv = time.Unix(ts.Unix())
					}
				}
			}
		}
		_, sent, ok := pktgen.ParsePayload(buf[:n])
		s.mu.Lock()
		s.got++
		if ok {
			s.lat = append(s.lat, recv.Sub(sent))
		}
		s.mu.Unlock()
	}
}

// Reset forgets what was received.
func (s *Sink) Reset() {
	s.mu.Lock()
	s.got, s.lat = 0, s.lat[:0]
	s.mu.Unlock()
}

// Got returns the datagrams received since Reset and their latencies.
func (s *Sink) Got() (int, []time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got, append([]time.Duration(nil), s.lat...)
}

// Close stops the sink.
func (s *Sink) Close() { s.conn.Close(); <-s.done }
