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

	"github.com/spf13/cobra"

	"github.com/xdpolicy/xdpolicy/control/lab"
	"github.com/xdpolicy/xdpolicy/dataplane/trace"
)

// agentFlags says how to reach a running agent's API.
type agentFlags struct {
	addr, socket, lab, node string
}

func (a *agentFlags) register(c *cobra.Command) {
	f := c.Flags()
	f.StringVar(&a.addr, "agent", "127.0.0.1:9090", "the agent's --metrics-addr (host:port or http://host:port)")
	f.StringVar(&a.socket, "socket", "", "the agent's unix socket (--api-socket, or agent.sock in its --state-dir) instead of --agent")
	f.StringVar(&a.lab, "lab", "", "reach the agent of a lab node through its socket (with --node; default lab name "+lab.DefaultName+")")
	f.StringVar(&a.node, "node", "", "the lab node whose agent to ask (e.g. node-1); implies --lab "+lab.DefaultName+" when --lab is not given")
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
func (a *agentFlags) get(ctx context.Context, path string) (*http.Response, error) {
	cl, base, name, err := a.client()
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := cl.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		hint := "use --agent or --socket"
		if a.socket != "" || a.node != "" {
			hint = "check the path"
		}
		return nil, fmt.Errorf("no agent at %s: is `xdpolicy agent` running? %s (%v)", name, hint, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		msg := strings.TrimSpace(string(b))
		if resp.StatusCode == http.StatusNotFound {
			msg = "this agent has no " + strings.SplitN(path, "?", 2)[0] + " endpoint (an older version?)"
		}
		return nil, fmt.Errorf("agent at %s: %s: %s", name, resp.Status, msg)
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
		Use:   "trace [--agent ADDR|--socket PATH|--node NODE] [--pod ns/name] [--namespace ns] [--verdict allow|deny] [--follow] [-o text|json]",
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
--sample-drops is traced with source fastpath-sample.`,
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
			resp, err := af.get(c.Context(), "/trace?"+q.Encode())
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if follow {
				fmt.Fprintln(os.Stderr, "following verdicts; interrupt to stop")
			}
			out := bufio.NewWriter(os.Stdout)
			defer out.Flush()
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			lines := 0
			for sc.Scan() {
				lines++
				if output == "json" {
					out.Write(sc.Bytes())
					out.WriteByte('\n')
				} else {
					var en trace.Entry
					if err := json.Unmarshal(sc.Bytes(), &en); err != nil {
						return fmt.Errorf("agent sent a bad line: %w", err)
					}
					fmt.Fprintln(out, en.Text())
				}
				if follow {
					out.Flush()
				}
			}
			if err := sc.Err(); err != nil && c.Context().Err() == nil {
				return fmt.Errorf("reading the trace: %w", err)
			}
			if !follow && lines == 0 && resp.Header.Get("X-Xdpolicy-Trace-Recording") != "always" {
				fmt.Fprintln(os.Stderr, "no verdicts recorded: the agent records only while someone follows; use --follow (or run the agent with --trace-always)")
			}
			return nil
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

// explainLive asks the agent to explain a flow against its current
// snapshot and copies its answer to w.
func explainLive(ctx context.Context, af *agentFlags, w io.Writer, from, to, port string) error {
	q := url.Values{"from": {from}, "to": {to}, "port": {port}}
	resp, err := af.get(ctx, "/explain?"+q.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	return err
}
