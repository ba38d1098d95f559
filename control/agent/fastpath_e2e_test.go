package agent_test

import (
	"regexp"
	"strconv"
	"testing"
	"time"
)

// TestAgentFastpathOff checks --fastpath=off: verdicts are unchanged, and
// every packet of an established connection goes through the Go workers
// instead of the tcx cache.
func TestAgentFastpathOff(t *testing.T) {
	e := newEnv(t, 2)
	a, b := e.pods[0], e.pods[1]
	serve(t, b.ns, 8080, 9000)
	serve(t, b.ns, 8081, 9001)
	e.setPolicies(allowAToB)
	ag := e.startAgent("--fastpath=off")
	ag.waitEnforced(t, 1)

	if !tcpOK(t, a.ns, hostPort(b.v4, 8080)) {
		t.Error("a→b TCP 8080: blocked, want allowed")
	}
	if tcpOK(t, a.ns, hostPort(b.v4, 8081)) {
		t.Error("a→b TCP 8081: allowed, want blocked")
	}

	allowed := func() int {
		_, m := e.get(t, ag, "/metrics")
		v := regexp.MustCompile(`xdpolicy_slowpath_verdicts_total\{action="allow",hook="ingress"\} (\d+)`).FindStringSubmatch(m)
		if v == nil {
			t.Fatalf("no ingress allow verdict count in /metrics")
		}
		n, _ := strconv.Atoi(v[1])
		return n
	}
	conn, err := dialIn(t, a.ns, "tcp", hostPort(b.v4, 8080))
	if err != nil {
		t.Fatalf("connect a→b: %v", err)
	}
	defer conn.Close()
	before := allowed()
	const rounds = 20
	for i := range rounds {
		if !echo(conn, time.Second) {
			t.Fatalf("round %d: established connection does not echo", i)
		}
	}
	// Each round trip sends at least one data segment into b.
	if got := allowed() - before; got < rounds {
		t.Errorf("%d ingress verdicts in the workers for %d round trips: packets bypassed the slow path", got, rounds)
	}
	conn.Close()
	ag.stop(t)
	e.checkClean(t)
}
