package worker

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ThreadName is the name of a worker's OS thread (what ps -L, top -H and
// /proc/PID/task/TID/comm show), so that the workers' threads can be told
// from the agent's others: to see their CPU, or to give only them a
// scheduling policy from outside (chrt -f -p 1 TID; the lab benchmarks'
// XDPOLICY_BENCH_AGENT_SCHED=workers-fifo:1).
const ThreadName = "xdp-worker"

// ownThread locks the calling goroutine to its OS thread for the worker's
// loop and names the thread ThreadName; release gives the thread its name
// back and unlocks it.
func ownThread() (release func()) {
	runtime.LockOSThread()
	var old [16]byte
	named := unix.Prctl(unix.PR_GET_NAME, uintptr(unsafe.Pointer(&old[0])), 0, 0, 0) == nil
	if named {
		name := append([]byte(ThreadName), 0)
		named = unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&name[0])), 0, 0, 0) == nil
	}
	return func() {
		if named {
			unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&old[0])), 0, 0, 0)
		}
		runtime.UnlockOSThread()
	}
}
