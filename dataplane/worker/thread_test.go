package worker

import (
	"os"
	"strings"
	"testing"
)

// TestOwnThread: the worker's thread is named ThreadName while it runs and
// gets its name back.
func TestOwnThread(t *testing.T) {
	comm := func() string {
		b, _ := os.ReadFile("/proc/thread-self/comm")
		return strings.TrimSpace(string(b))
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		before := comm()
		release := ownThread()
		if got := comm(); got != ThreadName {
			t.Errorf("thread named %q, want %q", got, ThreadName)
		}
		release()
		if got := comm(); got != before {
			t.Errorf("name %q after release, want %q back", got, before)
		}
	}()
	<-done
}
