package lab_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xdpolicy/xdpolicy/control/lab"
	"github.com/xdpolicy/xdpolicy/dataplane/trace"
)

// agentGet fetches path from a lab node's agent through its unix socket.
func agentGet(ctx context.Context, socket, path string) (*http.Response, error) {
	cl := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent"+path, nil)
	return cl.Do(req)
}

func agentBody(t *testing.T, socket, path string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := agentGet(ctx, socket, path)
	if err != nil {
		t.Fatalf("GET %s on %s: %v", path, socket, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// syncBuffer is a bytes.Buffer that a process's output can be copied into
// (os/exec does so from a goroutine of its own) while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// connect opens a TCP connection from a lab pod to addr (bash's /dev/tcp
// inside the pod's namespace); it reports whether it was established.
func connect(s *lab.State, from, addr string) bool {
	host, port, _ := net.SplitHostPort(addr)
	for _, p := range s.Pods {
		if p.ID() == from {
			cmd := exec.Command("ip", "netns", "exec", p.Netns, "timeout", "2", "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%s", host, port))
			return cmd.Run() == nil
		}
	}
	panic("no pod " + from)
}

// TestTraceAndExplainLive: on a 2-node lab with agents and
// backend-allow-frontend applied, the backend node's agent traces the
// allowed connection from frontend with the policy and rule and the denied
// one from monitoring/prometheus with "no rule matched" and the selecting
// policy; /metrics has the new metric names, /debug/pprof/ answers,
// `xdpolicy trace --follow` prints a line for a new connection, and
// `xdpolicy explain --live` prints what the offline explain prints.
func TestTraceAndExplainLive(t *testing.T) {
	needAgentLab(t)
	t.Parallel()
	ex := filepath.Join("..", "..", "deploy", "examples", "03-frontend-backend")
	s := upLab(t, "trace", filepath.Join(ex, "cluster.yaml"), true)
	if _, err := lab.Apply(s.Dir, []string{filepath.Join(ex, "1-backend-allow-frontend")}); err != nil {
		t.Fatal(err)
	}
	var node2 lab.Node
	for _, n := range s.Nodes {
		if n.Name == "node-2" { // backend's node
			node2 = n
		}
	}
	if node2.API == "" {
		t.Fatalf("lab state has no agent socket for node-2: %+v", s.Nodes)
	}
	explainQ := "/explain?from=monitoring/prometheus&to=default/backend&port=80/TCP"
	deadline := time.Now().Add(settle)
	for {
		code, body := agentBody(t, node2.API, explainQ)
		if code == 200 && strings.Contains(body, "DENIED") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent never explained a deny: %d %s\n%s", code, body, agentLogs(s))
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Follow the trace of node-2, then connect.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := agentGet(ctx, node2.API, "/trace?follow=1&pod=default/backend")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /trace: %v %v", err, resp)
	}
	entries := make(chan trace.Entry, 100)
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var en trace.Entry
			if json.Unmarshal(sc.Bytes(), &en) == nil {
				entries <- en
			}
		}
		close(entries)
	}()
	if !connect(s, "default/frontend", "10.244.2.20:80") {
		t.Errorf("frontend → backend:80 failed")
	}
	if connect(s, "monitoring/prometheus", "10.244.2.20:80") {
		t.Errorf("prometheus → backend:80 connected")
	}
	var allow, deny *trace.Entry
	for allow == nil || deny == nil {
		select {
		case en, ok := <-entries:
			if !ok {
				t.Fatal("trace stream ended")
			}
			t.Logf("trace: %s", en.Text())
			switch {
			case en.Verdict == "allow" && en.SrcPod == "default/frontend" && en.Hook == "ingress":
				allow = &en
			case en.Verdict == "deny" && en.SrcPod == "monitoring/prometheus":
				deny = &en
			}
		case <-ctx.Done():
			t.Fatalf("no allow and deny records within 30 s (allow %v, deny %v)", allow, deny)
		}
	}
	cancel()
	if allow.DstPod != "default/backend" || allow.Policy != "default/backend-allow-frontend" || allow.Rule == nil || *allow.Rule != 0 ||
		allow.Reason != "rule-matched" || allow.Node != "node-2" || allow.Generation == 0 {
		t.Errorf("allow record: %+v", allow)
	}
	if deny.DstPod != "default/backend" || deny.Reason != "no-rule-matched" ||
		deny.Why != "ingress of default/backend selected by default/backend-allow-frontend, no rule matched" {
		t.Errorf("deny record: %+v", deny)
	}

	// Metrics and pprof.
	_, metrics := agentBody(t, node2.API, "/metrics")
	for _, name := range []string{
		"xdpolicy_slowpath_verdicts_total", "xdpolicy_slowpath_decision_seconds_bucket", "xdpolicy_compile_duration_seconds_bucket",
		"xdpolicy_snapshot_generation", "xdpolicy_flow_cache_entries", "xdpolicy_flow_cache_capacity",
		"xdpolicy_afxdp_ring_events_total", "xdpolicy_afxdp_reinject_events_total", "xdpolicy_tcx_packets_total",
		"xdpolicy_trace_records_total", "xdpolicy_reinjected_frames_total",
	} {
		if !regexp.MustCompile(`(?m)^` + name + `[{ ]`).MatchString(metrics) {
			t.Errorf("/metrics has no %s", name)
		}
	}
	if code, body := agentBody(t, node2.API, "/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/: %d", code)
	}

	// The CLI: trace --follow shows a line for a new connection.
	cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer ccancel()
	cmd := exec.CommandContext(cctx, binary, "trace", "--lab", s.Name, "--node", "node-2", "--follow", "--verdict", "allow")
	out, _ := cmd.StdoutPipe()
	var stderr syncBuffer // written by os/exec's copying goroutine while read here
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	for !strings.Contains(stderr.String(), "following") && cctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	if !connect(s, "default/frontend", "10.244.2.20:80") {
		t.Errorf("frontend → backend:80 failed")
	}
	got := ""
	for got == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("xdpolicy trace ended: %s", stderr.String())
			}
			if strings.Contains(l, "ALLOW") && strings.Contains(l, "→ default/backend") {
				got = l
			}
		case <-cctx.Done():
			t.Fatalf("xdpolicy trace --follow printed no line for the new connection; stderr: %s", stderr.String())
		}
	}
	t.Logf("xdpolicy trace: %s", got)
	if !strings.Contains(got, "default/backend-allow-frontend ingress[0]") || !strings.Contains(got, "node-2") {
		t.Errorf("trace line lacks the rule or node: %s", got)
	}
	ccancel()
	cmd.Wait()

	// explain --live equals offline explain.
	for _, pair := range [][2]string{{"monitoring/prometheus", "default/backend"}, {"default/frontend", "default/backend"}} {
		live, err := exec.Command(binary, "explain", "--live", "--lab", s.Name, "--node", "node-2", "--from", pair[0], "--to", pair[1], "--port", "80/TCP").CombinedOutput()
		if err != nil {
			t.Fatalf("explain --live: %v\n%s", err, live)
		}
		offline, err := exec.Command(binary, "explain", "--cluster", lab.ClusterDir(s.Dir), "--policies", lab.PoliciesDir(s.Dir), "--from", pair[0], "--to", pair[1], "--port", "80/TCP").CombinedOutput()
		if err != nil {
			t.Fatalf("explain: %v\n%s", err, offline)
		}
		if string(live) != string(offline) {
			t.Errorf("explain --live differs from offline:\n%s\nvs\n%s", live, offline)
		}
	}
	// A clear error when no agent answers.
	msg, err := exec.Command(binary, "trace", "--agent", "127.0.0.1:1").CombinedOutput()
	if err == nil || !strings.Contains(string(msg), "no agent at 127.0.0.1:1: is `xdpolicy agent` running?") {
		t.Errorf("trace with no agent: %v %s", err, msg)
	}
}
