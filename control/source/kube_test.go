package source_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/xdpolicy/xdpolicy/control/compile"
	"github.com/xdpolicy/xdpolicy/control/kubetest"
	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/control/source"
)

// latest keeps the newest delivered snapshot.
type latest struct {
	mu sync.Mutex
	c  *model.Cluster
	n  int
	ch chan struct{}
}

func (l *latest) deliver(c *model.Cluster) {
	l.mu.Lock()
	l.c, l.n = c, l.n+1
	l.mu.Unlock()
	select {
	case l.ch <- struct{}{}:
	default:
	}
}

// count is how many snapshots were delivered so far.
func (l *latest) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// wait returns the first snapshot (delivered from now on or the current
// one) for which ok holds.
func (l *latest) wait(t *testing.T, what string, ok func(*model.Cluster) bool) *model.Cluster {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		l.mu.Lock()
		c := l.c
		l.mu.Unlock()
		if c != nil && ok(c) {
			return c
		}
		select {
		case <-l.ch:
		case <-deadline:
			t.Fatalf("no snapshot with %s within 60s", what)
		}
	}
}

func hasPolicy(ns, name string, check func(*networkingv1.NetworkPolicy) bool) func(*model.Cluster) bool {
	return func(c *model.Cluster) bool {
		for _, p := range c.Policies {
			if p.Namespace == ns && p.Name == name {
				return check == nil || check(p)
			}
		}
		return false
	}
}

// TestKube runs the source against a real API server: the first snapshot
// after the caches sync, pods with their status, node addresses, policy
// create/update/delete, the Event on an invalid policy, and an API server
// restart in the middle.
func TestKube(t *testing.T) {
	srv := kubetest.Start(t)
	cs := srv.Client
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := fmt.Sprintf("src-%d", time.Now().UnixNano()%1e9)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"team": "a"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}
	node, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.0.2.7"}, {Type: corev1.NodeHostName, Address: "n1"}}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i, ip := range []string{"10.1.0.1", "10.1.0.2"} {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d", i), Namespace: ns, Labels: map[string]string{"app": "web"},
			Annotations: map[string]string{"big": strings.Repeat("x", 4096)}},
			Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "img", Env: []corev1.EnvVar{{Name: "A", Value: "b"}},
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}}}}}}
		p, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
		if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	k := &source.Kube{Config: srv.Config, Node: "n1", Log: log}
	l := &latest{ch: make(chan struct{}, 1)}
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx, l.deliver) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	c := l.wait(t, "both pods running with addresses", func(c *model.Cluster) bool {
		n := 0
		for _, p := range c.Pods {
			if p.Namespace == ns && model.Active(p) {
				n++
			}
		}
		return n == 2
	})
	for _, p := range c.Pods {
		if p.Namespace != ns {
			continue
		}
		if len(p.Annotations) != 0 || len(p.ManagedFields) != 0 || p.Spec.Containers[0].Env != nil || p.Spec.Containers[0].Image != "" {
			t.Errorf("pod %s not stripped: %+v", p.Name, p)
		}
		if got := model.Ports(p); len(got) != 1 || got[0].Name != "http" || got[0].Protocol != corev1.ProtocolTCP {
			t.Errorf("pod %s ports = %+v", p.Name, got)
		}
	}
	if fmt.Sprint(c.NodeAddrs) != "[192.0.2.7]" {
		t.Errorf("NodeAddrs = %v, want [192.0.2.7]", c.NodeAddrs)
	}
	nsFound := false
	for _, n := range c.Namespaces {
		if n.Name == ns {
			nsFound = true
			if n.Labels[model.NamespaceNameLabel] != ns || n.Labels["team"] != "a" {
				t.Errorf("namespace labels %v", n.Labels)
			}
		}
	}
	if !nsFound {
		t.Errorf("namespace %s not in the snapshot", ns)
	}

	// A policy: created, then changed, each change delivered with the time
	// it was observed.
	tcp := corev1.ProtocolTCP
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}}
	before := time.Now()
	if _, err := cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c = l.wait(t, "policy web", hasPolicy(ns, "web", nil))
	// Observed is the oldest change the snapshot carries: a pod update that
	// arrived just before the create may be coalesced into it.
	if c.Observed.Before(before.Add(-time.Second)) || c.Observed.After(time.Now()) {
		t.Errorf("Observed = %v, want within a second before %v", c.Observed, before)
	}
	t.Logf("policy create → snapshot delivered in %v", time.Since(before).Round(time.Microsecond))
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp}}}}
	if _, err := cs.NetworkingV1().NetworkPolicies(ns).Update(ctx, np, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	l.wait(t, "policy web with an ingress rule", hasPolicy(ns, "web", func(p *networkingv1.NetworkPolicy) bool { return len(p.Spec.Ingress) == 1 }))

	// The API server goes away: nothing is delivered, nothing fails; a
	// change made while it is back is delivered (the reflectors relist).
	// First let the source settle: the update above may still be followed
	// by a rebuild of its own (rate-bounded) before the server stops.
	for settled := l.count(); ; {
		time.Sleep(500 * time.Millisecond)
		if n := l.count(); n == settled {
			break
		} else {
			settled = n
		}
	}
	srv.StopAPIServer()
	l.mu.Lock()
	n0 := l.n
	l.mu.Unlock()
	time.Sleep(2 * time.Second)
	l.mu.Lock()
	if l.n != n0 {
		t.Errorf("%d snapshots delivered while the API server was down", l.n-n0)
	}
	l.mu.Unlock()
	if err := srv.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cs.NetworkingV1().NetworkPolicies(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	l.wait(t, "policy web deleted after the restart", func(c *model.Cluster) bool { return !hasPolicy(ns, "web", nil)(c) })
	t.Logf("API server restart: delete seen %v after the restart", time.Since(restarted).Round(time.Millisecond))

	// A policy the compiler rejects fails closed; the source reports it as
	// an Event on the policy. Today's API server refuses every such policy
	// (its validation is stricter than the compiler's: a CIDR with leading
	// zeros, host bits or an IPv4-mapped address is rejected), but one an
	// older, laxer API server stored is still served as it is: written
	// into etcd directly, like that.
	bad := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "bad", Namespace: ns},
		Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "010.0.0.0/8"}}}}}}}
	if _, err := cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, bad, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err == nil {
		t.Log("this API server accepts a CIDR with leading zeros")
	}
	bad.APIVersion, bad.Kind = "networking.k8s.io/v1", "NetworkPolicy"
	bad.UID, bad.CreationTimestamp = "0f2c5f6e-0000-4000-8000-000000000001", metav1.Now()
	raw, _ := json.Marshal(bad)
	if err := srv.PutStored(ctx, "/registry/networkpolicies/"+ns+"/bad", raw); err != nil {
		t.Fatal(err)
	}
	c = l.wait(t, "policy bad", hasPolicy(ns, "bad", nil))
	_, problems := compile.Compile(c)
	var mine []compile.Problem
	for _, p := range problems {
		if p.Policy.Namespace == ns {
			mine = append(mine, p)
		}
	}
	if len(mine) != 1 || mine[0].Policy.Name != "bad" {
		t.Fatalf("problems = %v, want one for %s/bad", problems, ns)
	}
	k.ReportProblems(problems)
	waitEvent(t, cs, ns, "bad", "NetworkPolicy", source.InvalidPolicyReason)

	// A pod a policy isolates that the agent cannot wire gets an Event too.
	k.ReportUnenforced(map[string]string{ns + "/p0": "route to 10.1.0.1 goes out nv0 (ifb), neither a pod's veth nor a bridge of pod veths"})
	waitEvent(t, cs, ns, "p0", "Pod", source.UnenforcedPodReason)
}

// waitEvent waits for a Warning Event with reason on the object name of kind.
func waitEvent(t *testing.T, cs kubernetes.Interface, ns, name, kind, reason string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		evs, err := cs.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("involvedObject.name", name).String()})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs.Items {
			if e.Reason != reason {
				continue
			}
			if e.Type != corev1.EventTypeWarning || e.InvolvedObject.Kind != kind {
				t.Errorf("event = %s %s on %s, want Warning on %s", e.Type, e.Reason, e.InvolvedObject.Kind, kind)
			}
			t.Logf("event: %s %s: %s", e.Type, e.Reason, e.Message)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s Event on %s %s/%s within 30s", reason, kind, ns, name)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
