package oracle_test

import (
	"bytes"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/control/oracle"
	"github.com/xdpolicy/xdpolicy/control/query"
)

// TestParseTable reads back what query.WriteTable writes, with pod names
// as column labels (narrow tables) and with numbered columns and a legend
// (wide ones).
func TestParseTable(t *testing.T) {
	for _, pods := range []int{3, 20} {
		t.Run(fmt.Sprintf("pods=%d", pods), func(t *testing.T) {
			c := &model.Cluster{}
			for i := range pods {
				p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pod-%d", i), Namespace: "ns", Labels: map[string]string{"i": fmt.Sprint(i % 3)}}}
				p.Spec.Containers = []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{ContainerPort: 80}, {ContainerPort: 53, Protocol: corev1.ProtocolUDP}}}}
				ip := fmt.Sprintf("10.0.0.%d", i+1)
				p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
				c.Add(p)
			}
			c.Add(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny", Namespace: "ns"},
				Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"i": "1"}}}})
			c.Complete()
			q, problems := query.New(c)
			if len(problems) > 0 {
				t.Fatal(problems)
			}
			eps, err := q.Endpoints(nil)
			if err != nil {
				t.Fatal(err)
			}
			ports := q.DefaultPorts()
			results := q.Matrix(eps, eps, ports)
			var b bytes.Buffer
			query.WriteTable(&b, eps, eps, ports, results)
			cells, err := oracle.ParseTable(b.String())
			if err != nil {
				t.Fatalf("%v\n%s", err, b.String())
			}
			if len(cells) != len(results) {
				t.Fatalf("%d cells, want %d:\n%s", len(cells), len(results), b.String())
			}
			denied := 0
			for i, r := range results {
				want := oracle.Cell{From: r.From, To: r.To, Port: uint16(r.Port), Proto: corev1.Protocol(r.Protocol), Allowed: r.Allowed}
				if cells[i] != want {
					t.Errorf("cell %d = %v, want %v", i, cells[i], want)
				}
				if !r.Allowed {
					denied++
				}
			}
			if denied == 0 {
				t.Error("no denied cell: the table tests nothing")
			}
		})
	}
}
