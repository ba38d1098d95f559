package lab_test

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdpolicy/xdpolicy/control/lab"
)

// TestAgentCrashFailsClosed SIGKILLs both nodes' agents (as an OOM kill or
// a panic would) during an established connection: while they are down,
// the pinned programs keep enforcing (the connection keeps flowing, a new
// connection the policy allows fails closed, one it denies stays denied);
// restarted, the agents take the pins over (generation, cache, attachments)
// and the connection still flows, new allowed connections get through and
// denied ones do not.
func TestAgentCrashFailsClosed(t *testing.T) {
	needAgentLab(t)
	t.Parallel()
	s, pods := relatedLab(t, "crash")
	a, b, c := pods["a"], pods["b"], pods["c"]
	to := netip.AddrPortFrom(podAddr(t, c, 4), 5001)
	echo := echoServer(t, c, to)
	conn := dialFrom(t, a, to)
	if err := roundTrip(conn); err != nil {
		t.Fatalf("established connection before the crash: %v", err)
	}

	for _, n := range s.Nodes {
		pins, _ := filepath.Glob(filepath.Join(s.BPFFS, n.Name, "tcx-*"))
		if len(pins) == 0 {
			t.Errorf("%s: no tcx link pinned in %s while the agent runs", n.Name, filepath.Join(s.BPFFS, n.Name))
		}
	}
	var restart []*exec.Cmd
	for _, p := range s.Procs {
		if p.Role == "agent" {
			restart = append(restart, killAgent(t, s, p))
		}
	}

	if err := roundTrip(conn); err != nil {
		t.Errorf("established connection while the agents are down: %v", err)
	}
	if tryDial(a, to) {
		t.Errorf("new allowed connection %s -> %s while the agents are down: connected, want fail closed", a.ID(), to)
	}
	if tryDial(b, to) {
		t.Errorf("new denied connection %s -> %s while the agents are down: connected", b.ID(), to)
	}

	for _, cmd := range restart {
		if err := cmd.Start(); err != nil {
			t.Fatalf("restart agent: %v", err)
		}
		go cmd.Wait()
	}
	deadline := time.Now().Add(settle)
	for !tryDial(a, to) {
		if time.Now().After(deadline) {
			t.Fatalf("new allowed connection after the restart: refused for %v\n%s", settle, agentLogs(s))
		}
	}
	if tryDial(b, to) {
		t.Errorf("new denied connection %s -> %s after the restart: connected", b.ID(), to)
	}
	if err := roundTrip(conn); err != nil {
		t.Errorf("established connection after the restart: %v", err)
	}
	for _, p := range s.Procs {
		if p.Role == "agent" && !logHas(p.Log, "previous_generation=", "previous_generation=0 ") {
			t.Errorf("agent of %s did not take over the pinned generation:\n%s", p.Of, agentLogs(s))
		}
	}
	conn.Close()
	echo.Close()
}

// killAgent SIGKILLs a lab agent and returns the command that starts it
// again with the same arguments, in the same namespace, logging to the
// same file.
func killAgent(t *testing.T, s *lab.State, p lab.Process) *exec.Cmd {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID))
	if err != nil {
		t.Fatalf("agent of %s: %v", p.Of, err)
	}
	args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
	var netns string
	for _, n := range s.Nodes {
		if n.Name == p.Of {
			netns = n.Netns
		}
	}
	if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); syscall.Kill(p.PID, 0) == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("agent of %s (pid %d) still alive after SIGKILL", p.Of, p.PID)
		}
	}
	log, err := os.OpenFile(p.Log, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + netns, "--"}, args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	return cmd
}

// logHas reports whether the log's last line containing want does not
// contain not.
func logHas(path, want, not string) bool {
	data, _ := os.ReadFile(path)
	var last string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, want) {
			last = l
		}
	}
	return last != "" && !strings.Contains(last, not)
}

// echoServer answers every line on every connection to addr inside the pod.
func echoServer(t *testing.T, p lab.Pod, addr netip.AddrPort) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	if rerr := lab.RunIn(p.Netns, func() { ln, err = net.Listen("tcp", addr.String()) }); rerr != nil || err != nil {
		t.Fatal(rerr, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					fmt.Fprintln(c, sc.Text())
				}
			}()
		}
	}()
	return ln
}

func dialFrom(t *testing.T, p lab.Pod, addr netip.AddrPort) net.Conn {
	t.Helper()
	var c net.Conn
	var err error
	for deadline := time.Now().Add(settle); ; {
		if rerr := lab.RunIn(p.Netns, func() { c, err = net.DialTimeout("tcp", addr.String(), time.Second) }); rerr != nil {
			t.Fatal(rerr)
		}
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s -> %s: %v", p.ID(), addr, err)
		}
	}
}

// tryDial reports whether a new TCP connection from the pod to addr is
// established within a second.
func tryDial(p lab.Pod, addr netip.AddrPort) bool {
	var c net.Conn
	var err error
	if rerr := lab.RunIn(p.Netns, func() { c, err = net.DialTimeout("tcp", addr.String(), time.Second) }); rerr != nil || err != nil {
		return false
	}
	c.Close()
	return true
}

// roundTrip sends a line on c and expects it back within 2 seconds.
func roundTrip(c net.Conn) error {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	msg := fmt.Sprintf("ping %d", time.Now().UnixNano())
	if _, err := fmt.Fprintln(c, msg); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		return err
	}
	if got := string(bytes.TrimSpace(line)); got != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}
