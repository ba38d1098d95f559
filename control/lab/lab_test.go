package lab_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/xdpolicy/xdpolicy/control/lab"
	"github.com/xdpolicy/xdpolicy/control/query"
)

// The end-to-end tests drive the real binary, built once here.
var binary string

func TestMain(m *testing.M) {
	if lab.CheckHost() != nil {
		os.Exit(m.Run()) // the end-to-end tests skip; no binary needed
	}
	dir, err := os.MkdirTemp("", "xdpolicy-lab-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "xdpolicy")
	out, err := exec.Command("go", "build", "-o", binary, "../../cmd/xdpolicy").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building xdpolicy: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// needLab skips unless this machine can run labs.
func needLab(t *testing.T) {
	t.Helper()
	if err := lab.CheckHost(); err != nil {
		t.Skip("skipping:", err)
	}
}

// labName is unique per test and process.
func labName(t testing.TB, short string) string {
	return fmt.Sprintf("t%d-%s", os.Getpid()%100000, short)
}

// run runs the binary and returns stdout; stderr goes into the error.
func run(args ...string) (string, error) {
	cmd := exec.Command(binary, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("xdpolicy %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), err
}

func netnsList(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	slices.Sort(names)
	return names
}

// up brings a lab up with --agent=false and takes it down when the test
// ends, whatever happens.
func up(t *testing.T, name string, args ...string) string {
	t.Helper()
	t.Cleanup(func() {
		if _, err := run("lab", "down", "--name", name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	out, err := run(append([]string{"lab", "up", "--name", name, "--agent=false"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// cell is one line of `lab probe -o json`.
type cell struct {
	query.Result
	Observed    bool   `json:"observed"`
	Observation string `json:"observation"`
}

func probe(t *testing.T, name string, args ...string) []cell {
	t.Helper()
	out, err := run(append([]string{"lab", "probe", "--name", name, "-o", "json"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	var cells []cell
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		// The contract: each line is a query.Result, plus observed.
		var r query.Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("probe line %q: %v", sc.Text(), err)
		}
		var c cell
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			t.Fatal(err)
		}
		if r.From == "" || r.To == "" || r.Port == 0 || r.Protocol == "" || !c.Observed {
			t.Fatalf("probe line %q lacks from/to/port/protocol/observed", sc.Text())
		}
		cells = append(cells, c)
	}
	if len(cells) == 0 {
		t.Fatalf("probe printed no cells:\n%s", out)
	}
	return cells
}

func find(cells []cell, from, to, proto string) *cell {
	for i := range cells {
		if cells[i].From == from && cells[i].To == to && cells[i].Protocol == proto {
			return &cells[i]
		}
	}
	return nil
}

// TestLabFrontendBackend brings up scenario 03 on two nodes without agents:
// every flow must get through, same node, across nodes and from external;
// a second up of the same name fails without touching anything; apply,
// delete and probe --expect work through the CLI; down removes everything.
func TestLabFrontendBackend(t *testing.T) {
	needLab(t)
	t.Parallel()
	name := labName(t, "fb")
	before := netnsList(t)
	out := up(t, name, "--cluster", "../../deploy/examples/03-frontend-backend/cluster.yaml")
	for _, want := range []string{"node-1", "node-2", "default/frontend", "10.244.2.20", "100.64.", lab.Dir(name)} {
		if !strings.Contains(out, want) {
			t.Errorf("lab up output lacks %q:\n%s", want, out)
		}
	}
	s, err := lab.Load(name)
	if err != nil {
		t.Fatal(err)
	}
	ext := s.External.IPs[0].String()

	cells := probe(t, name)
	if len(cells) != 5*4 {
		t.Errorf("probe gave %d cells, want 20 (5 sources x 4 pods x 80/TCP)", len(cells))
	}
	for _, c := range cells {
		if !c.Allowed || c.Protocol != "TCP" || c.Port != 80 {
			t.Errorf("%s -> %s %d/%s: allowed=%v (%s), want allowed on 80/TCP without enforcement", c.From, c.To, c.Port, c.Protocol, c.Allowed, c.Observation)
		}
	}
	for _, f := range [][2]string{
		{"default/frontend", "other/client"},      // same node
		{"default/frontend", "default/backend"},   // across nodes
		{"monitoring/prometheus", "other/client"}, // across nodes, other way
		{ext, "default/backend"},                  // external
	} {
		c := find(cells, f[0], f[1], "TCP")
		if c == nil || !c.Allowed || c.Observation != "reply "+f[1] {
			t.Errorf("%s -> %s: %+v, want a reply from %s", f[0], f[1], c, f[1])
		}
		if c != nil && !netip.MustParseAddr(c.ToIP).Is4() {
			t.Errorf("%s -> %s used %s, want IPv4", f[0], f[1], c.ToIP)
		}
	}

	// A second up of the same name fails before creating anything.
	nsUp := netnsList(t)
	if _, err := run("lab", "up", "--name", name, "--agent=false", "--cluster", "../../deploy/examples/01-basics/cluster.yaml"); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second lab up: err %v, want 'already exists'", err)
	}
	if d := cmp.Diff(ours(nsUp, name), ours(netnsList(t), name)); d != "" {
		t.Errorf("failed second up changed the namespaces (-before +after):\n%s", d)
	}
	if _, err := lab.Load(name); err != nil {
		t.Errorf("failed second up broke the first lab: %v", err)
	}

	// Policies and labels through the CLI; without an agent nothing is
	// enforced, so --expect must see the difference.
	policy := "../../deploy/examples/03-frontend-backend/1-backend-allow-frontend/backend-allow-frontend.yaml"
	if out, err := run("lab", "apply", "--name", name, "-f", policy); err != nil || !strings.Contains(out, "created") {
		t.Fatalf("lab apply: %q, %v", out, err)
	}
	pf := lab.PolicyFile(s.Dir, "default", "backend-allow-frontend")
	if _, err := os.Stat(pf); err != nil {
		t.Fatalf("lab apply wrote no policy file: %v", err)
	}
	_, err = run("lab", "probe", "--name", name, "--expect", "-o", "json")
	if err == nil || !strings.Contains(err.Error(), "differs: other/client -> default/backend") {
		t.Errorf("probe --expect without enforcement: %v, want the denied cells to differ", err)
	}
	labels := writeFile(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: other, labels: {team: x}}\n")
	if _, err := run("lab", "apply", "--name", name, "-f", labels); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(lab.ClusterDir(s.Dir), "cluster.yaml")); !strings.Contains(string(b), "team: x") {
		t.Errorf("label change not in the cluster YAML")
	}
	if _, err := run("lab", "delete", "--name", name, "-f", policy); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pf); !os.IsNotExist(err) {
		t.Errorf("lab delete left %s: %v", pf, err)
	}
	if _, err := run("lab", "probe", "--name", name, "--expect"); err != nil {
		t.Errorf("probe --expect with no policies: %v", err)
	}
	if out, err := run("lab", "list"); err != nil || !strings.Contains(out, name) {
		t.Errorf("lab list: %q, %v", out, err)
	}

	// Down removes everything and is idempotent.
	for range 2 {
		if _, err := run("lab", "down", "--name", name); err != nil {
			t.Fatal(err)
		}
	}
	checkGone(t, name, before)
	for _, p := range []string{lab.Dir(name), lab.BPFFSRoot(name)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after down: %v", p, err)
		}
	}
}

// TestLabDualStack checks IPv6, UDP and SCTP (over raw sockets on a kernel
// without SCTP), and address allocation for a pod without addresses.
func TestLabDualStack(t *testing.T) {
	needLab(t)
	t.Parallel()
	name := labName(t, "ds")
	up(t, name, "--cluster", "testdata/dualstack.yaml")
	s, err := lab.Load(name)
	if err != nil {
		t.Fatal(err)
	}
	// ds/c had no addresses: it got one of each family on its node.
	for _, p := range s.Pods {
		if p.ID() == "ds/c" && (len(p.IPs) != 2 || !p.IPs[0].Is4() || !p.IPs[1].Is6()) {
			t.Errorf("ds/c got addresses %v, want one IPv4 and one IPv6", p.IPs)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(lab.ClusterDir(s.Dir), "cluster.yaml")); !strings.Contains(string(b), "fd00:10:244:") {
		t.Errorf("allocated addresses missing from the cluster YAML")
	}

	for _, fam := range []string{"4", "6"} {
		cells := probe(t, name, "--family", fam)
		protos := map[string]int{}
		for _, c := range cells {
			protos[c.Protocol]++
			if !c.Allowed {
				t.Errorf("IPv%s %s -> %s %d/%s: %s, want allowed", fam, c.From, c.To, c.Port, c.Protocol, c.Observation)
			}
			if a, err := netip.ParseAddr(c.ToIP); err != nil || a.Is6() != (fam == "6") {
				t.Errorf("IPv%s %s -> %s used %q", fam, c.From, c.To, c.ToIP)
			}
		}
		if protos["TCP"] == 0 || protos["UDP"] == 0 {
			t.Errorf("IPv%s: probed %v, want TCP and UDP", fam, protos)
		}
		if protos["SCTP"] == 0 {
			t.Errorf("IPv%s: nothing was probed over SCTP", fam)
		}
		// SCTP gets through across nodes, over the kernel's stack or, on
		// a kernel without one, over raw sockets, and says so.
		c := find(cells, "ds/a", "ds/b", "SCTP")
		wantObs := "reply ds/b"
		if !s.SCTP {
			wantObs += " (" + lab.RawSCTPNote + ")"
		}
		if c == nil || !c.Allowed || c.Observation != wantObs {
			t.Errorf("IPv%s ds/a -> ds/b SCTP (across nodes): %+v, want %q", fam, c, wantObs)
		}
		// ds/c serves no SCTP: an INIT is refused, so it was reached.
		if c := find(cells, "ds/a", "ds/c", "SCTP"); c == nil || !c.Allowed || !strings.HasPrefix(c.Observation, "refused") {
			t.Errorf("IPv%s ds/a -> ds/c SCTP (no SCTP port): %+v, want refused", fam, c)
		}
		if c := find(cells, s.External.IPs[map[string]int{"4": 0, "6": 1}[fam]].String(), "ds/b", "UDP"); c == nil || !c.Allowed {
			t.Errorf("IPv%s external -> ds/b UDP: %+v", fam, c)
		}
		if c := find(cells, "ds/a", "ds/b", "UDP"); c == nil || !c.Allowed || c.Observation != "reply ds/b" {
			t.Errorf("IPv%s ds/a -> ds/b UDP (across nodes): %+v", fam, c)
		}
	}
	if !s.SCTP {
		t.Log("this kernel has no SCTP stack: SCTP checked over raw sockets")
	}
}

// TestLabRollback makes up fail half-way (every agent exits at once) and
// checks that it removes what it made.
func TestLabRollback(t *testing.T) {
	needLab(t)
	t.Parallel()
	name := labName(t, "rb")
	t.Cleanup(func() { run("lab", "down", "--name", name) })
	before := netnsList(t)
	_, err := run("lab", "up", "--name", name, "--agent-args=--no-such-flag-xyz", "--cluster", "../../deploy/examples/01-basics/cluster.yaml")
	if err == nil || !strings.Contains(err.Error(), "exited at once") {
		t.Fatalf("lab up with failing agents: %v, want 'exited at once'", err)
	}
	checkGone(t, name, before)
}

// ours keeps the namespaces of lab name.
func ours(list []string, name string) []string {
	var out []string
	for _, n := range list {
		if strings.HasPrefix(n, name+"_") {
			out = append(out, n)
		}
	}
	return out
}

// checkGone checks that nothing of lab name is left: ip netns list shows
// none of its namespaces (as before it came up; other namespaces are not
// compared, other tests on this machine make and remove theirs), and its
// lab and bpffs directories are gone.
func checkGone(t *testing.T, name string, before []string) {
	t.Helper()
	if d := cmp.Diff(ours(before, name), ours(netnsList(t), name), cmpopts.EquateEmpty()); d != "" {
		t.Errorf("lab namespaces differ from before up (-before +after):\n%s", d)
	}
	for _, p := range []string{lab.Dir(name), lab.BPFFSRoot(name)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", p, err)
		}
	}
}

// TestLabUpWithoutBPFFS is the fresh-machine regression: in a private mount
// namespace where /sys/fs/bpf is not bpffs (a machine without systemd), `lab
// up` with agents must mount it itself, enforce a policy, and `lab down`
// must unmount it again.
func TestLabUpWithoutBPFFS(t *testing.T) {
	needAgentLab(t)
	for _, c := range []string{"unshare", "mountpoint", "umount"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Fatalf("%s not found (util-linux)", c)
		}
	}
	t.Parallel()
	name := labName(t, "nobpf")
	t.Cleanup(func() { run("lab", "down", "--name", name) })
	before := netnsList(t)
	script := `set -e
B=$1 N=$2
while mountpoint -q /sys/fs/bpf; do umount /sys/fs/bpf; done
echo "bpffs before up: $(mountpoint /sys/fs/bpf || true)"
"$B" lab up --name "$N" --cluster ../../deploy/examples/01-basics/cluster.yaml >/dev/null
mountpoint -q /sys/fs/bpf || { echo "lab up did not mount bpffs"; exit 1; }
"$B" lab apply --name "$N" -f ../../deploy/examples/01-basics/3-deny-all-ingress >/dev/null
ok=
for i in 1 2 3 4 5 6 7 8 9 10; do
	sleep 0.5
	if "$B" lab probe --name "$N" --expect >/dev/null 2>&1; then ok=1; break; fi
done
[ -n "$ok" ] || { "$B" lab probe --name "$N" --expect || true; echo "deny-all-ingress not enforced"; exit 1; }
echo "enforced"
"$B" lab down --name "$N"
if mountpoint -q /sys/fs/bpf; then echo "lab down left bpffs mounted:"; find /sys/fs/bpf; exit 1; fi
echo "bpffs after down: $(mountpoint /sys/fs/bpf || true)"
`
	out, err := exec.Command("unshare", "-m", "--propagation", "private", "bash", "-c", script, "_", binary, name).CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("lab in a mount namespace without bpffs: %v", err)
	}
	if !strings.Contains(string(out), "is not a mountpoint") || !strings.Contains(string(out), "enforced") {
		t.Errorf("the run did not start without bpffs or did not enforce:\n%s", out)
	}
	checkGone(t, name, before)
}
