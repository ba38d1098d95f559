package main

import (
	"errors"
	"os"

	"github.com/spf13/cobra"

	"github.com/xdpolicy/xdpolicy/control/lab"
)

// labForwardCmd is the forwarder `lab up --apiserver` starts in every node
// namespace so that the agents there reach the API server on 127.0.0.1.
func labForwardCmd() *cobra.Command {
	var addr string
	var fd int
	c := &cobra.Command{
		Use:    "forward --addr 127.0.0.1:PORT --netns-fd N",
		Short:  "Forward a loopback port of this namespace to the same port in another (run by lab up)",
		Hidden: true,
		Args:   noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if addr == "" || fd < 3 {
				return usageError{errors.New("--addr and --netns-fd are required")}
			}
			return lab.Forward(c.Context(), addr, os.NewFile(uintptr(fd), "netns"))
		},
	}
	c.Flags().StringVar(&addr, "addr", "", "address to listen on here and to connect to there")
	c.Flags().IntVar(&fd, "netns-fd", 0, "inherited file descriptor of the target network namespace")
	return c
}
