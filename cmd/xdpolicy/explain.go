package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/xdpolicy/xdpolicy/control/query"
)

func explainCmd() *cobra.Command {
	var in inputs
	var port, from, to string
	var live bool
	var af agentFlags
	c := &cobra.Command{
		Use:   "explain (--cluster PATH [--policies PATH] | --live [--agent ADDR|--socket PATH|--node NODE|--kubeconfig FILE]) --from X --to Y --port N/PROTO",
		Short: "Explain one flow: which policies select each side and which rule decided",
		Long: `explain decides one flow like probe and says why: for the source pod's
egress and the destination pod's ingress, which policies select the pod,
which rule admitted the flow, or for each rule whether its peer or its port
failed to match. X and Y are ns/pod or an IP address.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if from == "" || to == "" || port == "" {
				return usageError{fmt.Errorf("--from, --to and --port are required")}
			}
			p, err := query.ParsePort(port)
			if err != nil {
				return usageError{err}
			}
			if live {
				return explainLive(c.Context(), &af, os.Stdout, from, to, port)
			}
			q, err := in.load()
			if err != nil {
				return err
			}
			src, err := one(q, "--from", from)
			if err != nil {
				return err
			}
			dst, err := one(q, "--to", to)
			if err != nil {
				return err
			}
			q.Explain(os.Stdout, src, dst, p)
			return nil
		},
	}
	in.register(c)
	c.Flags().StringVar(&port, "port", "", "port as N/PROTO (TCP, UDP or SCTP)")
	c.Flags().StringVar(&from, "from", "", "source: ns/pod or an IP address")
	c.Flags().StringVar(&to, "to", "", "destination: ns/pod or an IP address")
	c.Flags().BoolVar(&live, "live", false, "ask a running agent, against the snapshot it enforces now (no --cluster/--policies)")
	af.register(c)
	return c
}

func one(q *query.Query, flag, spec string) (query.Endpoint, error) {
	es, err := q.Endpoints([]string{spec})
	if err != nil {
		return query.Endpoint{}, usageError{fmt.Errorf("%s %w", flag, err)}
	}
	if len(es) != 1 {
		return query.Endpoint{}, usageError{fmt.Errorf("%s %q names %d pods; name one", flag, spec, len(es))}
	}
	return es[0], nil
}
