package lab_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/xdpolicy/xdpolicy/control/lab"
	"github.com/xdpolicy/xdpolicy/control/model"
)

// fakeLab makes a lab directory (cluster and policies, no namespaces): what
// Apply and Delete work on, without root.
func fakeLab(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{lab.ClusterDir(dir), lab.PoliciesDir(dir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile("../../deploy/examples/03-frontend-backend/cluster.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(lab.ClusterDir(dir), "cluster.yaml"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func writeFile(t testing.TB, content string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "in.yaml")
	if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func loadCluster(t *testing.T, dir string) *model.Cluster {
	t.Helper()
	res, err := model.Load(lab.ClusterDir(dir), lab.PoliciesDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	return res.Cluster
}

const denyAll = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
  namespace: other
spec:
  podSelector: {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-default
spec:
  podSelector: {}
`

func TestApplyDeletePolicies(t *testing.T) {
	dir := fakeLab(t)
	in := writeFile(t, denyAll)
	got, err := lab.Apply(dir, []string{in})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"networkpolicy other/deny-all created", "networkpolicy default/deny-default created"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("apply output (-want +got):\n%s", d)
	}
	for _, f := range []string{lab.PolicyFile(dir, "other", "deny-all"), lab.PolicyFile(dir, "default", "deny-default")} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("policy file: %v", err)
		}
	}
	if n := len(loadCluster(t, dir).Policies); n != 2 {
		t.Errorf("lab has %d policies after apply, want 2", n)
	}
	got, err = lab.Apply(dir, []string{in})
	if err != nil || !strings.HasSuffix(got[0], "unchanged") {
		t.Errorf("second apply: %v, %v; want unchanged", got, err)
	}

	// Delete is all or nothing: one missing policy removes none.
	missing := writeFile(t, denyAll+"---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: nope}\nspec: {podSelector: {}}\n")
	if _, err := lab.Delete(dir, []string{missing}); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("delete of a missing policy: err %v, want not found", err)
	}
	if n := len(loadCluster(t, dir).Policies); n != 2 {
		t.Errorf("failed delete removed policies: %d left, want 2", n)
	}
	if _, err := lab.Delete(dir, []string{in}); err != nil {
		t.Fatal(err)
	}
	if n := len(loadCluster(t, dir).Policies); n != 0 {
		t.Errorf("lab has %d policies after delete, want 0", n)
	}
	if _, err := os.Stat(filepath.Join(lab.PoliciesDir(dir), "other")); !os.IsNotExist(err) {
		t.Errorf("empty namespace directory left after delete: %v", err)
	}
}

func TestApplyLabels(t *testing.T) {
	dir := fakeLab(t)
	in := writeFile(t, `apiVersion: v1
kind: Namespace
metadata:
  name: monitoring
  labels: {team: ops}
---
apiVersion: v1
kind: Pod
metadata:
  name: frontend
  labels: {app: frontend, tier: web}
`)
	got, err := lab.Apply(dir, []string{in})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"namespace monitoring labels updated", "pod default/frontend labels updated"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("apply output (-want +got):\n%s", d)
	}
	c := loadCluster(t, dir)
	found := 0
	for _, ns := range c.Namespaces {
		if ns.Name == "monitoring" {
			found++
			if d := cmp.Diff(map[string]string{"team": "ops", model.NamespaceNameLabel: "monitoring"}, ns.Labels); d != "" {
				t.Errorf("namespace labels (-want +got):\n%s", d)
			}
		}
	}
	for _, p := range c.Pods {
		if p.Name == "frontend" {
			found++
			if d := cmp.Diff(map[string]string{"app": "frontend", "tier": "web"}, p.Labels); d != "" {
				t.Errorf("pod labels (-want +got):\n%s", d)
			}
			if p.Status.PodIP != "10.244.1.20" || p.Spec.NodeName != "node-1" || len(p.Spec.Containers[0].Ports) != 1 {
				t.Errorf("label change lost other fields: %+v", p)
			}
		}
	}
	if found != 2 {
		t.Errorf("found %d of namespace monitoring and pod frontend after apply, want both", found)
	}
	if len(c.Pods) != 4 || len(c.Namespaces) != 3 {
		t.Errorf("cluster has %d pods, %d namespaces; want 4, 3", len(c.Pods), len(c.Namespaces))
	}

	// Pods cannot be added, nor pods and namespaces deleted.
	before, _ := os.ReadFile(filepath.Join(lab.ClusterDir(dir), "cluster.yaml"))
	newPod := writeFile(t, "apiVersion: v1\nkind: Pod\nmetadata: {name: new, namespace: other, labels: {a: b}}\n")
	if _, err := lab.Apply(dir, []string{in, newPod}); err == nil || !strings.Contains(err.Error(), "cannot be added") {
		t.Errorf("apply of a new pod: err %v, want 'cannot be added'", err)
	}
	if _, err := lab.Delete(dir, []string{in}); err == nil || !strings.Contains(err.Error(), "cannot be deleted") {
		t.Errorf("delete of a pod: err %v, want 'cannot be deleted'", err)
	}
	after, _ := os.ReadFile(filepath.Join(lab.ClusterDir(dir), "cluster.yaml"))
	if string(before) != string(after) {
		t.Error("a failed apply changed the cluster YAML")
	}
}

func TestCheckName(t *testing.T) {
	for name, ok := range map[string]bool{"xdpolicy": true, "a": true, "lab-2": true, "": false, "a_b": false, "A": false, "-a": false, "a/b": false, strings.Repeat("a", 25): false} {
		if err := lab.CheckName(name); (err == nil) != ok {
			t.Errorf("CheckName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}
