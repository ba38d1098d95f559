package harness

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/xdpolicy/xdpolicy/bench/nft"
	"github.com/xdpolicy/xdpolicy/bench/pktgen"
	"github.com/xdpolicy/xdpolicy/control/compile"
	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/control/naive"
	"github.com/xdpolicy/xdpolicy/control/synth"
	"github.com/xdpolicy/xdpolicy/dataplane/ruleset"
)

// Scenarios.
const (
	NewFlows    = "new-flows"    // every packet a new 5-tuple: the Go slow path
	Established = "established"  // a fixed set of warmed flows: the tcx fast path
	FastpathOff = "fastpath-off" // --fastpath=off: every packet through the Go workers
)

// Scenarios lists them in report order.
var Scenarios = []string{NewFlows, Established, FastpathOff}

// Options of one benchmark run.
type Options struct {
	Scenario       string
	Policies, Pods int
	Duration       time.Duration
	Reps           int
	Seed           uint64
	Proto          pktgen.Proto
	Flows          int // established flows (default 256)
	Workers        int // agent --workers (0: its default, one per CPU)
	Binary         string
	ProfileDir     string // if set, a CPU profile of the agent per run
	LatencyProbes  int    // default 2000
	LatencyRate    float64
	Log            io.Writer
}

// Result is one line of `xdpolicy bench -o json`. Rates are medians over
// the repetitions; *_min/*_max give the spread.
type Result struct {
	Scenario  string  `json:"scenario"`
	Proto     string  `json:"proto"`
	Policies  int     `json:"policies"`
	Pods      int     `json:"pods"`
	Reps      int     `json:"reps"`
	DurationS float64 `json:"duration_s"`
	Workers   int     `json:"workers"`
	PPS       float64 `json:"pps"`
	PPSMin    float64 `json:"pps_min"`
	PPSMax    float64 `json:"pps_max"`
	NonePPS   float64 `json:"none_pps"`
	NoneMin   float64 `json:"none_pps_min"`
	NoneMax   float64 `json:"none_pps_max"`
	NftPPS    float64 `json:"nftables_pps"`
	NftMin    float64 `json:"nftables_pps_min"`
	NftMax    float64 `json:"nftables_pps_max"`
	RatioNone float64 `json:"ratio_none"`
	RatioNft  float64 `json:"ratio_nftables"`
	// Per machine core busy: delivered pps / (machine CPU seconds per
	// second), xdpolicy over nftables.
	RatioNftPerCore float64 `json:"ratio_nftables_per_core"`
	OfferedPPS      float64 `json:"offered_pps"`
	// First-packet latency of new flows (probes), in microseconds: the
	// percentiles of the probes received in all repetitions together.
	P50us     float64 `json:"p50_us"`
	P99us     float64 `json:"p99_us"`
	NoneP50us float64 `json:"none_p50_us"`
	NoneP99us float64 `json:"none_p99_us"`
	NftP50us  float64 `json:"nftables_p50_us"`
	NftP99us  float64 `json:"nftables_p99_us"`
	// Probes sent to each dataplane over all repetitions, and those of
	// them never received (they count in no percentile; the CDF plot is
	// over the probes sent, so it ends below 1 by the fraction lost).
	ProbesSent     int `json:"probes_sent"`
	ProbesLost     int `json:"probes_lost"`
	NoneProbesSent int `json:"none_probes_sent"`
	NoneProbesLost int `json:"none_probes_lost"`
	NftProbesSent  int `json:"nftables_probes_sent"`
	NftProbesLost  int `json:"nftables_probes_lost"`
	// CPU seconds per million delivered packets: of the agent process
	// (utime+stime) and of the whole machine (/proc/stat busy time).
	CPUsPerMpkt        float64 `json:"cpu_s_per_mpkt"`
	MachineCPUsPerMpkt float64 `json:"machine_cpu_s_per_mpkt"`
	NoneMachineCPU     float64 `json:"none_machine_cpu_s_per_mpkt"`
	NftMachineCPU      float64 `json:"nftables_machine_cpu_s_per_mpkt"`
	AgentCores         float64 `json:"agent_cores"`
	MppsPerAgentCore   float64 `json:"mpps_per_agent_core"`
	// 2x overload: offered twice the measured peak, open loop.
	OverloadOffered float64 `json:"overload_offered_pps"`
	OverloadPPS     float64 `json:"overload_pps"`
	OverloadRatio   float64 `json:"overload_ratio"`
	// Correctness of each dataplane on the benchmark's flows.
	Checks    string    `json:"checks"`
	NftSets   int       `json:"nftables_sets"`
	NftChains int       `json:"nftables_chains"`
	RepsPPS   []float64 `json:"reps_pps"`
	RepsNone  []float64 `json:"reps_none_pps"`
	RepsNft   []float64 `json:"reps_nftables_pps"`
	Profile   string    `json:"profile,omitempty"`
	// What the policies axis changes: the policies selecting the sink
	// and the clauses of its compiled ingress table.
	SinkPolicies int `json:"sink_policies"`
	SinkClauses  int `json:"sink_clauses"`
	// Latencies (µs) of the probes received in all repetitions, for the
	// plots.
	LatencyUS     []float64 `json:"-"`
	NoneLatencyUS []float64 `json:"-"`
	NftLatencyUS  []float64 `json:"-"`
}

// Scale of the benchmark's model beyond the --policies and --pods axes.
const (
	// CIDRs is the number of ipBlock CIDRs (with an except hole each)
	// spread over the synthetic policies, whatever their number.
	CIDRs = 10000
	// HotShare: one policy in HotShare selects the sink (with at least
	// one); the others are spread over the cluster.
	HotShare = 2
)

// HotPolicies is the number of policies selecting the sink at a given
// policy count.
func HotPolicies(policies int) int { return max(1, policies/HotShare) }

// Cluster is the benchmark's model: the synthetic cluster (control/synth,
// CIDRs ipBlocks) and the generator and sink pods on the bench node. The
// sink is in ns-0 with the labels of app-0, and HotPolicies(policies) of
// the synthetic policies select app-0 in ns-0, so the policies axis sets
// how many policies, and how many clauses, the sink's ingress is decided
// by. Each of those policies has three ingress rules: synth's (pods of an
// app, pods of a team's namespaces, ipBlocks with holes, numeric, ranged
// and named ports), its share of the generator's addresses (genRule) and
// the denied port for others (deniedRule). So every generator flow, the
// allowed and the denied ones, is decided by those rules: no single policy
// admits the generator.
func Cluster(policies, pods int, seed uint64) *model.Cluster {
	hot := HotPolicies(policies)
	c := synth.Cluster(synth.Params{Pods: pods, Policies: policies, CIDRs: CIDRs, Seed: seed, Hot: hot,
		HotRules: func(i int) []networkingv1.NetworkPolicyIngressRule {
			return []networkingv1.NetworkPolicyIngressRule{genRule(i, hot), deniedRule(i)}
		}})
	ns := &corev1.Namespace{}
	ns.Name = "bench-gen"
	c.Add(ns)
	mk := func(ns, name string, ip string, lbl map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
		p := &corev1.Pod{}
		p.Namespace, p.Name, p.Labels = ns, name, lbl
		p.Spec.NodeName = NodeName
		p.Spec.Containers = []corev1.Container{{Name: "c", Ports: ports}}
		p.Status.Phase = corev1.PodRunning
		p.Status.PodIP = ip
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
		return p
	}
	udp, tcp := corev1.ProtocolUDP, corev1.ProtocolTCP
	c.Add(mk("bench-gen", "gen", GenIP.String(), map[string]string{"app": "generator"},
		corev1.ContainerPort{Name: "load", ContainerPort: LoadPort, Protocol: udp}))
	c.Add(mk("ns-0", "sink", SinkIP.String(), map[string]string{"app": "app-0", "tier": "web", "bench": "sink"},
		corev1.ContainerPort{Name: "load", ContainerPort: LoadPort, Protocol: udp},
		corev1.ContainerPort{Name: "load-tcp", ContainerPort: LoadPort, Protocol: tcp},
		corev1.ContainerPort{Name: "probe", ContainerPort: ProbePort, Protocol: udp}))
	c.Complete()
	return c
}

// genRule is hot policy i's (of n) share of the generator's addresses:
// GenPrefix is cut into a power of two ≥ n pieces (at most 2^14, /30s),
// policy i owns pieces i, i+n, …, each with its first quarter as an except
// hole, and admits the holes of policy i-1's pieces; so every generator
// address is admitted by exactly one policy (two when n is 1), spread over
// the whole clause list. Ports: the sink's named ports "load" (UDP),
// "load-tcp" and "probe"; peers also include pods of two apps in a team's
// namespaces.
func genRule(i, n int) networkingv1.NetworkPolicyIngressRule {
	bits := GenPrefix.Bits()
	for bits < 30 && 1<<(bits-GenPrefix.Bits()) < n {
		bits++
	}
	pieces := 1 << (bits - GenPrefix.Bits())
	base := GenPrefix.Addr().As4()
	piece := func(j int) netip.Prefix {
		a := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(j)<<(32-bits)
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), bits)
	}
	hole := func(j int) netip.Prefix { return netip.PrefixFrom(piece(j).Addr(), bits+2) }
	r := networkingv1.NetworkPolicyIngressRule{
		From: []networkingv1.NetworkPolicyPeer{{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("team-%d", i%10)}},
			PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
				{Key: "app", Operator: metav1.LabelSelectorOpIn, Values: []string{fmt.Sprintf("app-%d", i%synth.Apps), fmt.Sprintf("app-%d", (i+7)%synth.Apps)}},
			}},
		}},
		Ports: []networkingv1.NetworkPolicyPort{namedPort(corev1.ProtocolUDP, "load"), namedPort(corev1.ProtocolTCP, "load-tcp"), namedPort(corev1.ProtocolUDP, "probe")},
	}
	prev := (i + n - 1) % n
	for j := range pieces {
		if j%n == i {
			r.From = append(r.From, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: piece(j).String(), Except: []string{hole(j).String()}}})
		}
		if j%n == prev {
			r.From = append(r.From, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: hole(j).String()}})
		}
	}
	return r
}

// deniedRule admits DeniedPort (in a UDP range around it) from the prod
// namespaces and from 10.0.0.0/8 except the generator's and the sink's
// /16s: the denied probes find clauses for their port and clauses for
// their address, never one clause with both.
func deniedRule(i int) networkingv1.NetworkPolicyIngressRule {
	udp := corev1.ProtocolUDP
	lo, hi := intstr.FromInt32(DeniedPort-500+int32(i%100)), int32(DeniedPort+500)
	return networkingv1.NetworkPolicyIngressRule{
		From: []networkingv1.NetworkPolicyPeer{
			{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}},
			{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{GenPrefix.String(), netip.PrefixFrom(SinkIP, 16).Masked().String()}}},
		},
		Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &lo, EndPort: &hi}},
	}
}

func namedPort(proto corev1.Protocol, name string) networkingv1.NetworkPolicyPort {
	p := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &p}
}

// modelProbes are the generator's flows the model is checked on: sources
// spread over GenPrefix (the generator pod, holes, piece edges).
func modelProbes() []netip.Addr {
	return []netip.Addr{GenIP, netip4(10, 250, 0, 0), netip4(10, 250, 7, 7), netip4(10, 250, 64, 1), netip4(10, 250, 128, 200),
		netip4(10, 250, 191, 255), netip4(10, 250, 200, 3), netip4(10, 250, 255, 255)}
}

// checkModel asserts that the model itself (the reference interpreter,
// control/naive) allows the generator's flows and denies the denied port,
// for sources over the whole generator prefix: the dataplanes are then
// checked against it.
//
// The interpreter walks every pod for every selector peer, too slow for
// 10k pods and 1000 policies; an ingress verdict depends only on the sink,
// the owner of the source address, the namespaces and the sink's
// namespace's policies, so it runs on that sub-cluster once no other pod
// is found to own a generator address.
func checkModel(c *model.Cluster) error {
	sink := naive.Owner(c, SinkIP)
	if sink == nil {
		return fmt.Errorf("model: no pod owns the sink's address %s", SinkIP)
	}
	sub := &model.Cluster{Namespaces: c.Namespaces}
	for _, p := range c.Pods {
		ips, _ := model.PodIPs(p)
		if p == sink || slices.ContainsFunc(ips, GenPrefix.Contains) {
			if p != sink && p.Status.PodIP != GenIP.String() {
				return fmt.Errorf("model: pod %s/%s has a generator address", p.Namespace, p.Name)
			}
			sub.Pods = append(sub.Pods, p)
		}
	}
	for _, p := range c.Policies {
		if p.Namespace == sink.Namespace {
			sub.Policies = append(sub.Policies, p)
		}
	}
	for _, src := range modelProbes() {
		for _, tc := range []struct {
			port  uint16
			proto ruleset.Proto
			want  bool
		}{{LoadPort, ruleset.UDP, true}, {LoadPort, ruleset.TCP, true}, {ProbePort, ruleset.UDP, true}, {DeniedPort, ruleset.UDP, false}} {
			if got := naive.Decide(sub, sink, ruleset.Ingress, src, tc.proto, tc.port); got != tc.want {
				return fmt.Errorf("model: %s → sink %d/%s allowed=%v, want %v", src, tc.port, tc.proto, got, tc.want)
			}
		}
	}
	return nil
}

// sinkTable compiles the model as the agent will and returns the size of
// the sink's ingress table: the policies selecting the sink and their
// clauses.
func sinkTable(c *model.Cluster) (policies, clauses int, err error) {
	rs, problems := compile.Compile(c)
	if len(problems) > 0 {
		return 0, 0, fmt.Errorf("model: %v", problems[0])
	}
	id, ok := rs.PodByIP(SinkIP)
	if !ok || rs.Pods[id].Tables[ruleset.Ingress] == nil {
		return 0, 0, fmt.Errorf("model: the sink is not isolated")
	}
	t := rs.Pods[id].Tables[ruleset.Ingress]
	return len(t.Policies), len(t.Clauses), nil
}

// writeCluster writes the agent's YAML: namespaces and pods, policies.
func writeCluster(dir string, c *model.Cluster) error {
	var objs, pols bytes.Buffer
	add := func(buf *bytes.Buffer, o any) error {
		b, err := yaml.Marshal(o)
		if err != nil {
			return err
		}
		buf.WriteString("---\n")
		buf.Write(b)
		return nil
	}
	for _, ns := range c.Namespaces {
		ns.APIVersion, ns.Kind = "v1", "Namespace"
		if err := add(&objs, ns); err != nil {
			return err
		}
	}
	for _, p := range c.Pods {
		p.APIVersion, p.Kind = "v1", "Pod"
		if err := add(&objs, p); err != nil {
			return err
		}
	}
	for _, p := range c.Policies {
		p.APIVersion, p.Kind = "networking.k8s.io/v1", "NetworkPolicy"
		if err := add(&pols, p); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "cluster", "cluster.yaml"), objs.Bytes(), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "policies", "policies.yaml"), pols.Bytes(), 0o644)
}

// phase is one dataplane's measurement in one repetition.
type phase struct {
	pps, offered         float64
	machineCPU, agentCPU float64 // seconds
	delivered            uint64
	elapsed              time.Duration
	lat                  []time.Duration // of the probes received
	sent, lost           int             // probes sent, and never received
	overOffered, overPPS float64
}

// Run runs one scenario at one scale: Reps repetitions of none, nftables
// and the agent, interleaved.
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Reps <= 0 {
		o.Reps = 1
	}
	if o.Flows <= 0 {
		o.Flows = 256
	}
	if o.LatencyProbes <= 0 {
		o.LatencyProbes = 2000
	}
	if o.LatencyRate <= 0 {
		o.LatencyRate = 5000
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if !slices.Contains(Scenarios, o.Scenario) {
		return nil, fmt.Errorf("scenario %q: want one of %s", o.Scenario, strings.Join(Scenarios, ", "))
	}
	c := Cluster(o.Policies, o.Pods, o.Seed)
	if err := checkModel(c); err != nil {
		return nil, err
	}
	sinkPolicies, sinkClauses, err := sinkTable(c)
	if err != nil {
		return nil, err
	}
	script, nst, err := nft.Render(c)
	if err != nil {
		return nil, err
	}
	t, err := NewTopo()
	if err != nil {
		return nil, err
	}
	defer t.Close()
	if err := writeCluster(t.Dir, c); err != nil {
		return nil, err
	}
	gen, err := pktgen.New(pktgen.Config{Netns: t.genH, Iface: "eth0", DstMAC: hostMACg, Src: GenPrefix, Dst: SinkIP, Proto: o.Proto, Seed: o.Seed})
	if err != nil {
		return nil, err
	}
	defer gen.Close()
	// Probes and checks are UDP whatever the load protocol.
	probe := gen
	if o.Proto != pktgen.UDP {
		if probe, err = pktgen.New(pktgen.Config{Netns: t.genH, Iface: "eth0", DstMAC: hostMACg, Src: GenPrefix, Dst: SinkIP, Proto: pktgen.UDP, Seed: o.Seed + 1, Frames: 512, TxRing: 256}); err != nil {
			return nil, err
		}
		defer probe.Close()
	}
	sinkOK, err := t.Listen(ProbePort)
	if err != nil {
		return nil, err
	}
	defer sinkOK.Close()
	sinkDeny, err := t.Listen(DeniedPort)
	if err != nil {
		return nil, err
	}
	defer sinkDeny.Close()

	b := &bencher{o: o, t: t, gen: gen, probe: probe, ok: sinkOK, deny: sinkDeny}
	res := &Result{Scenario: o.Scenario, Proto: o.Proto.String(), Policies: o.Policies, Pods: o.Pods, Reps: o.Reps,
		DurationS: o.Duration.Seconds(), Workers: o.Workers, NftSets: nst.Sets, NftChains: nst.Chains,
		SinkPolicies: sinkPolicies, SinkClauses: sinkClauses}
	var none, nf, ag []phase
	var checks []string
	for rep := range o.Reps {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		fmt.Fprintf(o.Log, "%s policies=%d pods=%d rep %d/%d: none\n", o.Scenario, o.Policies, o.Pods, rep+1, o.Reps)
		p, err := b.measure(ctx, "none", nil, false)
		if err != nil {
			return nil, err
		}
		none = append(none, p)

		fmt.Fprintf(o.Log, "  nftables (%d sets, %d chains)\n", nst.Sets, nst.Chains)
		if err := loadNft(t.Node, script); err != nil {
			return nil, err
		}
		p, err = b.measure(ctx, "nftables", nil, false)
		_ = loadNft(t.Node, fmt.Sprintf("delete table inet %s\n", nft.Table))
		if err != nil {
			return nil, err
		}
		nf = append(nf, p)

		fmt.Fprintf(o.Log, "  xdpolicy agent\n")
		a, err := t.StartAgent(o.Binary, o.Scenario != FastpathOff, o.Workers)
		if err != nil {
			return nil, err
		}
		prof := ""
		if o.ProfileDir != "" && rep == o.Reps-1 {
			prof = filepath.Join(o.ProfileDir, fmt.Sprintf("agent-%s-%dpol-%dpods.pprof", o.Scenario, o.Policies, o.Pods))
		}
		b.profile = prof
		p, err = b.measure(ctx, "agent", a, true)
		a.Stop()
		if err != nil {
			return nil, fmt.Errorf("%w (agent log %s: %s)", err, a.Log, tail(a.Log))
		}
		ag = append(ag, p)
		if prof != "" {
			res.Profile = prof
		}
	}
	checks = append(checks, "none: allowed flow delivered", "nftables: allowed delivered, denied dropped", "agent: allowed delivered, denied dropped")
	res.Checks = strings.Join(checks, "; ")
	get := func(ps []phase, f func(phase) float64) []float64 {
		var out []float64
		for _, p := range ps {
			out = append(out, f(p))
		}
		return out
	}
	pps := func(p phase) float64 { return p.pps }
	res.RepsPPS, res.RepsNone, res.RepsNft = get(ag, pps), get(none, pps), get(nf, pps)
	res.PPS, res.PPSMin, res.PPSMax = stats(res.RepsPPS)
	res.NonePPS, res.NoneMin, res.NoneMax = stats(res.RepsNone)
	res.NftPPS, res.NftMin, res.NftMax = stats(res.RepsNft)
	res.OfferedPPS = median(get(ag, func(p phase) float64 { return p.offered }))
	res.RatioNone = ratio(res.PPS, res.NonePPS)
	res.RatioNft = ratio(res.PPS, res.NftPPS)
	perCore := func(p phase) float64 { return ratio(p.pps, p.machineCPU/p.elapsed.Seconds()) }
	res.RatioNftPerCore = ratio(median(get(ag, perCore)), median(get(nf, perCore)))
	perM := func(cpu func(phase) float64) func(phase) float64 {
		return func(p phase) float64 { return ratio(cpu(p), float64(p.delivered)/1e6) }
	}
	res.CPUsPerMpkt = median(get(ag, perM(func(p phase) float64 { return p.agentCPU })))
	res.MachineCPUsPerMpkt = median(get(ag, perM(func(p phase) float64 { return p.machineCPU })))
	res.NoneMachineCPU = median(get(none, perM(func(p phase) float64 { return p.machineCPU })))
	res.NftMachineCPU = median(get(nf, perM(func(p phase) float64 { return p.machineCPU })))
	res.AgentCores = median(get(ag, func(p phase) float64 { return p.agentCPU / p.elapsed.Seconds() }))
	res.MppsPerAgentCore = ratio(res.PPS/1e6, res.AgentCores)
	res.OverloadOffered = median(get(ag, func(p phase) float64 { return p.overOffered }))
	res.OverloadPPS = median(get(ag, func(p phase) float64 { return p.overPPS }))
	res.OverloadRatio = ratio(res.OverloadPPS, res.PPS)
	// Latency over every repetition's probes, and every lost probe.
	probes := func(ps []phase) (lat []time.Duration, sent, lost int) {
		for _, p := range ps {
			lat = append(lat, p.lat...)
			sent += p.sent
			lost += p.lost
		}
		return lat, sent, lost
	}
	lat, sent, lost := probes(ag)
	res.P50us, res.P99us, res.ProbesSent, res.ProbesLost, res.LatencyUS = pct(lat, 50), pct(lat, 99), sent, lost, us(lat)
	lat, sent, lost = probes(none)
	res.NoneP50us, res.NoneP99us, res.NoneProbesSent, res.NoneProbesLost, res.NoneLatencyUS = pct(lat, 50), pct(lat, 99), sent, lost, us(lat)
	lat, sent, lost = probes(nf)
	res.NftP50us, res.NftP99us, res.NftProbesSent, res.NftProbesLost, res.NftLatencyUS = pct(lat, 50), pct(lat, 99), sent, lost, us(lat)
	return res, nil
}

type bencher struct {
	o        Options
	t        *Topo
	gen      *pktgen.Gen
	probe    *pktgen.Gen
	ok, deny *Sink
	profile  string
}

// check sends a few allowed and (unless none) denied probes; the allowed
// ones must reach the sink's socket, the denied ones must not.
func (b *bencher) check(ctx context.Context, name string, enforcing bool) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		b.ok.Reset()
		b.probe.Run(ctx, pktgen.Spec{Mode: pktgen.NewFlows, DstPort: ProbePort, Count: 20, Rate: 2000})
		time.Sleep(100 * time.Millisecond)
		if n, _ := b.ok.Got(); n >= 18 {
			break
		}
		if time.Now().After(deadline) {
			n, _ := b.ok.Got()
			return fmt.Errorf("%s: only %d of 20 allowed probes reached the sink", name, n)
		}
		time.Sleep(200 * time.Millisecond) // the agent may still be wiring the pods
	}
	if !enforcing {
		return nil
	}
	b.deny.Reset()
	b.probe.Run(ctx, pktgen.Spec{Mode: pktgen.NewFlows, DstPort: DeniedPort, Count: 20, Rate: 2000})
	time.Sleep(200 * time.Millisecond)
	if n, _ := b.deny.Got(); n > 0 {
		return fmt.Errorf("%s: %d of 20 denied probes reached the sink", name, n)
	}
	return nil
}

func (b *bencher) spec(rate float64, d time.Duration) pktgen.Spec {
	sp := pktgen.Spec{Mode: pktgen.NewFlows, DstPort: LoadPort, Rate: rate, Duration: d}
	if b.o.Scenario != NewFlows {
		sp.Mode, sp.Flows, sp.FlowBase = pktgen.Established, b.o.Flows, 1<<40
	}
	return sp
}

// load runs the generator and counts what the sink received.
func (b *bencher) load(ctx context.Context, rate float64, d time.Duration, pid int) (phase, error) {
	var p phase
	rx0, err := b.t.SinkRx()
	if err != nil {
		return p, err
	}
	m0, a0 := machineCPU(), procCPU(pid)
	st := b.gen.Run(ctx, b.spec(rate, d))
	time.Sleep(20 * time.Millisecond) // frames still in rings
	m1, a1 := machineCPU(), procCPU(pid)
	rx1, err := b.t.SinkRx()
	if err != nil {
		return p, err
	}
	p.delivered = rx1 - rx0
	p.elapsed = st.Elapsed
	p.pps = float64(p.delivered) / st.Elapsed.Seconds()
	p.offered = st.PPS()
	p.machineCPU, p.agentCPU = m1-m0, a1-a0
	return p, nil
}

func (b *bencher) measure(ctx context.Context, name string, a *Agent, enforcing bool) (phase, error) {
	if err := b.check(ctx, name, name != "none"); err != nil {
		return phase{}, err
	}
	pid := 0
	if a != nil {
		pid = a.PID()
	}
	if b.o.Scenario != NewFlows {
		// Warm the fixed flows up: each is decided once, then cached.
		b.gen.Run(ctx, pktgen.Spec{Mode: pktgen.Established, Flows: b.o.Flows, FlowBase: 1 << 40, DstPort: LoadPort, Rate: 20000, Count: uint64(4 * b.o.Flows)})
		time.Sleep(100 * time.Millisecond)
	}
	profDone := make(chan error, 1)
	if a != nil && b.profile != "" {
		go func() { profDone <- a.Profile(b.o.Duration, b.profile) }()
	} else {
		profDone <- nil
	}
	p, err := b.load(ctx, 0, b.o.Duration, pid)
	if err != nil {
		return p, err
	}
	if perr := <-profDone; perr != nil {
		fmt.Fprintf(b.o.Log, "  profile: %v\n", perr)
	}
	fmt.Fprintf(b.o.Log, "    %s: %.0f pps delivered of %.0f offered\n", name, p.pps, p.offered)
	if a != nil {
		// 2x overload, open loop; the generator may not reach it, so the
		// offered rate is reported too.
		ov, err := b.load(ctx, 2*p.pps, b.o.Duration, pid)
		if err != nil {
			return p, err
		}
		p.overOffered, p.overPPS = ov.offered, ov.pps
		fmt.Fprintf(b.o.Log, "    overload: %.0f pps delivered of %.0f offered\n", ov.pps, ov.offered)
	}
	// First-packet latency: every probe a new flow, paced.
	time.Sleep(50 * time.Millisecond)
	b.ok.Reset()
	st := b.probe.Run(ctx, pktgen.Spec{Mode: pktgen.NewFlows, DstPort: ProbePort, Count: uint64(b.o.LatencyProbes), Rate: b.o.LatencyRate})
	time.Sleep(100 * time.Millisecond)
	n, lat := b.ok.Got()
	p.lat, p.sent = lat, int(st.Sent)
	p.lost = max(0, p.sent-n)
	return p, nil
}

// machineCPU returns the machine's busy CPU seconds (/proc/stat: all but
// idle and iowait).
func machineCPU() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var busy float64
	for i, s := range f[1:] {
		v, _ := strconv.ParseFloat(s, 64)
		if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest time is already in user
			continue
		}
		busy += v
	}
	return busy / clkTck
}

// procCPU returns utime+stime of pid in seconds (0 for pid 0).
func procCPU(pid int) float64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return (u + s) / clkTck
}

const clkTck = 100 // USER_HZ on Linux

func stats(v []float64) (med, lo, hi float64) {
	if len(v) == 0 {
		return 0, 0, 0
	}
	return median(v), slices.Min(v), slices.Max(v)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ratio(a, b float64) float64 {
	if b == 0 || math.IsNaN(a/b) || math.IsInf(a/b, 0) {
		return 0
	}
	return math.Round(a/b*1000) / 1000
}

func pct(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	i = max(0, min(i, len(s)-1))
	return math.Round(float64(s[i].Nanoseconds())/10) / 100
}

func us(d []time.Duration) []float64 {
	out := make([]float64, len(d))
	for i, x := range d {
		out[i] = float64(x.Nanoseconds()) / 1e3
	}
	return out
}

func netip4(a, b, c, d byte) netip.Addr { return netip.AddrFrom4([4]byte{a, b, c, d}) }
