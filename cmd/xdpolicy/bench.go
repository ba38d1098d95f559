package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/xdpolicy/xdpolicy/bench/harness"
	"github.com/xdpolicy/xdpolicy/bench/pktgen"
)

func benchCmd() *cobra.Command {
	var (
		scenarios                 []string
		policies, pods            []int
		duration                  time.Duration
		reps, flows, workers      int
		seed                      uint64
		output, proto, resultsDir string
		profileDir, binary        string
		quiet                     bool
	)
	c := &cobra.Command{
		Use:   "bench",
		Short: "Packets per second through the dataplane, side by side with no enforcement and nftables (needs root)",
		Long: `Builds a node namespace with a generator pod and a sink pod, runs the
AF_XDP generator against it with no enforcement, with the same policies
compiled to nftables, and with the xdpolicy agent, and prints one JSON object
(or table row) per scenario and scale.

The cluster is synthetic: --pods pods (objects only) and --policies
policies, half of which (at least one) are written to select the sink, each
with rules over many pod identities, its share of the 10k ipBlock CIDRs
(with except holes), named ports, a share of the generator's addresses and
the denied port for other peers; so the policies axis sets how many clauses
decide every generated flow. pps figures are medians over --reps (with min
and max); first-packet latency percentiles are over every repetition's
probes, and lost probes are counted for each dataplane. See
bench/README.md.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if output != "json" && output != "table" {
				return usageError{fmt.Errorf("-o %q: want json or table", output)}
			}
			pr, err := pktgen.ParseProto(proto)
			if err != nil {
				return usageError{err}
			}
			if len(scenarios) == 1 && scenarios[0] == "all" {
				scenarios = harness.Scenarios
			}
			for _, s := range scenarios {
				if !contains(harness.Scenarios, s) {
					return usageError{fmt.Errorf("--scenario %q: want %s or all", s, strings.Join(harness.Scenarios, ", "))}
				}
			}
			if binary == "" {
				if binary, err = os.Executable(); err != nil {
					return err
				}
			}
			if profileDir != "" {
				if err := os.MkdirAll(profileDir, 0o755); err != nil {
					return err
				}
			}
			log := os.Stderr
			logw := func() *os.File {
				if quiet {
					return nil
				}
				return log
			}()
			var results []*harness.Result
			enc := json.NewEncoder(os.Stdout)
			if output == "table" {
				fmt.Println(harness.TableHeader())
			}
			for _, pol := range policies {
				for _, np := range pods {
					for _, s := range scenarios {
						o := harness.Options{Scenario: s, Policies: pol, Pods: np, Duration: duration, Reps: reps, Seed: seed,
							Proto: pr, Flows: flows, Workers: workers, Binary: binary, ProfileDir: profileDir}
						if logw != nil {
							o.Log = logw
						}
						r, err := harness.Run(c.Context(), o)
						if err != nil {
							return fmt.Errorf("%s, %d policies, %d pods: %w", s, pol, np, err)
						}
						results = append(results, r)
						if output == "json" {
							if err := enc.Encode(r); err != nil {
								return err
							}
						} else {
							fmt.Println(harness.TableRow(r))
						}
					}
				}
			}
			if resultsDir != "" {
				cmdline := "xdpolicy " + strings.Join(os.Args[1:], " ")
				if err := harness.WriteResults(resultsDir, cmdline, results); err != nil {
					return err
				}
				fmt.Fprintf(log, "results written to %s\n", resultsDir)
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringSliceVar(&scenarios, "scenario", []string{harness.NewFlows}, "new-flows, established, fastpath-off (comma-separated or repeated), or all")
	f.IntSliceVar(&policies, "policies", []int{10}, "synthetic NetworkPolicies, half of them written to select the sink (comma-separated for a matrix)")
	f.IntSliceVar(&pods, "pods", []int{100}, "synthetic pods, objects only (comma-separated for a matrix)")
	f.DurationVar(&duration, "duration", 2*time.Second, "length of each measurement")
	f.IntVar(&reps, "reps", 1, "repetitions (pps: median and min/max; latency: percentiles over all of them)")
	f.Uint64Var(&seed, "seed", 1, "seed of the synthetic cluster and of the generator's flows")
	f.StringVar(&proto, "proto", "udp", "load: udp (64-byte datagrams) or tcp (SYNs)")
	f.IntVar(&flows, "flows", 256, "flows of the established and fastpath-off scenarios")
	f.IntVar(&workers, "workers", 0, "agent --workers (default one per CPU)")
	f.StringVarP(&output, "output", "o", "json", "json (one object per line) or table (Markdown)")
	f.StringVar(&resultsDir, "results-dir", "", "also write results.json, results.md and the charts ("+harness.PPSPlot+", "+harness.LatencyPlot+") here")
	f.StringVar(&profileDir, "profile", "", "save a CPU profile of the agent (its /debug/pprof/profile) per run here")
	f.StringVar(&binary, "binary", "", "xdpolicy executable to run the agent from (default: this one)")
	f.BoolVarP(&quiet, "quiet", "q", false, "no progress on stderr")
	return c
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
