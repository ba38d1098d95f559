package compile_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/xdpolicy/xdpolicy/control/compile"
	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/control/synth"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// withLabels rebuilds the synthetic cluster with some pods relabelled.
func withLabels(p synth.Params, relabel map[string]map[string]string) *model.Cluster {
	c := synth.Cluster(p)
	for _, pod := range c.Pods {
		if l, ok := relabel[pod.Namespace+"/"+pod.Name]; ok {
			pod.Labels = maps.Clone(l)
		}
	}
	return c
}

// sameVerdicts compares two rulesets on every pod pair, both directions,
// both families and a few ports, plus external peers.
func sameVerdicts(t *testing.T, got, want *ruleset.Ruleset) {
	t.Helper()
	ports := []protoPort{{ruleset.TCP, 80}, {ruleset.TCP, 8081}, {ruleset.TCP, 9050}, {ruleset.UDP, 53}, {ruleset.SCTP, 80}}
	peers := []netip.Addr{netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("100.64.3.9")}
	for i := range want.Pods {
		peers = append(peers, want.Pods[i].IPs...)
	}
	if bad := compareRulesets(t, got, want, peers, func(int) []protoPort { return ports }); bad > 0 {
		t.Fatalf("%d verdicts differ", bad)
	}
}

type protoPort struct {
	proto ruleset.Proto
	port  uint16
}

// compareRulesets checks an incrementally derived ruleset (got) against a
// full compile of the same cluster (want): the same live pods with the
// same addresses, node and hostNetwork, found by namespace and name (an
// incremental result numbers new pods after the others and keeps
// tombstones of deleted ones); the same owner for every peer address; and
// the same verdict for every pod, direction and peer, on the ports
// portsFor returns for each (pod, direction) in turn. It reports the
// differences (the first few as errors) and returns their number.
func compareRulesets(t *testing.T, got, want *ruleset.Ruleset, peers []netip.Addr, portsFor func(int) []protoPort) int {
	t.Helper()
	bad := 0
	fail := func(format string, args ...any) {
		if bad++; bad <= 5 {
			t.Errorf(format, args...)
		}
	}
	name := func(p *ruleset.Pod) string { return p.Namespace + "/" + p.Name }
	gotID := map[string]ruleset.PodID{}
	for i := range got.Pods {
		if p := &got.Pods[i]; p.Name != "" {
			if _, dup := gotID[name(p)]; dup {
				fail("pod %s twice", name(p))
			}
			gotID[name(p)] = ruleset.PodID(i)
		} else if len(p.IPs) > 0 || p.Tables != [2]*ruleset.Table{} {
			fail("tombstone %d has addresses or tables", i)
		}
	}
	if len(gotID) != len(want.Pods) {
		fail("%d pods, full compile %d", len(gotID), len(want.Pods))
	}
	for i := range want.Pods {
		w := &want.Pods[i]
		gi, ok := gotID[name(w)]
		if !ok {
			fail("pod %s missing", name(w))
			continue
		}
		g := &got.Pods[gi]
		if !slices.Equal(g.IPs, w.IPs) || g.Node != w.Node || g.HostNetwork != w.HostNetwork {
			fail("pod %s: %v %q %v, full compile %v %q %v", name(w), g.IPs, g.Node, g.HostNetwork, w.IPs, w.Node, w.HostNetwork)
		}
	}
	for _, a := range peers {
		gp, gok := got.PodByIP(a)
		wp, wok := want.PodByIP(a)
		if gok != wok || (gok && name(&got.Pods[gp]) != name(&want.Pods[wp])) {
			g, w := "none", "none"
			if gok {
				g = name(&got.Pods[gp])
			}
			if wok {
				w = name(&want.Pods[wp])
			}
			fail("address %v: pod %s, full compile %s", a, g, w)
		}
	}
	if got.DefersEgress() != want.DefersEgress() {
		fail("DefersEgress %v, full compile %v", got.DefersEgress(), want.DefersEgress())
	}
	if g, w := got.ServiceIPs(), want.ServiceIPs(); !slices.Equal(g, w) {
		fail("Service addresses %v, full compile %v", g, w)
	}
	for i := range want.Pods {
		gi := gotID[name(&want.Pods[i])]
		for d := range 2 {
			for _, peer := range peers {
				for _, pp := range portsFor(i*2 + d) {
					g := got.Verdict(gi, ruleset.Direction(d), peer, pp.proto, pp.port)
					w := want.Verdict(ruleset.PodID(i), ruleset.Direction(d), peer, pp.proto, pp.port)
					if g.Allowed != w.Allowed || g.Reason != w.Reason {
						fail("pod %s %v peer %v %v/%d: incremental %v/%v, full compile %v/%v",
							name(&want.Pods[i]), ruleset.Direction(d), peer, pp.proto, pp.port, g.Allowed, g.Reason, w.Allowed, w.Reason)
					}
				}
			}
		}
	}
	return bad
}

// TestSetPodLabels checks that every incremental label change gives the
// same verdicts as compiling the changed cluster from scratch: moves to
// existing identities, to new ones, and back.
func TestSetPodLabels(t *testing.T) {
	p := synth.Params{Pods: 120, Policies: 24, CIDRs: 24, Seed: 7}
	var c compile.Compiler
	c.Compile(synth.Cluster(p))
	relabel := map[string]map[string]string{}
	r := rand.New(rand.NewPCG(3, 4))
	for step := range 25 {
		pod := fmt.Sprintf("pod-%d", r.IntN(p.Pods))
		ns := fmt.Sprintf("ns-%d", mustIndex(pod)%max(1, p.Pods/100))
		l := map[string]string{"app": fmt.Sprintf("app-%d", r.IntN(synth.Apps)), "tier": []string{"web", "api", "db"}[r.IntN(3)]}
		if step%3 == 0 {
			l["canary"] = fmt.Sprint(step) // a label set no pod had: a new identity
		}
		relabel[ns+"/"+pod] = l
		got, err := c.SetPodLabels(ns, pod, l)
		if err != nil {
			t.Fatal(err)
		}
		want, problems := compile.Compile(withLabels(p, relabel))
		if len(problems) > 0 {
			t.Fatal(problems)
		}
		sameVerdicts(t, got, want)
	}
	if _, err := c.SetPodLabels("nope", "nope", nil); err == nil {
		t.Error("unknown pod: no error")
	}
}

func mustIndex(pod string) int {
	var i int
	fmt.Sscanf(pod, "pod-%d", &i)
	return i
}
