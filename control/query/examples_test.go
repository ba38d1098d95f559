package query_test

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/xdpolicy/xdpolicy/control/kubetest"
	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/control/oracle"
	"github.com/xdpolicy/xdpolicy/control/query"
)

// Regenerate with: go test ./control/query -run TestExamples -update
// and review every changed cell by hand before committing.
var update = flag.Bool("update", false, "rewrite deploy/examples/*/*/expected.txt")

// TestExamples checks the matrix of every step of every scenario under
// deploy/examples against its reviewed expected.txt, and every expected.txt
// against the oracle (subtest "oracle", which needs the API server).
func TestExamples(t *testing.T) {
	steps, err := filepath.Glob("../../deploy/examples/*/[0-9]*")
	if err != nil || len(steps) < 10 {
		t.Fatalf("found %d scenario steps (%v), want at least 10", len(steps), err)
	}
	for _, step := range steps {
		name, _ := filepath.Rel("../../deploy/examples", step)
		t.Run(name, func(t *testing.T) {
			res, err := model.Load(filepath.Join(filepath.Dir(step), "cluster.yaml"), step)
			if err != nil {
				t.Fatal(err)
			}
			if res.Skipped != "" {
				t.Errorf("unexpected skipped objects: %s", res.Skipped)
			}
			q, problems := query.New(res.Cluster)
			if len(problems) > 0 {
				t.Fatal(problems)
			}
			eps, err := q.Endpoints(nil)
			if err != nil {
				t.Fatal(err)
			}
			ports := q.DefaultPorts()
			var got bytes.Buffer
			query.WriteTable(&got, eps, eps, ports, q.Matrix(eps, eps, ports))
			file := filepath.Join(step, "expected.txt")
			if *update {
				if err := os.WriteFile(file, got.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(string(want), got.String()); d != "" {
				t.Errorf("matrix differs from %s (-want +got):\n%s", file, d)
			}
		})
	}
	t.Run("oracle", func(t *testing.T) { checkOracle(t, steps) })
}

// checkOracle checks every expected.txt against an oracle sharing no code
// with the compiler (control/oracle: kube-network-policies' evaluator over
// the step's objects created in a real API server), so that a wrong
// expectation cannot be regenerated into truth with -update.
func checkOracle(t *testing.T, steps []string) {
	srv := kubetest.Start(t)
	ctx := context.Background()
	orc, err := oracle.New(srv.Client)
	if err != nil {
		t.Fatal(err)
	}
	defer orc.Close()
	for _, step := range steps {
		name, _ := filepath.Rel("../../deploy/examples", step)
		t.Run(name, func(t *testing.T) {
			docs, err := oracle.Docs(filepath.Join(filepath.Dir(step), "cluster.yaml"), step)
			if err != nil {
				t.Fatal(err)
			}
			if err := oracle.Reset(ctx, srv.Client); err != nil {
				t.Fatal(err)
			}
			for _, d := range docs {
				if err := oracle.Create(ctx, srv.Client, d); err != nil {
					t.Fatal(err)
				}
			}
			stored, err := oracle.List(ctx, srv.Client)
			if err != nil {
				t.Fatal(err)
			}
			if err := orc.WaitSynced(ctx, stored.Versions()); err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(step, "expected.txt")
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			cells, err := oracle.ParseTable(string(want))
			if err != nil || len(cells) == 0 {
				t.Fatalf("%s: %d cells, %v", file, len(cells), err)
			}
			for _, c := range cells {
				got, src, dst, err := orc.Probe(c)
				if err != nil {
					t.Errorf("%s: %s: %v", file, c, err)
				} else if got != c.Allowed {
					t.Errorf("%s: %s, but kube-network-policies v0.8.0 decides allowed=%v (%s -> %s)", file, c, got, src, dst)
				}
			}
		})
	}
}
