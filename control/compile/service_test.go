package compile_test

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/xdpolicy/xdpolicy/control/compile"
	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// The ClusterIPs of every Service (not headless ones) reach the ruleset,
// and survive an incremental label change.
func TestServiceIPs(t *testing.T) {
	c := &model.Cluster{}
	svc := func(name string, ips ...string) *corev1.Service {
		s := &corev1.Service{}
		s.Name, s.Spec.ClusterIPs = name, ips
		return s
	}
	pod := &corev1.Pod{}
	pod.Name, pod.Labels, pod.Status.PodIP = "p", map[string]string{"app": "a"}, "10.0.0.1"
	c.Add(svc("web", "10.96.0.10", "fd96::10"))
	c.Add(svc("headless", corev1.ClusterIPNone))
	c.Add(pod)
	c.Complete()
	var k compile.Compiler
	rs, problems := k.Compile(c)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	rs2, err := k.SetPodLabels("default", "p", map[string]string{"app": "b"})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*ruleset.Ruleset{rs, rs2} {
		for a, want := range map[string]bool{"10.96.0.10": true, "fd96::10": true, "::ffff:10.96.0.10": true, "10.0.0.1": false} {
			if got := r.IsServiceIP(netip.MustParseAddr(a)); got != want {
				t.Errorf("IsServiceIP(%s) = %v, want %v", a, got, want)
			}
		}
	}
	if got := rs.ServiceIPs(); len(got) != 2 {
		t.Errorf("ServiceIPs = %v, want the two addresses of web", got)
	}
}
