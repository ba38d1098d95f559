package lab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// netnsDir is where iproute2 keeps named network namespaces.
const netnsDir = "/var/run/netns"

// CheckHost reports what this machine lacks to run a lab: root and the ip
// command.
func CheckHost() error {
	if os.Geteuid() != 0 {
		return errors.New("lab needs root (network namespaces, veths, sysctls)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("lab needs the ip command (iproute2)")
	}
	return nil
}

// ipBatch runs iproute2 commands, one per line, in namespace ns ("" for
// none: only `netns` commands are run that way).
func ipBatch(ns string, lines []string) error {
	if len(lines) == 0 {
		return nil
	}
	args := []string{"-batch", "-"}
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	cmd := exec.Command("ip", args...)
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		where := ""
		if ns != "" {
			where = " in netns " + ns
		}
		return fmt.Errorf("ip%s: %w: %s", where, err, strings.TrimSpace(out.String()))
	}
	return nil
}

func addNetns(name string) error {
	out, err := exec.Command("ip", "netns", "add", name).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip netns add %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// delNetns removes a named namespace; a missing one is not an error.
func delNetns(name string) error {
	path := filepath.Join(netnsDir, name)
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip netns delete %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// inNetns runs fn on an OS thread that has entered the named network
// namespace. The thread is never handed back to the scheduler (the
// goroutine exits locked, so Go terminates the thread): nothing else ever
// runs in the wrong namespace. Sockets fn opens stay in the namespace.
func inNetns(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: see above.
		fd, err := unix.Open(filepath.Join(netnsDir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("netns %s: %w", name, err)
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			errc <- fmt.Errorf("setns %s: %w", name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// sysctls writes net.* sysctls (key "ipv4/ip_forward" = value) in a
// namespace.
func sysctls(ns string, kv [][2]string) error {
	return inNetns(ns, func() error {
		for _, e := range kv {
			p := filepath.Join("/proc/sys/net", e[0])
			if err := os.WriteFile(p, []byte(e[1]), 0o644); err != nil {
				return fmt.Errorf("sysctl net/%s=%s in netns %s: %w", e[0], e[1], ns, err)
			}
		}
		return nil
	})
}

// nsID identifies a network namespace by device and inode.
type nsID struct{ dev, ino uint64 }

func statNS(path string) (nsID, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, false
	}
	return nsID{st.Dev, st.Ino}, true
}

// pidsIn lists the processes whose network namespace is one of ids.
func pidsIn(ids map[nsID]string) map[int]string {
	out := map[int]string{}
	ents, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		id, ok := statNS(filepath.Join("/proc", e.Name(), "ns/net"))
		if !ok {
			continue
		}
		if ns, ok := ids[id]; ok {
			out[pid] = ns
		}
	}
	return out
}

// stopProcesses sends SIGTERM to every process inside the given named
// namespaces, waits up to grace for them to exit, then SIGKILLs the rest.
func stopProcesses(netns []string, grace time.Duration) {
	ids := map[nsID]string{}
	for _, n := range netns {
		if id, ok := statNS(filepath.Join(netnsDir, n)); ok {
			ids[id] = n
		}
	}
	if len(ids) == 0 {
		return
	}
	pids := pidsIn(ids)
	for pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for len(pids) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		for pid := range pids {
			if !alive(pid) {
				delete(pids, pid)
			}
		}
	}
	for pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for deadline := time.Now().Add(2 * time.Second); len(pids) > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		for pid := range pids {
			if !alive(pid) {
				delete(pids, pid)
			}
		}
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// comm may hold spaces; the state follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}
