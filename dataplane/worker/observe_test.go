package worker

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/xdpolicy/xdpolicy/dataplane/flowtable"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
	"github.com/xdpolicy/xdpolicy/dataplane/trace"
	"github.com/xdpolicy/xdpolicy/xdpprog"
)

var (
	ipA = netip.MustParseAddr("10.0.0.1")
	ipB = netip.MustParseAddr("10.0.0.2")
)

// testRuleset: pod b's ingress admits TCP 80 from a (policy ns/p rule 0).
func testRuleset() *ruleset.Ruleset {
	t := ruleset.NewTable(ruleset.Ingress, []int32{0}, []ruleset.ClauseSpec{{
		Blocks: []ruleset.Block{{Prefix: netip.PrefixFrom(ipA, 32)}},
		Ports:  []ruleset.PortRange{{Proto: ruleset.TCP, Lo: 80, Hi: 80}},
	}})
	pods := []ruleset.Pod{
		{Namespace: "ns", Name: "a", IPs: []netip.Addr{ipA}},
		{Namespace: "ns", Name: "b", IPs: []netip.Addr{ipB}, Tables: [2]*ruleset.Table{ruleset.Ingress: t}},
	}
	none := int32(ruleset.NoIdentity)
	rs := ruleset.New(pods, []ruleset.Policy{{Namespace: "ns", Name: "p"}}, []int32{none, none})
	var pub ruleset.Publisher
	pub.Publish(rs)
	return rs
}

// puntedSYN is a TCP SYN a → b on dport as punted at the entering hook of
// H ifindex 7.
func puntedSYN(dport uint16) []byte {
	f := make([]byte, 14+20+20)
	xdpprog.PutPunt(f, xdpprog.HookIngress, 7)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(ip[2:], 40)
	copy(ip[12:], ipA.AsSlice())
	copy(ip[16:], ipB.AsSlice())
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	tcp[12], tcp[13] = 5<<4, 0x02
	return f
}

// decide is handle's CPU work on one frame without the sockets and the
// kernel map: punt MAC, decode, flow key, Decide, observe.
func (w *Worker) decide(rs *ruleset.Ruleset, frame []byte) bool {
	hook, ifindex, ok := xdpprog.DecodePunt(frame)
	if !ok || !w.parsed.Decode(frame) {
		return false
	}
	p := &w.parsed
	w.key = xdpprog.NewFlowKey(hook, p.Proto, ifindex,
		netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort))
	v := w.c.Classifier.Decide(rs, hook, p.Proto, p.Src, p.Dst, p.DstPort)
	if w.c.Trace != nil || w.c.Counters != nil {
		w.observe(rs, hook, ifindex, &v, v.Allowed, false)
	}
	return v.Allowed
}

func TestObserveRecords(t *testing.T) {
	rs := testRuleset()
	ring := trace.NewRing("node-1", 16)
	w := &Worker{c: Config{Classifier: &flowtable.Classifier{}, Counters: &Counters{}, Trace: ring}}
	if !w.decide(rs, puntedSYN(80)) || w.decide(rs, puntedSYN(81)) {
		t.Fatal("wrong verdicts")
	}
	if ring.Written() != 0 {
		t.Fatalf("recorded %d with nobody listening", ring.Written())
	}
	rd := ring.Follow()
	defer rd.Close()
	w.decide(rs, puntedSYN(80))
	w.decide(rs, puntedSYN(81))
	var h trace.History
	h.Remember(rs)
	buf := make([]trace.Event, 4)
	n, lost := rd.Read(buf)
	if n != 2 || lost != 0 {
		t.Fatalf("read %d lost %d", n, lost)
	}
	allow, deny := trace.Resolve("node-1", &buf[0], &h), trace.Resolve("node-1", &buf[1], &h)
	if allow.Verdict != "allow" || allow.Why != "ns/p ingress[0]" || allow.SrcPod != "ns/a" || allow.DstPod != "ns/b" || allow.Hook != "ingress" {
		t.Errorf("allow: %+v", allow)
	}
	if deny.Verdict != "deny" || deny.Why != "ingress of ns/b selected by ns/p, no rule matched" || deny.Dst != "10.0.0.2:81" {
		t.Errorf("deny: %+v", deny)
	}
	var total uint64
	for i := range w.c.Counters.Latency.Buckets {
		total += w.c.Counters.Latency.Buckets[i].Load()
	}
	if total != 4 {
		t.Errorf("latency histogram has %d observations, want 4", total)
	}
	if n := testing.AllocsPerRun(1000, func() { w.decide(rs, puntedSYN(80)) }); n > 1 { // puntedSYN allocates the frame
		t.Errorf("decide + trace allocates %v per frame", n)
	}
}

// BenchmarkWorkerDecide measures the worker's per-frame CPU work (decode,
// decide, observe) without tracing code at all ("bare"), with the trace
// ring but nobody listening, and with a listener.
func BenchmarkWorkerDecide(b *testing.B) {
	rs := testRuleset()
	frame := puntedSYN(80)
	run := func(b *testing.B, w *Worker) {
		w.t0 = time.Now()
		b.ReportAllocs()
		for b.Loop() {
			if !w.decide(rs, frame) {
				b.Fatal("denied")
			}
		}
	}
	b.Run("bare", func(b *testing.B) {
		run(b, &Worker{c: Config{Classifier: &flowtable.Classifier{}}})
	})
	b.Run("latency-only", func(b *testing.B) {
		run(b, &Worker{c: Config{Classifier: &flowtable.Classifier{}, Counters: &Counters{}}})
	})
	b.Run("no-listener", func(b *testing.B) {
		run(b, &Worker{c: Config{Classifier: &flowtable.Classifier{}, Counters: &Counters{}, Trace: trace.NewRing("n", 4096)}})
	})
	b.Run("listener", func(b *testing.B) {
		ring := trace.NewRing("n", 4096)
		rd := ring.Follow()
		defer rd.Close()
		run(b, &Worker{c: Config{Classifier: &flowtable.Classifier{}, Counters: &Counters{}, Trace: ring}})
		if ring.Written() == 0 {
			b.Fatal("nothing recorded")
		}
	})
}
