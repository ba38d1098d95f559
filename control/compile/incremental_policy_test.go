package compile_test

import (
	"math/rand/v2"
	"slices"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/xdpolicy/xdpolicy/control/compile"
	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/control/synth"
)

// TestSetPolicy replaces policies one after another with other policies'
// specs, deny-alls, allow-alls and invalid ones, and checks every
// incremental result against a full compile of the same cluster.
func TestSetPolicy(t *testing.T) {
	p := synth.Params{Pods: 300, Policies: 30, CIDRs: 30, Seed: 7}
	cl := synth.Cluster(p)
	var c compile.Compiler
	c.Compile(cl)
	ref := synth.Cluster(p) // the same cluster, changed alongside, compiled in full
	r := rand.New(rand.NewPCG(1, 2))
	for step := range 40 {
		i := r.IntN(len(ref.Policies))
		o := ref.Policies[i].DeepCopy()
		switch step % 4 {
		case 0: // another policy's rules (and selector)
			src := ref.Policies[r.IntN(len(ref.Policies))]
			o.Spec = *src.Spec.DeepCopy()
		case 1: // deny all ingress and egress of every pod of the namespace
			o.Spec = networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}}
		case 2: // allow all ingress of the namespace's pods
			o.Spec = networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{}}}
		case 3: // invalid: fails closed
			o.Spec = networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "app-1"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "010.0.0.0/8"}}}}}}
		}
		model.DefaultPolicy(o)
		ref.Policies[i] = o
		got, gotProblems, err := c.SetPolicy(o.DeepCopy())
		if err != nil {
			t.Fatal(err)
		}
		want, wantProblems := compile.Compile(ref)
		if len(gotProblems) != len(wantProblems) {
			t.Fatalf("step %d: %d problems, full compile %d", step, len(gotProblems), len(wantProblems))
		}
		sameVerdicts(t, got, want)
		if step%5 == 4 { // and a label change on top
			pod := ref.Pods[r.IntN(len(ref.Pods))]
			lbls := map[string]string{"app": "app-" + string(rune('0'+r.IntN(5))), "tier": "web"}
			pod.Labels = lbls
			got, err := c.SetPodLabels(pod.Namespace, pod.Name, lbls)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := compile.Compile(ref)
			sameVerdicts(t, got, want)
		}
	}
	// A policy that is not there is added; deleting it takes it away again.
	o := ref.Policies[0].DeepCopy()
	o.Name = "new-one"
	o.Spec = networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}}
	got, _, err := c.SetPolicy(o)
	if err != nil {
		t.Fatal(err)
	}
	before := ref.Policies
	ref.Policies = append(slices.Clone(ref.Policies), o)
	want, _ := compile.Compile(ref)
	sameVerdicts(t, got, want)
	if got, _, err = c.DeletePolicy(o.Namespace, o.Name); err != nil {
		t.Fatal(err)
	}
	ref.Policies = before
	want, _ = compile.Compile(ref)
	sameVerdicts(t, got, want)
}

// BenchmarkSetPolicy: one policy of the 10k pods / 1k policies / 10k CIDRs
// cluster (BenchmarkCompile's) flipped between deny-all and its own rules,
// incrementally (the agent's path for an updated policy).
func BenchmarkSetPolicy(b *testing.B) {
	p := scales[1].p
	var c compile.Compiler
	c.Compile(synth.Cluster(p))
	orig := synth.Cluster(p).Policies[500]
	deny := orig.DeepCopy()
	deny.Spec.Ingress, deny.Spec.Egress = nil, nil
	b.ResetTimer()
	for i := range b.N {
		o := orig
		if i%2 == 0 {
			o = deny
		}
		if _, _, err := c.SetPolicy(o); err != nil {
			b.Fatal(err)
		}
	}
}
