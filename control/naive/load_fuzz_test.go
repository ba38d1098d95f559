package naive_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/xdpolicy/xdpolicy/control/compile"
	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/control/naive"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

var loadSeeds = []string{
	// A namespace, two pods and a policy with every kind of peer.
	`apiVersion: v1
kind: Namespace
metadata:
  name: prod
  labels: {team: a}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
spec:
  containers:
  - name: c
    ports:
    - {name: http, containerPort: 8080}
    - {name: dns, containerPort: 53, protocol: UDP}
status: {phase: Running, podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: prod, labels: {app: db}}
spec:
  containers:
  - name: c
    ports: [{name: pg, containerPort: 5432, protocol: TCP}]
status: {phase: Running, podIP: 10.0.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector: {matchExpressions: [{key: app, operator: In, values: [web]}]}
    - namespaceSelector: {matchLabels: {team: a}}
      podSelector: {}
    - ipBlock: {cidr: 10.0.0.0/24, except: [10.0.0.1/32]}
    ports: [{port: pg}, {port: 5000, endPort: 5500, protocol: TCP}]
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}, {protocol: UDP, port: dns}]
`,
	// Default deny both ways, policyTypes explicit.
	`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: v1
kind: Pod
metadata: {name: a}
spec: {containers: [{name: c}]}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: h}
spec: {hostNetwork: true, containers: [{name: c}]}
status: {podIP: 192.168.0.1}
`,
	// kubectl get -o json output.
	`{"apiVersion":"v1","kind":"List","items":[
 {"apiVersion":"v1","kind":"Pod","metadata":{"name":"s","namespace":"x","labels":{"pod":"s"}},
  "spec":{"containers":[{"name":"c","ports":[{"name":"sctp","containerPort":7,"protocol":"SCTP"}]}]},
  "status":{"phase":"Running","podIP":"10.2.0.1"}},
 {"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"p","namespace":"x"},
  "spec":{"podSelector":{"matchExpressions":[{"key":"pod","operator":"NotIn","values":["t"]}]},
   "ingress":[{"ports":[{"protocol":"SCTP","port":"sctp"}]},{}],"egress":[{"to":[{"ipBlock":{"cidr":"0.0.0.0/0"}}]}]}},
 {"apiVersion":"v1","kind":"Service","metadata":{"name":"skip"}}]}`,
	"",
	"kind: Pod\n",
}

// TestLoadSeeds: the seeds meant as valid inputs load with pods and
// policies, or FuzzLoad's seed run (what `go test` runs) would return
// before comparing a single flow.
func TestLoadSeeds(t *testing.T) {
	for i, s := range loadSeeds[:3] {
		path := filepath.Join(t.TempDir(), "in.yaml")
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		res, err := model.Load(path)
		if err != nil {
			t.Errorf("seed %d: %v", i, err)
			continue
		}
		if len(res.Cluster.Pods) == 0 || len(res.Cluster.Policies) == 0 {
			t.Errorf("seed %d: %d pods, %d policies; want some of each", i, len(res.Cluster.Pods), len(res.Cluster.Policies))
		}
	}
}

// FuzzLoad feeds model.Load fuzzed YAML and JSON: it must never panic,
// and whatever it accepts must compile without panicking and agree with
// the naive interpreter on flows between the loaded pods.
func FuzzLoad(f *testing.F) {
	for _, s := range loadSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "in.yaml")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		res, err := model.Load(path)
		if err != nil {
			return
		}
		c := res.Cluster
		rs, _ := compile.Compile(c)
		addrs := []netip.Addr{netip.MustParseAddr("203.0.113.9"), netip.MustParseAddr("2001:db8::9")}
		ports := []uint16{53, 80}
		for _, p := range c.Pods {
			ips, _ := model.PodIPs(p)
			addrs = append(addrs, ips...)
			for _, cp := range model.Ports(p) {
				ports = append(ports, cp.Port)
			}
		}
		for _, np := range c.Policies {
			for _, r := range np.Spec.Ingress {
				for _, pp := range r.Ports {
					if pp.Port != nil && pp.Port.IntVal > 0 && pp.Port.IntVal < 65536 {
						ports = append(ports, uint16(pp.Port.IntVal))
					}
				}
			}
		}
		if len(addrs) > 12 {
			addrs = addrs[:12]
		}
		if len(ports) > 6 {
			ports = ports[:6]
		}
		for _, src := range addrs {
			for _, dst := range addrs {
				for _, proto := range []ruleset.Proto{ruleset.TCP, ruleset.UDP, ruleset.SCTP} {
					for _, port := range ports {
						ne, ni := naive.Allowed(c, src, dst, proto, port)
						ce, ci := compiled(rs, src, dst, proto, port)
						if ne != ce || ni != ci {
							t.Fatalf("%s -> %s %s/%d: naive egress=%v ingress=%v, compiled egress=%v ingress=%v\ninput:\n%s",
								src, dst, proto, port, ne, ni, ce, ci, data)
						}
					}
				}
			}
		}
	})
}

func compiled(rs *ruleset.Ruleset, src, dst netip.Addr, proto ruleset.Proto, port uint16) (egress, ingress bool) {
	egress, ingress = true, true
	if id, ok := rs.PodByIP(src); ok {
		egress = rs.Verdict(id, ruleset.Egress, dst, proto, port).Allowed
	}
	if id, ok := rs.PodByIP(dst); ok {
		ingress = rs.Verdict(id, ruleset.Ingress, src, proto, port).Allowed
	}
	return egress, ingress
}
