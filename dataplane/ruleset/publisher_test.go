package ruleset_test

import (
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

var (
	podIP  = netip.MustParseAddr("10.0.0.1")
	peerIP = netip.MustParseAddr("10.0.1.7")
)

// snapshot is the i-th snapshot of the publisher test: one pod named
// after i, isolated for ingress by a table that admits TCP port portOf(i)
// from 10.0.1.0/24 only. Everything a reader checks derives from i, so a
// reader that sees a mix of two snapshots notices.
func snapshot(i int) *ruleset.Ruleset {
	t := ruleset.NewTable(ruleset.Ingress, []int32{0}, []ruleset.ClauseSpec{{
		Clause: ruleset.Clause{Policy: 0, Rule: 0},
		Blocks: []ruleset.Block{{Prefix: netip.MustParsePrefix("10.0.1.0/24")}},
		Ports:  []ruleset.PortRange{{Proto: ruleset.TCP, Lo: portOf(i), Hi: portOf(i)}},
	}})
	pods := []ruleset.Pod{{Namespace: "default", Name: strconv.Itoa(i), Node: "n1", IPs: []netip.Addr{podIP}}}
	pods[0].Tables[ruleset.Ingress] = t
	return ruleset.New(pods, []ruleset.Policy{{Namespace: "default", Name: "p" + strconv.Itoa(i)}}, []int32{ruleset.NoIdentity})
}

func portOf(i int) uint16 { return uint16(1 + i%60000) }

// check returns what is wrong with snapshot r as a reader sees it, or "".
func check(r *ruleset.Ruleset) string {
	if len(r.Pods) != 1 || len(r.Policies) != 1 {
		return fmt.Sprintf("generation %d: %d pods, %d policies", r.Generation, len(r.Pods), len(r.Policies))
	}
	i, err := strconv.Atoi(r.Pods[0].Name)
	if err != nil {
		return fmt.Sprintf("generation %d: pod name %q", r.Generation, r.Pods[0].Name)
	}
	// The writer publishes snapshot i as generation i: a generation that
	// does not match the contents is a snapshot seen before Publish
	// stamped it, or torn.
	if r.Generation != uint64(i) || r.Policies[0].Name != "p"+r.Pods[0].Name {
		return fmt.Sprintf("generation %d holds snapshot %d of policy %s", r.Generation, i, r.Policies[0].Name)
	}
	if v := r.Verdict(0, ruleset.Ingress, peerIP, ruleset.TCP, portOf(i)); !v.Allowed || v.Reason != ruleset.RuleMatched || v.Clause != 0 {
		return fmt.Sprintf("generation %d: port %d: %+v, want allowed by clause 0", r.Generation, portOf(i), v)
	}
	if v := r.Verdict(0, ruleset.Ingress, peerIP, ruleset.TCP, portOf(i+1)); v.Allowed || v.Reason != ruleset.NoRuleMatched {
		return fmt.Sprintf("generation %d: port %d: %+v, want denied", r.Generation, portOf(i+1), v)
	}
	return ""
}

// TestPublisherConcurrentReaders: readers load the snapshot in a loop while
// one writer publishes new ones. Before the first Publish a reader sees nil
// (and denies); after it has seen a snapshot it never sees nil again, the
// generations it sees never go down, and every snapshot it sees is whole.
// Run it with -race: the snapshots are built and stamped by the writer and
// read by the readers without locks.
func TestPublisherConcurrentReaders(t *testing.T) {
	const readers, snapshots = 4, 2000
	var p ruleset.Publisher
	if r := p.Load(); r != nil {
		t.Fatalf("Load before Publish = generation %d, want nil", r.Generation)
	}
	if v := p.Load().Verdict(0, ruleset.Ingress, peerIP, ruleset.TCP, 80); v.Allowed || v.Reason != ruleset.NoSnapshot {
		t.Fatalf("verdict on the nil snapshot = %+v, want denied for no-snapshot", v)
	}

	var (
		start   = make(chan struct{})
		stop    atomic.Bool
		wg      sync.WaitGroup
		mu      sync.Mutex
		errs    []string
		seen    = make([]int, readers) // distinct generations each reader saw
		fail    = func(s string) { mu.Lock(); errs = append(errs, s); mu.Unlock() }
		maxErrs = 10
	)
	for id := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			var last uint64
			for bad := 0; bad < maxErrs; {
				done := stop.Load() // read before Load: the last snapshot is seen
				r := p.Load()
				switch {
				case r == nil && last != 0:
					fail(fmt.Sprintf("reader %d: nil after generation %d", id, last))
					bad++
				case r == nil:
				case r.Generation < last:
					fail(fmt.Sprintf("reader %d: generation %d after %d", id, r.Generation, last))
					bad++
				default:
					if msg := check(r); msg != "" {
						fail(fmt.Sprintf("reader %d: %s", id, msg))
						bad++
					}
					if r.Generation != last {
						seen[id]++
					}
					last = r.Generation
				}
				if done {
					if last != snapshots {
						fail(fmt.Sprintf("reader %d: last generation seen %d, want %d", id, last, snapshots))
					}
					return
				}
			}
		}()
	}
	close(start)
	for i := 1; i <= snapshots; i++ {
		r := snapshot(i)
		if g := p.Publish(r); g != uint64(i) {
			t.Fatalf("Publish of snapshot %d returned generation %d", i, g)
		}
	}
	stop.Store(true)
	wg.Wait()
	for _, e := range errs {
		t.Error(e)
	}
	if got := p.Load(); got == nil || got.Generation != snapshots {
		t.Errorf("after the writer: Load = %v, want generation %d", got, snapshots)
	}
	t.Logf("distinct generations seen per reader: %v", seen)
}

// TestPublishStampsGenerations: generations start at 1 and increase by one
// per Publish; a Derived snapshot starts unstamped and gets the next one.
func TestPublishStampsGenerations(t *testing.T) {
	var p ruleset.Publisher
	first := snapshot(1)
	if g := p.Publish(first); g != 1 || first.Generation != 1 || p.Load() != first {
		t.Fatalf("first Publish: generation %d (stamped %d), Load %p, want 1 and %p", g, first.Generation, p.Load(), first)
	}
	d := first.Derive(first.Pods, 0, 7)
	if d.Generation != 0 {
		t.Errorf("Derive kept generation %d, want 0 until published", d.Generation)
	}
	if g := p.Publish(d); g != 2 || p.Load() != d || first.Generation != 1 {
		t.Errorf("second Publish: generation %d, Load %p (want 2 and %p), first now %d", g, p.Load(), d, first.Generation)
	}
}

// ExamplePublisher publishes a snapshot in which pod default/web is
// isolated for ingress and admits TCP port 80 from 10.0.1.0/24, and decides
// two flows against what Load returns. Before the first Publish, Load
// returns nil and a nil snapshot denies everything.
func ExamplePublisher() {
	var p ruleset.Publisher
	web := netip.MustParseAddr("10.0.0.1")
	client := netip.MustParseAddr("10.0.1.7")
	fmt.Println("before publish:", p.Load().Verdict(0, ruleset.Ingress, client, ruleset.TCP, 80).Reason)

	table := ruleset.NewTable(ruleset.Ingress, []int32{0}, []ruleset.ClauseSpec{{
		Clause: ruleset.Clause{Policy: 0, Rule: 0},
		Blocks: []ruleset.Block{{Prefix: netip.MustParsePrefix("10.0.1.0/24")}},
		Ports:  []ruleset.PortRange{{Proto: ruleset.TCP, Lo: 80, Hi: 80}},
	}})
	pods := []ruleset.Pod{{Namespace: "default", Name: "web", IPs: []netip.Addr{web}}}
	pods[0].Tables[ruleset.Ingress] = table
	rs := ruleset.New(pods, []ruleset.Policy{{Namespace: "default", Name: "allow-web"}}, []int32{ruleset.NoIdentity})
	fmt.Println("published generation", p.Publish(rs))

	snap := p.Load() // once per batch of packets
	id, _ := snap.PodByIP(web)
	for _, port := range []uint16{80, 443} {
		v := snap.Verdict(id, ruleset.Ingress, client, ruleset.TCP, port)
		fmt.Printf("10.0.1.7 -> web:%d allowed=%v %s\n", port, v.Allowed, v.Reason)
	}
	// Output:
	// before publish: no-snapshot
	// published generation 1
	// 10.0.1.7 -> web:80 allowed=true rule-matched
	// 10.0.1.7 -> web:443 allowed=false no-rule-matched
}
