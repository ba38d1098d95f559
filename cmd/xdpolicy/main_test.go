package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The CLI's contract, checked on the real binary (built once here): exit
// status 0 on success, 1 when the command fails at run time, 2 when it was
// called wrongly; every error is one line on stderr, prefixed "xdpolicy:",
// that says what to do.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "xdpolicy-cli-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "xdpolicy")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building xdpolicy: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// writeFile writes content into a file of the test's own.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const badCIDR = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad-cidr, namespace: default}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.300/8}}]
`

func TestExitStatus(t *testing.T) {
	cluster := filepath.Join("..", "..", "deploy", "examples", "01-basics", "cluster.yaml")
	badYAML := writeFile(t, "bad.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: a\n  namespace: [\n")
	cidr := writeFile(t, "cidr.yaml", badCIDR)
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	for _, c := range []struct {
		name   string
		args   []string
		status int
		// stderr must contain this (for status 0: stdout must).
		want string
	}{
		// Success.
		{"no arguments: help", nil, 0, "Available Commands:"},
		{"--help", []string{"--help"}, 0, "Available Commands:"},
		{"group without subcommand: its help", []string{"lab"}, 0, "xdpolicy lab [command]"},
		{"help of a subcommand", []string{"help", "lab", "up"}, 0, "up builds the lab"},
		{"probe", []string{"probe", "--cluster", cluster, "--port", "80/TCP", "-o", "json"}, 0, `"allowed":true`},

		// Run-time failures: exit 1, naming the file and what is wrong.
		{"malformed YAML", []string{"probe", "--cluster", badYAML}, 1, "bad.yaml: document 1: malformed YAML"},
		{"invalid CIDR", []string{"probe", "--cluster", cluster, "--policies", cidr}, 1,
			`NetworkPolicy default/bad-cidr: spec.ingress[0].from[0].ipBlock.cidr: Invalid value: "10.0.0.300/8": must be a valid CIDR`},
		{"missing file", []string{"probe", "--cluster", missing}, 1, "missing.yaml: no such file or directory"},
		{"no agent", []string{"trace", "--agent", "127.0.0.1:1"}, 1, "no agent at 127.0.0.1:1: is `xdpolicy agent` running?"},

		// Usage errors: exit 2, saying what to do.
		{"unknown flag", []string{"--bogus"}, 2, "unknown flag: --bogus (see 'xdpolicy --help')"},
		{"unknown flag of a subcommand", []string{"probe", "--bogus"}, 2, "unknown flag: --bogus (see 'xdpolicy probe --help')"},
		{"unknown flag of a nested subcommand", []string{"lab", "up", "--bogus"}, 2, "(see 'xdpolicy lab up --help')"},
		{"unknown subcommand", []string{"frobnicate"}, 2, `unknown command "frobnicate" for "xdpolicy" (see 'xdpolicy --help')`},
		{"misspelt subcommand", []string{"prbe"}, 2, `did you mean "probe"?`},
		{"unknown nested subcommand", []string{"lab", "frobnicate"}, 2, `unknown command "frobnicate" for "xdpolicy lab" (see 'xdpolicy lab --help')`},
		{"unknown help topic", []string{"help", "frobnicate"}, 2, `no help topic "frobnicate" (see 'xdpolicy --help')`},
		{"unexpected argument", []string{"probe", "--cluster", cluster, "extra"}, 2, `unexpected argument "extra" (see 'xdpolicy probe --help')`},
		{"probe without --cluster", []string{"probe"}, 2, "--cluster is required"},
		{"explain without --from", []string{"explain", "--cluster", cluster, "--to", "default/api", "--port", "80/TCP"}, 2, "--from, --to and --port are required"},
		{"agent without --node", []string{"agent"}, 2, "--node is required (see 'xdpolicy agent --help')"},
		{"lab up without --cluster", []string{"lab", "up"}, 2, "--cluster is required"},
		{"bad output format", []string{"probe", "--cluster", cluster, "-o", "xml"}, 2, `-o "xml": want table or json`},
		{"bad port", []string{"probe", "--cluster", cluster, "--port", "80/ICMP"}, 2, "ICMP"},
		{"bad flag value", []string{"lab", "probe", "--timeout", "soon"}, 2, `invalid argument "soon" for "--timeout"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command(binary, c.args...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			status := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				status = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if status != c.status {
				t.Fatalf("xdpolicy %s: exit status %d, want %d\nstdout: %s\nstderr: %s", strings.Join(c.args, " "), status, c.status, stdout.String(), stderr.String())
			}
			if c.status == 0 {
				if !strings.Contains(stdout.String(), c.want) {
					t.Errorf("xdpolicy %s: stdout lacks %q:\n%s", strings.Join(c.args, " "), c.want, stdout.String())
				}
				return
			}
			msg := stderr.String()
			if !strings.HasPrefix(msg, "xdpolicy: ") || strings.Count(msg, "\n") != 1 || !strings.Contains(msg, c.want) {
				t.Errorf("xdpolicy %s: stderr %q, want one line \"xdpolicy: …\" containing %q", strings.Join(c.args, " "), msg, c.want)
			}
			if stdout.Len() > 0 {
				t.Errorf("xdpolicy %s: failed but printed on stdout:\n%s", strings.Join(c.args, " "), stdout.String())
			}
		})
	}
}
