package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/xdpolicy/xdpolicy/xdpprog"
)

func mountBPFFSCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "mount-bpffs",
		Short: "Mount bpffs at /sys/fs/bpf unless it is mounted (the DaemonSet's init container)",
		Long: `mount-bpffs mounts a bpffs at /sys/fs/bpf when none is mounted there, as
systemd does on most nodes. The DaemonSet runs it in a privileged init
container whose /sys/fs/bpf propagates to the node (Bidirectional): the
agent's pinned programs and maps must live in the node's bpffs, not in one
private to its container, or a crashed or restarted agent would take them
with it and leave its pods unenforced.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := xdpprog.PreparePinDir(xdpprog.BPFFSRoot); err != nil {
				return err
			}
			fmt.Fprintln(c.OutOrStdout(), "bpffs mounted at", xdpprog.BPFFSRoot)
			return nil
		},
	}
}
