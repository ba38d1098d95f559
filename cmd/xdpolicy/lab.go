package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/xdpolicy/xdpolicy/control/lab"
	"github.com/xdpolicy/xdpolicy/control/query"
)

func labCmd() *cobra.Command {
	var name string
	c := commandGroup(&cobra.Command{
		Use:   "lab",
		Short: "Build a local multi-node cluster out of network namespaces and run the agent on it",
		Long: `lab builds a cluster on this machine out of network namespaces: nodes
joined by a bridged underlay, one namespace per pod wired like a routed CNI
(pod /32 and /128, host route per pod, proxy ARP/NDP), a server in every pod
on every containerPort, an external namespace on the underlay, and the agent
in every node namespace. Labs are named (--name), so several can coexist;
their state lives in ` + lab.Root + `/NAME.`,
	})
	c.PersistentFlags().StringVar(&name, "name", lab.DefaultName, "lab name")
	c.AddCommand(labUpCmd(&name), labDownCmd(&name), labListCmd(), labApplyCmd(&name, false), labApplyCmd(&name, true), labProbeCmd(&name), labServeCmd(), labForwardCmd())
	return c
}

func labUpCmd(name *string) *cobra.Command {
	var o lab.Options
	var agentArgs string
	c := &cobra.Command{
		Use:   "up --cluster FILE [--nodes N] [--agent=false] [--agent-args ARGS] [--apiserver | --kubeconfig FILE]",
		Short: "Build a lab from Namespaces and Pods",
		Long: `up builds the lab: --nodes node namespaces, one namespace per Pod of
--cluster (spec.nodeName node-K picks the node, other names and no name go
round-robin; status.podIP(s) give the addresses, pods without any get one
from 10.244.K.0/24), and starts the servers and, unless --agent=false, an
agent per node. It fails before creating anything when a lab of that name
exists, and removes what it made when it fails half-way.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if len(o.Cluster) == 0 {
				return usageError{errors.New("--cluster is required: a file or directory with the Namespaces and Pods")}
			}
			o.Name = *name
			o.AgentArgs = strings.Fields(agentArgs)
			o.Warn = os.Stderr
			s, err := lab.Up(o)
			if err != nil {
				return err
			}
			lab.Describe(os.Stdout, s)
			return nil
		},
	}
	c.Flags().StringArrayVar(&o.Cluster, "cluster", nil, "file or directory of Namespaces and Pods (YAML or JSON); repeatable")
	c.Flags().IntVar(&o.Nodes, "nodes", 2, "number of nodes")
	c.Flags().BoolVar(&o.Agent, "agent", true, "run the agent in every node namespace")
	c.Flags().StringVar(&agentArgs, "agent-args", "", "extra arguments for every agent, split at spaces")
	c.Flags().BoolVar(&o.APIServer, "apiserver", false, "start a kube-apiserver + etcd for the lab (built by scripts/k8s/build.sh), create the lab's Nodes, Namespaces and Pods there and run the agents on it; 'lab down' stops it")
	c.Flags().StringVar(&o.Kubeconfig, "kubeconfig", "", "like --apiserver, but on the existing API server of this kubeconfig")
	return c
}

func labDownCmd(name *string) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Stop the lab's agents and servers and remove everything it made",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			existed := lab.Exists(*name)
			if err := lab.Down(*name); err != nil {
				return err
			}
			if existed {
				fmt.Printf("lab %s removed\n", *name)
			} else {
				fmt.Printf("lab %s: nothing to remove\n", *name)
			}
			return nil
		},
	}
}

func labListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the labs present",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			labs, err := lab.List()
			if err != nil {
				return err
			}
			w := bufio.NewWriter(os.Stdout)
			defer w.Flush()
			for _, s := range labs {
				agents := 0
				for _, p := range s.Procs {
					if p.Role == "agent" {
						agents++
					}
				}
				if s.Index == 0 {
					fmt.Fprintf(w, "%-24s incomplete (remove with 'xdpolicy lab down --name %s')\n", s.Name, s.Name)
					continue
				}
				fmt.Fprintf(w, "%-24s index %-3d nodes %d  pods %-3d agents %d  %s\n", s.Name, s.Index, len(s.Nodes), len(s.Pods), agents, s.Dir)
			}
			return nil
		},
	}
}

func labApplyCmd(name *string, del bool) *cobra.Command {
	var files []string
	use, short := "apply -f FILE", "Add or replace NetworkPolicies, change Namespace and Pod labels"
	if del {
		use, short = "delete -f FILE", "Remove NetworkPolicies"
	}
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Long: short + ` in the lab's cluster and policy
directories, which the agents watch. Pods cannot be added or removed.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return usageError{errors.New("-f is required: a file, directory or - for stdin")}
			}
			s, err := lab.Load(*name)
			if err != nil {
				return err
			}
			fn := lab.Apply
			if del {
				fn = lab.Delete
			}
			lines, err := fn(s.Dir, files)
			if err != nil {
				return err
			}
			for _, l := range lines {
				fmt.Println(l)
			}
			return nil
		},
	}
	c.Flags().StringArrayVarP(&files, "filename", "f", nil, "file or directory of objects (YAML or JSON), - for stdin; repeatable")
	return c
}

func labProbeCmd(name *string) *cobra.Command {
	var ports []string
	var output, family string
	var expect bool
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "probe [--port N/PROTO] [-o table|json] [--expect] [--timeout 300ms] [--family 4|6]",
		Short: "Try every flow for real and print what got through",
		Long: `probe connects from every pod and from external to every pod, from inside
the source's namespace, in parallel: TCP connect and read the server's reply
(its ns/pod name), UDP send and wait for the reply, SCTP connect (on a
kernel without SCTP, an INIT from a raw socket answered by the pod's server
with an ABORT naming the pod). A refused attempt reached the pod and counts
as allowed. The output
is that of 'xdpolicy probe' with "allowed" observed (the egress and ingress
explanations are the prediction's), plus "observed": true and an
"observation" note. --expect also predicts every cell from the lab's
cluster and policies and fails on any difference (a pod's cells to itself
are not judged). --port defaults to every containerPort of every pod.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usageError{fmt.Errorf("-o %q: want table or json", output)}
			}
			if family != "" && family != "4" && family != "6" {
				return usageError{fmt.Errorf("--family %q: want 4 or 6", family)}
			}
			o := lab.ProbeOptions{Family: family, Timeout: timeout, Warn: os.Stderr}
			for _, s := range ports {
				p, err := query.ParsePort(s)
				if err != nil {
					return usageError{err}
				}
				o.Ports = append(o.Ports, p)
			}
			s, err := lab.Load(*name)
			if err != nil {
				return err
			}
			r, err := lab.Probe(s, o)
			if err != nil {
				return err
			}
			w := bufio.NewWriter(os.Stdout)
			if output == "json" {
				for i := range r.Observed {
					if err := writeJSONLine(w, &r.Observed[i]); err != nil {
						return err
					}
				}
			} else {
				query.WriteTable(w, r.From, r.To, r.Ports, r.Results())
			}
			if err := w.Flush(); err != nil {
				return err
			}
			if expect {
				if d := r.Diff(); len(d) > 0 {
					for _, l := range d {
						fmt.Fprintln(os.Stderr, "differs:", l)
					}
					return fmt.Errorf("%d of %d cells differ from the prediction", len(d), len(r.Predicted))
				}
				fmt.Fprintf(os.Stderr, "all %d cells match the prediction\n", len(r.Predicted))
			}
			return nil
		},
	}
	c.Flags().StringArrayVar(&ports, "port", nil, "port to probe as N/PROTO (TCP, UDP or SCTP); repeatable")
	c.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	c.Flags().BoolVar(&expect, "expect", false, "compare with the prediction and exit 1 on any difference")
	c.Flags().DurationVar(&timeout, "timeout", 300*time.Millisecond, "how long each attempt waits")
	c.Flags().StringVar(&family, "family", "", "address family to probe: 4 or 6 (default: each destination's first address, as 'xdpolicy probe')")
	return c
}

// labServeCmd is the server `lab up` starts inside every pod namespace.
func labServeCmd() *cobra.Command {
	var pod, pidfile string
	var ports []string
	c := &cobra.Command{
		Use:    "serve --pod NS/NAME --port N/PROTO… --pidfile FILE",
		Short:  "Answer on every port with the pod's name (run by lab up inside a pod)",
		Hidden: true,
		Args:   noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if pod == "" || pidfile == "" {
				return usageError{errors.New("--pod and --pidfile are required")}
			}
			return lab.Serve(c.Context(), pod, ports, pidfile, os.Stderr)
		},
	}
	c.Flags().StringVar(&pod, "pod", "", "the pod's ns/name, the reply")
	c.Flags().StringArrayVar(&ports, "port", nil, "N/PROTO to serve; repeatable")
	c.Flags().StringVar(&pidfile, "pidfile", "", "written once every socket is bound")
	return c
}

// writeJSONLine writes one observed cell as a JSON line, like query.WriteJSON.
func writeJSONLine(w *bufio.Writer, v *lab.Observation) error {
	return json.NewEncoder(w).Encode(v)
}
