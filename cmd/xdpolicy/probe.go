package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/control/query"
)

// inputs are the flags probe and explain share.
type inputs struct {
	cluster, policies []string
}

func (in *inputs) register(c *cobra.Command) {
	c.Flags().StringArrayVar(&in.cluster, "cluster", nil, "file or directory of Namespaces, Pods and Services (YAML or JSON, e.g. `kubectl get ns,pods,svc -A -o yaml`); repeatable")
	c.Flags().StringArrayVar(&in.policies, "policies", nil, "file or directory of NetworkPolicies; repeatable")
}

// load reads and compiles the inputs; nothing is printed on error except
// the warning line for skipped objects.
func (in *inputs) load() (*query.Query, error) {
	if len(in.cluster) == 0 {
		return nil, usageError{errors.New("--cluster is required: a file or directory with the cluster's Namespaces and Pods")}
	}
	res, err := model.Load(append(append([]string{}, in.cluster...), in.policies...)...)
	if err != nil {
		return nil, err
	}
	if res.Skipped != "" {
		fmt.Fprintln(os.Stderr, "warning:", res.Skipped)
	}
	q, problems := query.New(res.Cluster)
	if len(problems) > 0 {
		return nil, problems[0]
	}
	return q, nil
}

func probeCmd() *cobra.Command {
	var in inputs
	var ports, from, to []string
	var output string
	c := &cobra.Command{
		Use:   "probe --cluster PATH [--policies PATH] [--port N/PROTO] [--from X] [--to Y] [-o table|json]",
		Short: "Print the reachability truth table that the policies imply, offline",
		Long: `probe compiles the policies exactly as the agent does and prints, for every
source, destination and port, whether the flow is allowed: a matrix per port
(-o table) or one JSON object per flow with the egress and ingress verdicts
and the policies and rules that decided them (-o json).

--from and --to take ns/pod, ns/* or an IP address (an address no pod owns is
an external peer); default: every pod. --port defaults to every containerPort
of every pod.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usageError{fmt.Errorf("-o %q: want table or json", output)}
			}
			q, err := in.load()
			if err != nil {
				return err
			}
			ps := q.DefaultPorts()
			if len(ports) > 0 {
				ps = nil
				for _, s := range ports {
					p, err := query.ParsePort(s)
					if err != nil {
						return usageError{err}
					}
					ps = append(ps, p)
				}
			}
			if len(ps) == 0 {
				return usageError{errors.New("no ports to probe: the pods declare no containerPorts, give --port N/PROTO")}
			}
			src, err := q.Endpoints(from)
			if err != nil {
				return usageError{fmt.Errorf("--from %w", err)}
			}
			dst, err := q.Endpoints(to)
			if err != nil {
				return usageError{fmt.Errorf("--to %w", err)}
			}
			results := q.Matrix(src, dst, ps)
			w := bufio.NewWriter(os.Stdout)
			defer w.Flush()
			if output == "json" {
				return query.WriteJSON(w, results)
			}
			query.WriteTable(w, src, dst, ps, results)
			return nil
		},
	}
	in.register(c)
	c.Flags().StringArrayVar(&ports, "port", nil, "port to probe as N/PROTO (TCP, UDP or SCTP); repeatable")
	c.Flags().StringArrayVar(&from, "from", nil, "sources: ns/pod, ns/* or an IP address; repeatable")
	c.Flags().StringArrayVar(&to, "to", nil, "destinations: ns/pod, ns/* or an IP address; repeatable")
	c.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return c
}
