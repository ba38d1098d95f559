package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/xdpolicy/xdpolicy/control/agent"
)

func cleanupCmd() *cobra.Command {
	var node, bpffsDir string
	var verbose bool
	c := &cobra.Command{
		Use:   "cleanup --node NAME",
		Short: "Remove what agents left on this node (programs, punt veth, pins): uninstall",
		Long: `cleanup removes what xdpolicy agents of this node left behind, on purpose
(--keep-on-exit, as the DaemonSet runs them, so that a restarted agent takes
over without a gap) or because they were killed: the tcx programs on the
pods' host veths, the punt veth dp0/dp1 and its XDP program, and the pinned
maps under --bpffs-dir. Run it in the node's network namespace, after the
agent has stopped (it refuses while an agent holds the pin directory).
Afterwards no pod of the node is enforced until an agent starts again.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if node == "" && bpffsDir == "" {
				return usageError{fmt.Errorf("--node or --bpffs-dir is required (see '%s --help')", c.CommandPath())}
			}
			if bpffsDir == "" {
				bpffsDir = agent.DefaultBPFFSDir(node)
			}
			level := slog.LevelWarn
			if verbose {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			done, err := agent.Cleanup(bpffsDir, log)
			for _, d := range done {
				fmt.Fprintln(c.OutOrStdout(), "removed", d)
			}
			if err == nil && len(done) == 0 {
				fmt.Fprintln(c.OutOrStdout(), "nothing to clean up")
			}
			return err
		},
	}
	f := c.Flags()
	f.StringVar(&node, "node", "", "the node's name, as the agent was given it")
	f.StringVar(&bpffsDir, "bpffs-dir", "", "the agent's pin directory (default /sys/fs/bpf/xdpolicy/<node>)")
	f.BoolVarP(&verbose, "verbose", "v", false, "debug logging")
	return c
}
