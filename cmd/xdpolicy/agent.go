package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/xdpolicy/xdpolicy/control/agent"
	"github.com/xdpolicy/xdpolicy/dataplane/flowtable"
)

func agentCmd() *cobra.Command {
	var (
		clusterDir, policiesDir, node, stateDir, bpffsDir, fastpath, existing, metricsAddr string
		keepOnExit, verbose                                                                bool
		workers                                                                            int
	)
	var apiSocket string
	var kubeconfig string
	var traceAlways bool
	var sampleDrops int
	c := &cobra.Command{
		Use:   "agent",
		Short: "Enforce NetworkPolicy on this node's pods (run in the node's network namespace)",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if node == "" {
				return usageError{fmt.Errorf("--node is required (see '%s --help')", c.CommandPath())}
			}
			if err := checkSourceFlags(clusterDir, kubeconfig); err != nil {
				return usageError{fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())}
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
			src, err := agentSource(clusterDir, policiesDir, kubeconfig, node, log)
			if err != nil {
				return err
			}
			return agent.Run(c.Context(), agent.Config{
				Source:      src,
				Node:        node,
				StateDir:    stateDir,
				BPFFSDir:    bpffsDir,
				Fastpath:    fastpath == "on",
				Mode:        mode,
				KeepOnExit:  keepOnExit,
				Workers:     workers,
				MetricsAddr: metricsAddr,
				APISocket:   apiSocket,
				TraceAlways: traceAlways,
				SampleDrops: sampleDrops,
				Log:         log,
			})
		},
	}
	f := c.Flags()
	f.StringVar(&clusterDir, "cluster", "", "directory of Namespace, Pod and Service YAML, watched for changes")
	f.StringVar(&policiesDir, "policies", "", "directory of NetworkPolicy YAML, watched for changes")
	f.StringVar(&kubeconfig, "kubeconfig", "", "follow the Kubernetes API server of this kubeconfig (default without --cluster: in-cluster config when KUBERNETES_SERVICE_HOST is set)")
	f.StringVar(&node, "node", "", "this node's name: local pods are those with spec.nodeName equal to it")
	f.StringVar(&stateDir, "state-dir", "", "directory for the agent's local state")
	f.StringVar(&bpffsDir, "bpffs-dir", "", "bpffs directory for pinned maps and links (default /sys/fs/bpf/xdpolicy/<node>)")
	f.StringVar(&fastpath, "fastpath", "on", "on: cached verdicts are applied in the kernel; off: every packet of isolated pods goes through the Go workers")
	f.StringVar(&existing, "existing-connections", "revalidate", "on a policy change: revalidate (cut flows now denied) or keep (established flows stay)")
	f.BoolVar(&keepOnExit, "keep-on-exit", false, "leave programs, punt port and pinned maps in place on exit so a restarted agent takes over")
	f.IntVar(&workers, "workers", 0, "slow-path workers (default: one per CPU)")
	f.StringVar(&metricsAddr, "metrics-addr", "127.0.0.1:9090", "address of /metrics, /healthz, /readyz and /debug/pprof/ (port 0: any)")
	f.BoolVarP(&verbose, "verbose", "v", false, "debug logging")
	f.StringVar(&apiSocket, "api-socket", "", "unix socket serving the same API as --metrics-addr, /trace and /explain included (default <state-dir>/agent.sock when --state-dir is set)")
	f.IntVar(&sampleDrops, "sample-drops", 64, "trace 1 in N of the packets the kernel drops on a cached deny (0: none); every drop is counted per pod in /metrics")
	f.BoolVar(&traceAlways, "trace-always", false, "record verdicts even when nobody follows /trace, so 'xdpolicy trace' without --follow shows the latest")
	return c
}
