package agent_test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdpolicy/xdpolicy/xdpprog"
)

// cleanup runs `xdpolicy cleanup` in the node's namespace and returns its
// output and exit status.
func (e *env) cleanup(t *testing.T) (string, int) {
	t.Helper()
	cmd := exec.Command("nsenter", "--net=/var/run/netns/"+e.node, "--", e.bin, "cleanup", "--bpffs-dir", e.bpffs)
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatal(err)
		}
		code = ee.ExitCode()
	}
	return string(out), code
}

func (e *env) pins(t *testing.T) []string {
	t.Helper()
	pins, _ := filepath.Glob(filepath.Join(e.bpffs, "*"))
	return pins
}

// TestCleanup: a second agent and `xdpolicy cleanup` are refused while an
// agent runs; cleanup removes
// everything an agent left, whether it kept it on purpose (--keep-on-exit)
// or was SIGKILLed: the tcx programs, dp0/dp1 and its XDP program, the pins.
func TestCleanup(t *testing.T) {
	e := newEnv(t, 2)
	e.setPolicies(denyB)
	for _, how := range []string{"keep-on-exit", "SIGKILL"} {
		a := e.startAgent("--keep-on-exit")
		a.waitEnforced(t, 1)
		if out, code := e.cleanup(t); code != 1 || !strings.Contains(out, "in use by a running agent") || !strings.Contains(out, "stop the agent first") {
			t.Errorf("cleanup while the agent runs: exit %d, %q; want exit 1 saying to stop the agent first", code, out)
		}
		if how == "keep-on-exit" {
			out, err := exec.Command("nsenter", "--net=/var/run/netns/"+e.node, "--", e.bin, "agent", "--cluster", e.cluster,
				"--node", e.nodeName, "--bpffs-dir", e.bpffs, "--metrics-addr", "127.0.0.1:0").CombinedOutput()
			if err == nil || !strings.Contains(string(out), "another agent runs for node") {
				t.Errorf("a second agent on the same pin directory: %v, %s; want it refused", err, out)
			}
		}
		if how == "SIGKILL" {
			// nsenter execs the agent: its pid is the agent's.
			a.cmd.Process.Signal(syscall.SIGKILL)
			select {
			case <-a.done:
			case <-time.After(5 * time.Second):
				t.Fatal("agent survived SIGKILL")
			}
		} else {
			a.stop(t)
		}
		if pins := e.pins(t); len(pins) == 0 {
			t.Fatalf("%s: nothing pinned in %s", how, e.bpffs)
		}
		out, code := e.cleanup(t)
		if code != 0 {
			t.Fatalf("%s: cleanup exit %d: %s", how, code, out)
		}
		for _, want := range []string{"tcx-", "XDP program on dp1", "punt veth dp0/dp1", "pinned map " + filepath.Join(e.bpffs, "flows")} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: cleanup did not report %q:\n%s", how, want, out)
			}
		}
		e.checkClean(t)
		if out, code := e.cleanup(t); code != 0 || strings.TrimSpace(out) != "nothing to clean up" {
			t.Errorf("%s: second cleanup: exit %d, %q; want 0, nothing to clean up", how, code, out)
		}
		// The pin directory is the test's; it must exist for the next
		// agent (the env's cleanup removes it at the end). Cleanup may
		// have unmounted the bpffs it was on, if xdpolicy mounted it.
		if err := xdpprog.PreparePinDir(e.bpffs); err != nil {
			t.Fatal(err)
		}
	}
}
