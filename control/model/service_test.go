package model

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func writeYAML(t *testing.T, yaml string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "cluster.yaml")
	if err := os.WriteFile(f, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestLoadServices(t *testing.T) {
	f := writeYAML(t, `apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}], selector: {app: web}}
---
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: prod}
spec: {type: NodePort, clusterIP: 10.96.0.11, clusterIPs: [10.96.0.11, "fd96::11"]}
---
apiVersion: v1
kind: Service
metadata: {name: headless}
spec: {clusterIP: None}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: example.com}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
`)
	res, err := Load(f)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var ips []netip.Addr
	for _, s := range res.Cluster.Services {
		got = append(got, s.Namespace+"/"+s.Name+" "+string(s.Spec.Type))
		a, err := ClusterIPs(s)
		if err != nil {
			t.Errorf("%s: %v", s.Name, err)
		}
		ips = append(ips, a...)
	}
	want := []string{"default/ext ExternalName", "default/headless ClusterIP", "default/web ClusterIP", "prod/dual NodePort"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("services (-want +got):\n%s", d)
	}
	wantIPs := []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("10.96.0.11"), netip.MustParseAddr("fd96::11")}
	if d := cmp.Diff(wantIPs, ips, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Errorf("ClusterIPs (-want +got):\n%s", d)
	}
	if want := "skipped 1 object(s) that are not Namespace, Pod, NetworkPolicy or Service: Deployment web (cluster.yaml)"; res.Skipped != want {
		t.Errorf("Skipped = %q, want %q", res.Skipped, want)
	}
}

func TestValidateService(t *testing.T) {
	tests := []struct {
		name, spec string
		want       string // substring of the error, "" for valid
	}{
		{"unallocated", `{}`, ""},
		{"single", `{clusterIP: 10.96.0.1}`, ""},
		{"4-in-6", `{clusterIP: "::ffff:10.96.0.1"}`, ""},
		{"headless", `{clusterIP: None, clusterIPs: [None]}`, ""},
		{"bad clusterIP", `{clusterIP: 10.96.0.300}`, `spec.clusterIP: Invalid value: "10.96.0.300"`},
		{"bad clusterIPs", `{clusterIPs: [10.96.0.1, "fd96::zz"]}`, `spec.clusterIPs[1]: Invalid value: "fd96::zz"`},
		{"mismatch", `{clusterIP: 10.96.0.1, clusterIPs: [10.96.0.2]}`, "spec.clusterIPs[0]: Invalid value: \"10.96.0.2\": must match `clusterIP`"},
		{"same family", `{clusterIPs: [10.96.0.1, 10.96.0.2]}`, "spec.clusterIPs[1]: Invalid value: \"10.96.0.2\": must be of a different IP family"},
		{"too many", `{clusterIPs: [10.96.0.1, "fd96::1", 10.96.0.3]}`, "spec.clusterIPs: Too many"},
		{"None not alone", `{clusterIPs: [None, 10.96.0.1]}`, `spec.clusterIPs[0]: Invalid value: "None"`},
		{"bad type", `{type: Magic}`, `spec.type: Unsupported value: "Magic"`},
		{"ExternalName with IP", `{type: ExternalName, clusterIP: 10.96.0.1}`, "spec.clusterIP: Forbidden"},
	}
	for _, tc := range tests {
		f := writeYAML(t, "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: "+tc.spec+"\n")
		_, err := Load(f)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && err == nil:
			t.Errorf("%s: loaded, want an error containing %q", tc.name, tc.want)
		case tc.want != "" && !strings.Contains(err.Error(), tc.want):
			t.Errorf("%s: error %q does not contain %q", tc.name, err, tc.want)
		case tc.want != "" && !strings.Contains(err.Error(), "Service s: "):
			t.Errorf("%s: error %q does not name the object", tc.name, err)
		}
	}
}
