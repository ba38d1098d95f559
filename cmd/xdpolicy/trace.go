package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/xdpolicy/xdpolicy/control/kubeops"
	"github.com/xdpolicy/xdpolicy/control/lab"
	"github.com/xdpolicy/xdpolicy/dataplane/trace"
)

// agentFlags says how to reach a running agent's API.
type agentFlags struct {
	addr, socket, lab, node, kubeconfig string
}

func (a *agentFlags) register(c *cobra.Command) {
	f := c.Flags()
	f.StringVar(&a.addr, "agent", "127.0.0.1:9090", "the agent's --metrics-addr (host:port or http://host:port)")
	f.StringVar(&a.socket, "socket", "", "the agent's unix socket (--api-socket, or agent.sock in its --state-dir) instead of --agent")
	f.StringVar(&a.lab, "lab", "", "reach the agent of a lab node through its socket (with --node; default lab name "+lab.DefaultName+")")
	f.StringVar(&a.node, "node", "", "the lab node whose agent to ask (e.g. node-1; implies --lab "+lab.DefaultName+" when --lab is not given), or with --kubeconfig the only cluster node to ask")
	f.StringVar(&a.kubeconfig, "kubeconfig", "", "reach every node's agent of a cluster through its API server (port-forward to the DaemonSet's pods, with this kubeconfig's RBAC)")
}

// target is one agent to ask.
type target struct {
	node string // set when asking a cluster's agents
	cl   *http.Client
	base string
	name string // for errors
}

// targets returns the agents to ask and a function that releases them: one
// agent (--agent, --socket, --lab/--node), or every node's through the API
// server (--kubeconfig).
func (a *agentFlags) targets(ctx context.Context) ([]target, func(), error) {
	if a.kubeconfig == "" {
		cl, base, name, err := a.client()
		if err != nil {
			return nil, nil, err
		}
		return []target{{cl: cl, base: base, name: name}}, func() {}, nil
	}
	if a.socket != "" || a.lab != "" {
		return nil, nil, usageError{errors.New("--kubeconfig reaches the cluster's agents: drop --socket and --lab")}
	}
	c, err := kubeops.Connect(ctx, kubeops.Options{Kubeconfig: a.kubeconfig, Node: a.node})
	if err != nil {
		return nil, nil, err
	}
	var ts []target
	for _, ag := range c.Agents {
		ts = append(ts, target{node: ag.Node, cl: http.DefaultClient, base: ag.Base, name: "pod " + ag.Pod + " on node " + ag.Node})
	}
	return ts, c.Close, nil
}

// client returns an HTTP client for the agent, the base URL, and how to
// name the agent in errors.
func (a *agentFlags) client() (*http.Client, string, string, error) {
	socket := a.socket
	if a.lab != "" || a.node != "" {
		name := a.lab
		if name == "" {
			name = lab.DefaultName
		}
		if a.node == "" {
			return nil, "", "", usageError{errors.New("--lab needs --node (e.g. --node node-1)")}
		}
		s, err := lab.Load(name)
		if err != nil {
			return nil, "", "", err
		}
		for _, n := range s.Nodes {
			if n.Name == a.node {
				socket = n.API
			}
		}
		if socket == "" {
			return nil, "", "", fmt.Errorf("lab %s has no agent socket for node %q (nodes are node-1…node-%d; was it brought up with agents?)", name, a.node, len(s.Nodes))
		}
	}
	if socket != "" {
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}}
		return &http.Client{Transport: tr}, "http://agent", "socket " + socket, nil
	}
	base := a.addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	u, err := url.Parse(base)
	if err != nil || u.Host == "" {
		return nil, "", "", usageError{fmt.Errorf("--agent %q: want host:port or http://host:port", a.addr)}
	}
	return http.DefaultClient, strings.TrimRight(base, "/"), u.Host, nil
}

// get fetches path from the agent and fails with a clear message when no
// agent answers or it refuses the request.
func (t target) get(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := t.cl.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("no agent at %s: is `xdpolicy agent` running? use --agent, --socket, --node or --kubeconfig (%v)", t.name, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		msg := strings.TrimSpace(string(b))
		if resp.StatusCode == http.StatusNotFound {
			msg = "this agent has no " + strings.SplitN(path, "?", 2)[0] + " endpoint (an older version?)"
		}
		return nil, fmt.Errorf("agent at %s: %s: %s", t.name, resp.Status, msg)
	}
	return resp, nil
}

func traceCmd() *cobra.Command {
	var (
		af     agentFlags
		f      trace.Filter
		follow bool
		output string
	)
	c := &cobra.Command{
		Use:   "trace [--agent ADDR|--socket PATH|--node NODE|--kubeconfig FILE [--node NODE]] [--pod ns/name] [--namespace ns] [--verdict allow|deny] [--follow] [-o text|json]",
		Short: "Stream the slow path's per-flow verdicts from a running agent, with the deciding rule",
		Long: `trace prints the verdicts the agent's workers take (every new flow, and
flows whose cached verdict expired or went stale), one per line: time, node,
hook, 5-tuple, pods, ALLOW/DENY, the deciding policy and rule or why nothing
matched, snapshot generation and decision latency.

The agent records only while someone follows (unless it runs with
--trace-always), so use --follow and then make the connection you want to
see. Verdicts the kernel applies from its cache (established flows, and
repeated denies within 2 s) are not traced one by one: drops are counted
per pod in /metrics (xdpolicy_fastpath_drops_total) and 1 in the agent's
--sample-drops is traced with source fastpath-sample.

With --kubeconfig FILE it reaches every node's agent of a cluster through
the API server, as kubectl port-forward does (your RBAC needs list on pods
and create on pods/portforward in xdpolicy-system), and merges their
streams; each line names its node. --node NODE keeps one node.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return usageError{fmt.Errorf("-o %q: want text or json", output)}
			}
			if _, err := trace.ParseFilter(f.Query()); err != nil {
				return usageError{err}
			}
			q := f.Query()
			if follow {
				q.Set("follow", "1")
			}
			ts, release, err := af.targets(c.Context())
			if err != nil {
				return err
			}
			defer release()
			return streamTrace(c.Context(), ts, "/trace?"+q.Encode(), output == "json", follow)
		},
	}
	af.register(c)
	fl := c.Flags()
	fl.StringVar(&f.Pod, "pod", "", "only flows from or to this pod (ns/name)")
	fl.StringVar(&f.Namespace, "namespace", "", "only flows from or to pods of this namespace")
	fl.StringVar(&f.Verdict, "verdict", "", "only allow or deny verdicts")
	fl.BoolVarP(&follow, "follow", "f", false, "stream verdicts as they are taken until interrupted")
	fl.StringVarP(&output, "output", "o", "text", "text (one line per verdict) or json (the agent's NDJSON)")
	return c
}

// streamTrace prints the verdicts of every target, merged as they arrive
// (each line names its node), until all streams end.
func streamTrace(ctx context.Context, ts []target, path string, raw, follow bool) error {
	var resps []*http.Response
	defer func() {
		for _, r := range resps {
			r.Body.Close()
		}
	}()
	for _, t := range ts {
		resp, err := t.get(ctx, path)
		if err != nil {
			return err
		}
		resps = append(resps, resp)
	}
	if follow {
		fmt.Fprintf(os.Stderr, "following verdicts of %d agent(s); interrupt to stop\n", len(ts))
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	var mu sync.Mutex
	lines := 0
	errs := make([]error, len(ts))
	var wg sync.WaitGroup
	for i, resp := range resps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				line := sc.Bytes()
				if !raw {
					var en trace.Entry
					if err := json.Unmarshal(line, &en); err != nil {
						errs[i] = fmt.Errorf("agent at %s sent a bad line: %w", ts[i].name, err)
						return
					}
					line = []byte(en.Text())
				}
				mu.Lock()
				lines++
				out.Write(line)
				out.WriteByte('\n')
				if follow {
					out.Flush()
				}
				mu.Unlock()
			}
			if err := sc.Err(); err != nil && ctx.Err() == nil {
				errs[i] = fmt.Errorf("reading the trace of %s: %w", ts[i].name, err)
			}
		}()
	}
	wg.Wait()
	if !follow && lines == 0 && resps[0].Header.Get("X-Xdpolicy-Trace-Recording") != "always" {
		fmt.Fprintln(os.Stderr, "no verdicts recorded: the agent records only while someone follows; use --follow (or run the agent with --trace-always)")
	}
	return errors.Join(errs...)
}

// explainLive asks the agents to explain a flow against their current
// snapshots and copies the answers to w, each headed by its node when the
// agents are a cluster's (--kubeconfig).
func explainLive(ctx context.Context, af *agentFlags, w io.Writer, from, to, port string) error {
	ts, release, err := af.targets(ctx)
	if err != nil {
		return err
	}
	defer release()
	q := url.Values{"from": {from}, "to": {to}, "port": {port}}
	for _, t := range ts {
		resp, err := t.get(ctx, "/explain?"+q.Encode())
		if err != nil {
			return err
		}
		if t.node != "" {
			fmt.Fprintf(w, "node %s:\n", t.node)
		}
		_, err = io.Copy(w, resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
	}
	return nil
}
