package source

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/xdpolicy/xdpolicy/control/model"
)

func TestDirDeliversChangesAndKeepsLastGood(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: default}\nspec: {nodeName: n1, containers: [{name: c, image: x}]}\nstatus: {podIP: 10.0.0.1}\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan *model.Cluster, 10)
	d := &Dir{Paths: []string{dir}, Interval: 20 * time.Millisecond}
	go d.Run(ctx, func(c *model.Cluster) { got <- c })
	wait := func() *model.Cluster {
		t.Helper()
		select {
		case c := <-got:
			return c
		case <-time.After(3 * time.Second):
			t.Fatal("no snapshot within 3s")
			return nil
		}
	}
	if c := wait(); len(c.Pods) != 1 {
		t.Fatalf("first snapshot has %d pods, want 1", len(c.Pods))
	}
	write("bad.yaml", "kind: Pod\nmetadata: [\n")
	select {
	case c := <-got:
		t.Fatalf("bad file delivered a snapshot with %d pods", len(c.Pods))
	case <-time.After(200 * time.Millisecond):
	}
	os.Remove(filepath.Join(dir, "bad.yaml"))
	write("b.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: default}\nspec: {nodeName: n1, containers: [{name: c, image: x}]}\nstatus: {podIP: 10.0.0.2}\n")
	if c := wait(); len(c.Pods) != 2 {
		t.Fatalf("snapshot after fix has %d pods, want 2", len(c.Pods))
	}
}
