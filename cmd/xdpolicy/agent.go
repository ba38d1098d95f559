package main

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/xdpolicy/xdpolicy/control/agent"
	"github.com/xdpolicy/xdpolicy/control/source"
	"github.com/xdpolicy/xdpolicy/dataplane/flowtable"
)

func agentCmd() *cobra.Command {
	var (
		clusterDir, policiesDir, node, stateDir, bpffsDir, fastpath, existing, metricsAddr string
		keepOnExit, verbose                                                                bool
		workers                                                                            int
	)
	c := &cobra.Command{
		Use:   "agent",
		Short: "Enforce NetworkPolicy on this node's pods (run in the node's network namespace)",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if clusterDir == "" || node == "" {
				return usageError{fmt.Errorf("--cluster and --node are required (see '%s --help')", c.CommandPath())}
			}
			mode, err := flowtable.ParseMode(existing)
			if err != nil {
				return usageError{err}
			}
			if fastpath != "on" && fastpath != "off" {
				return usageError{fmt.Errorf("--fastpath=%q: want on or off", fastpath)}
			}
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("node", node)
			paths := []string{clusterDir}
			if policiesDir != "" {
				paths = append(paths, policiesDir)
			}
			return agent.Run(c.Context(), agent.Config{
				Source:      &source.Dir{Paths: paths, Interval: 200 * time.Millisecond, Log: log},
				Node:        node,
				StateDir:    stateDir,
				BPFFSDir:    bpffsDir,
				Fastpath:    fastpath == "on",
				Mode:        mode,
				KeepOnExit:  keepOnExit,
				Workers:     workers,
				MetricsAddr: metricsAddr,
				Log:         log,
			})
		},
	}
	f := c.Flags()
	f.StringVar(&clusterDir, "cluster", "", "directory of Namespace, Pod and Service YAML, watched for changes")
	f.StringVar(&policiesDir, "policies", "", "directory of NetworkPolicy YAML, watched for changes")
	f.StringVar(&node, "node", "", "this node's name: local pods are those with spec.nodeName equal to it")
	f.StringVar(&stateDir, "state-dir", "", "directory for the agent's local state")
	f.StringVar(&bpffsDir, "bpffs-dir", "", "bpffs directory for pinned maps and links (default /sys/fs/bpf/xdpolicy/<node>)")
	f.StringVar(&fastpath, "fastpath", "on", "on: cached verdicts are applied in the kernel; off: every packet of isolated pods goes through the Go workers")
	f.StringVar(&existing, "existing-connections", "revalidate", "on a policy change: revalidate (cut flows now denied) or keep (established flows stay)")
	f.BoolVar(&keepOnExit, "keep-on-exit", false, "leave programs, punt port and pinned maps in place on exit so a restarted agent takes over")
	f.IntVar(&workers, "workers", 0, "slow-path workers (default: one per CPU)")
	f.StringVar(&metricsAddr, "metrics-addr", "127.0.0.1:9090", "address of /metrics, /healthz, /readyz and /debug/pprof/ (port 0: any)")
	f.BoolVarP(&verbose, "verbose", "v", false, "debug logging")
	return c
}
