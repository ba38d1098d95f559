package lab

import "net"

// ListenUDPIn opens a UDP socket inside a named network namespace (a pod's
// or a node's); it stays there for its whole life, whichever thread uses
// it. addr is as net.ListenUDP takes it ("0.0.0.0:0", ":7777").
func ListenUDPIn(netns, addr string) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := inNetns(netns, func() error {
		a, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return err
		}
		c, err = net.ListenUDP("udp", a)
		return err
	})
	return c, err
}
