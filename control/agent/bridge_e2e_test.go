package agent_test

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

const egressAOnlyToB = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-egress, namespace: default}
spec:
  podSelector: {matchLabels: {app: p1}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: p2}}}]
    ports: [{protocol: TCP, port: 8080}]
`

const denyP4 = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-p4, namespace: default}
spec: {podSelector: {matchLabels: {app: p4}}, policyTypes: [Ingress]}
`

// TestAgentBridgeCNI enforces pods behind a bridge, the shape of the
// reference bridge CNI plugin and flannel: the node's route to a pod goes
// out br0, so the agent must find each pod's veth among the bridge's ports.
// The node does not forward, so traffic between pods crosses the bridge on
// L2 only, and a frame re-injected on its way out of a pod must keep its
// destination MAC (the peer pod's). A pod a policy isolates whose veth
// cannot be found makes the agent loud: log, metric and /readyz.
func TestAgentBridgeCNI(t *testing.T) {
	e := newBridgeEnv(t, 3)
	a, b, c := e.pods[0], e.pods[1], e.pods[2]
	serve(t, b.ns, 8080, 9000)
	serve(t, c.ns, 8080, 9000)
	// p4's address is routed out an ifb device: no veth to wire.
	run(t, "ip", "-n", e.node, "link", "add", "nv0", "type", "ifb")
	run(t, "ip", "-n", e.node, "link", "set", "nv0", "up")
	run(t, "ip", "-n", e.node, "route", "add", "10.97.0.4/32", "dev", "nv0")
	e.appendCluster("apiVersion: v1\nkind: Pod\nmetadata: {name: p4, namespace: default, labels: {app: p4}}\n" +
		"spec: {nodeName: " + e.nodeName + ", containers: [{name: c, image: x}]}\nstatus: {phase: Running, podIP: 10.97.0.4, podIPs: [{ip: 10.97.0.4}]}\n")
	e.setPolicies(allowAToB + "---\n" + egressAOnlyToB + "---\n" + denyP4)
	agent := e.startAgent()
	agent.waitEnforced(t, 1)
	for _, p := range e.pods {
		if !regexp.MustCompile(`wired pod.*host_veth=` + p.host + `\b`).MatchString(agent.logs()) {
			t.Fatalf("%s (veth %s on br0) was not wired:\n%s", p.name, p.host, agent.logs())
		}
	}

	expect := func(what string, got, want bool) {
		t.Helper()
		if got != want {
			t.Errorf("%s: reachable=%v, want %v", what, got, want)
		}
	}
	for _, fam := range []struct{ b, c string }{{b.v4, c.v4}, {b.v6, c.v6}} {
		expect("a→b TCP 8080 (both policies allow)", tcpOK(t, a.ns, hostPort(fam.b, 8080)), true)
		expect("a→b UDP 9000 (a's egress denies)", udpOK(t, a.ns, hostPort(fam.b, 9000)), false)
		expect("a→c TCP 8080 (a's egress denies)", tcpOK(t, a.ns, hostPort(fam.c, 8080)), false)
		expect("c→b TCP 8080 (b's ingress denies)", tcpOK(t, c.ns, hostPort(fam.b, 8080)), false)
		expect("b→c TCP 8080 (nothing isolates)", tcpOK(t, b.ns, hostPort(fam.c, 8080)), true)
	}

	// p4: loud, not silent.
	if !strings.Contains(agent.logs(), `msg="pod isolated by a policy cannot be wired: its traffic is NOT enforced" node=`+e.nodeName+` pod=default/p4`) {
		t.Errorf("no error logged for the unwirable pod:\n%s", agent.logs())
	}
	time.Sleep(5 * time.Second) // the readiness grace
	code, body := e.get(t, agent, "/readyz")
	if code != 503 || !strings.Contains(body, "default/p4") {
		t.Errorf("/readyz with an unenforced pod = %d %q, want 503 naming default/p4", code, body)
	}
	_, metrics := e.get(t, agent, "/metrics")
	if !regexp.MustCompile(`xdpolicy_unenforced_pods\{pod="default/p4",reason="route to 10.97.0.4 goes out nv0 \(ifb\)[^"]*"\} 1`).MatchString(metrics) {
		t.Errorf("/metrics lacks xdpolicy_unenforced_pods for default/p4:\n%s", grepLines(metrics, "unenforced"))
	}
	if !regexp.MustCompile(`xdpolicy_wired_pods 3\b`).MatchString(metrics) {
		t.Errorf("/metrics: want xdpolicy_wired_pods 3:\n%s", grepLines(metrics, "wired"))
	}

	// Once no policy isolates p4 there is nothing to enforce: ready again.
	e.setPolicies(allowAToB + "---\n" + egressAOnlyToB)
	agent.waitEnforced(t, 2)
	if code, body := e.get(t, agent, "/readyz"); code != 200 {
		t.Errorf("/readyz after p4 is no longer isolated = %d %q, want 200", code, body)
	}
	if _, metrics := e.get(t, agent, "/metrics"); strings.Contains(metrics, `xdpolicy_unenforced_pods{`) {
		t.Errorf("xdpolicy_unenforced_pods still reported:\n%s", grepLines(metrics, "unenforced"))
	}
	agent.stop(t)
	e.checkClean(t)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
