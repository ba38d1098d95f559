package agent_test

import (
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The Service of TestAgentServiceEgress: kube-proxy is emulated by one
// nftables DNAT rule in the node netns, ClusterIP:80 → backend:8080.
const (
	svcClusterIP = "10.96.0.10"
	svcYAML      = `apiVersion: v1
kind: Service
metadata: {name: backend, namespace: default}
spec:
  type: ClusterIP
  clusterIP: ` + svcClusterIP + `
  clusterIPs: [` + svcClusterIP + `]
  selector: {app: backend}
  ports: [{protocol: TCP, port: 80, targetPort: 8080}]
`
)

// clientEgressTo allows the client's egress only to pods labelled app=<app>
// on TCP 8080, the backend's port: policy names the real destination, not
// the Service.
func clientEgressTo(app string) string {
	return `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: default}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: ` + app + `}}}]
    ports: [{protocol: TCP, port: 8080}]
`
}

// TestAgentServiceEgress checks that egress to a Service ClusterIP is
// enforced on the backend it is DNATed to: the leaving hook sees the
// ClusterIP and defers, the backend's entering hook (after DNAT) decides
// egress(client) ∧ ingress(backend). The backend has no policy of its own,
// so only the deferred egress check can block it.
func TestAgentServiceEgress(t *testing.T) {
	e := newEnv(t, 3, "client", "backend", "other")
	client, backend, other := e.pods[0], e.pods[1], e.pods[2]
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("skipping: needs nftables' nft to emulate kube-proxy's DNAT")
	}
	e.appendCluster(svcYAML)
	table := "xdpolicy_test_" + strings.ReplaceAll(e.tag, "-", "_")
	rules := fmt.Sprintf(`table ip %s {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %s tcp dport 80 dnat to %s:8080
	}
}
`, table, svcClusterIP, backend.v4)
	cmd := exec.Command("ip", "netns", "exec", e.node, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("skipping: cannot add an nftables DNAT rule (nf_tables/nf_nat): %v\n%s", err, out)
	}
	// Deleting the node netns removes the table too; this keeps it tidy
	// when the netns outlives the test (it never should).
	t.Cleanup(func() { exec.Command("ip", "netns", "exec", e.node, "nft", "delete", "table", "ip", table).Run() })

	serve(t, backend.ns, 8080, 9000)
	serve(t, other.ns, 8080, 9000)
	a := e.startAgent()
	a.waitEnforced(t, 1)
	if strings.Contains(a.logs(), "skipped") {
		t.Errorf("the agent skipped objects of the cluster YAML:\n%s", a.logs())
	}

	svc := hostPort(svcClusterIP, 80)
	expect := func(what string, got, want bool) {
		t.Helper()
		if got != want {
			t.Errorf("%s: reachable=%v, want %v", what, got, want)
		}
	}
	if !tcpOK(t, client.ns, svc) {
		t.Fatalf("no policy: client → %s (DNAT to %s:8080) does not work; the emulated Service is broken", svc, backend.v4)
	}

	t.Log("client egress allowed to app=backend:8080 only")
	n := a.count()
	e.setPolicies(clientEgressTo("backend"))
	a.waitEnforced(t, n+1)
	expect("to backend: client → ClusterIP:80", tcpOK(t, client.ns, svc), true)
	expect("to backend: client → backend:8080", tcpOK(t, client.ns, hostPort(backend.v4, 8080)), true)
	expect("to backend: client → other:8080", tcpOK(t, client.ns, hostPort(other.v4, 8080)), false)

	conn, err := dialIn(t, client.ns, "tcp", svc)
	if err != nil {
		t.Fatalf("connect client → ClusterIP: %v", err)
	}
	defer conn.Close()
	if !echo(conn, time.Second) {
		t.Fatal("connection through the ClusterIP does not echo")
	}

	t.Log("client egress allowed to app=other:8080 only")
	n = a.count()
	e.setPolicies(clientEgressTo("other"))
	a.waitEnforced(t, n+1)
	if echo(conn, time.Second) {
		t.Error("revalidate: the connection through the ClusterIP still works after its egress was revoked")
	}
	conn.Close()
	expect("to other: client → other:8080", tcpOK(t, client.ns, hostPort(other.v4, 8080)), true)
	before := e.slowpathVerdicts(t, a, "deny", "ingress")
	expect("to other: client → ClusterIP:80", tcpOK(t, client.ns, svc), false)
	if after := e.slowpathVerdicts(t, a, "deny", "ingress"); after <= before {
		t.Errorf("the ClusterIP connection was not denied at the backend's entering hook (ingress-hook denies %d → %d)", before, after)
	}
	expect("to other: client → backend:8080", tcpOK(t, client.ns, hostPort(backend.v4, 8080)), false)

	t.Log("no policy again")
	n = a.count()
	e.setPolicies("")
	a.waitEnforced(t, n+1)
	expect("no policy: client → ClusterIP:80", tcpOK(t, client.ns, svc), true)
}

// slowpathVerdicts reads xdpolicy_slowpath_verdicts_total{action,hook}.
func (e *env) slowpathVerdicts(t *testing.T, a *agentProc, action, hook string) int {
	t.Helper()
	_, metrics := e.get(t, a, "/metrics")
	re := regexp.MustCompile(`xdpolicy_slowpath_verdicts_total\{action="` + action + `",hook="` + hook + `"\} (\d+)`)
	m := re.FindStringSubmatch(metrics)
	if m == nil {
		return 0
	}
	v, _ := strconv.Atoi(m[1])
	return v
}
