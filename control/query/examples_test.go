package query_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/control/query"
)

// Regenerate with: go test ./control/query -run TestExamples -update
// and review every changed cell by hand before committing.
var update = flag.Bool("update", false, "rewrite deploy/examples/*/*/expected.txt")

// TestExamples checks the matrix of every step of every scenario under
// deploy/examples against its reviewed expected.txt.
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
}
