package agent

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/xdpolicy/xdpolicy/control/model"
)

// TestPolicyChanges: only policy objects replaced under the same names
// allow the incremental compile.
func TestPolicyChanges(t *testing.T) {
	pol := func(name string) *networkingv1.NetworkPolicy {
		return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: name}}
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p"}}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "a"}}
	p1, p2 := pol("x"), pol("y")
	prev := &model.Cluster{Namespaces: []*corev1.Namespace{ns}, Pods: []*corev1.Pod{pod}, Policies: []*networkingv1.NetworkPolicy{p1, p2}}
	p2b := pol("y")
	for _, tc := range []struct {
		name    string
		c       *model.Cluster
		changed int
		ok      bool
	}{
		{"nothing", &model.Cluster{Namespaces: prev.Namespaces, Pods: prev.Pods, Policies: []*networkingv1.NetworkPolicy{p1, p2}}, 0, true},
		{"one policy updated", &model.Cluster{Namespaces: prev.Namespaces, Pods: prev.Pods, Policies: []*networkingv1.NetworkPolicy{p1, p2b}}, 1, true},
		{"policy added", &model.Cluster{Namespaces: prev.Namespaces, Pods: prev.Pods, Policies: []*networkingv1.NetworkPolicy{p1, p2, pol("z")}}, 0, false},
		{"policy replaced by another name", &model.Cluster{Namespaces: prev.Namespaces, Pods: prev.Pods, Policies: []*networkingv1.NetworkPolicy{p1, pol("w")}}, 0, false},
		{"pod changed", &model.Cluster{Namespaces: prev.Namespaces, Pods: []*corev1.Pod{pod.DeepCopy()}, Policies: []*networkingv1.NetworkPolicy{p1, p2b}}, 0, false},
		{"namespace changed", &model.Cluster{Namespaces: []*corev1.Namespace{ns.DeepCopy()}, Pods: prev.Pods, Policies: []*networkingv1.NetworkPolicy{p1, p2b}}, 0, false},
	} {
		changed, ok := policyChanges(prev, tc.c)
		if ok != tc.ok || len(changed) != tc.changed {
			t.Errorf("%s: %d changed, ok %v; want %d, %v", tc.name, len(changed), ok, tc.changed, tc.ok)
		}
	}
	if _, ok := policyChanges(nil, prev); ok {
		t.Error("no previous cluster: ok")
	}
}
