package oracle

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	goruntime "runtime"
	"sort"
	"strings"
	"time"
	_ "unsafe" // go:linkname

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	networkinglisters "k8s.io/client-go/listers/networking/v1"
	"sigs.k8s.io/kube-network-policies/pkg/networkpolicy"
)

// knpModule and knpVersion are the only kube-network-policies the linkname
// below was checked against.
const (
	knpModule  = "sigs.k8s.io/kube-network-policies"
	knpVersion = "v0.8.0"
)

// packet has the layout of kube-network-policies v0.8.0's unexported
// networkpolicy.packet (pkg/networkpolicy/packet.go), the argument of
// evaluatePacket.
type packet struct {
	id      uint32
	family  corev1.IPFamily
	srcIP   net.IP
	dstIP   net.IP
	proto   corev1.Protocol
	srcPort int
	dstPort int
	payload []byte
}

// evaluatePacket is kube-network-policies v0.8.0's
// (*networkpolicy.Controller).evaluatePacket (pkg/networkpolicy/controller.go):
// the verdict its nfqueue handler gives the first packet of a connection.
//
//go:linkname evaluatePacket sigs.k8s.io/kube-network-policies/pkg/networkpolicy.(*Controller).evaluatePacket
func evaluatePacket(c *networkpolicy.Controller, ctx context.Context, p packet) bool

// checkVersion refuses any kube-network-policies but the one whose layout
// packet copies. Test binaries carry no module versions in their build
// information, so the version is read from the path of the module's source
// files (…/sigs.k8s.io/kube-network-policies@v0.8.0/…, also with -trimpath).
func checkVersion() error {
	fn := goruntime.FuncForPC(reflect.ValueOf(networkpolicy.NewController).Pointer())
	if fn == nil {
		return errors.New("oracle: no symbol information to check the kube-network-policies version")
	}
	file, _ := fn.FileLine(fn.Entry())
	if !strings.Contains(file, knpModule+"@"+knpVersion+"/") {
		return fmt.Errorf("oracle: %s is built from %s; the evaluatePacket linkname was checked against %s only", knpModule, file, knpVersion)
	}
	return nil
}

// Oracle decides flows with kube-network-policies' evaluator over the
// informer caches of one API server (or of a fake clientset).
type Oracle struct {
	ctl        *networkpolicy.Controller
	pods       corelisters.PodLister
	namespaces corelisters.NamespaceLister
	policies   networkinglisters.NetworkPolicyLister
	stop       context.CancelFunc
}

// New starts informers on Pods, Namespaces and NetworkPolicies of cs and a
// kube-network-policies controller over them (never its nfqueue or nftables
// side: only its listers and its evaluator are used), and waits for the
// caches to sync. Close stops the informers.
func New(cs kubernetes.Interface) (*Oracle, error) {
	if err := checkVersion(); err != nil {
		return nil, err
	}
	f := informers.NewSharedInformerFactory(cs, 0)
	pods, nss, pols := f.Core().V1().Pods(), f.Core().V1().Namespaces(), f.Networking().V1().NetworkPolicies()
	// No admin policies (nil informers). NRI stays enabled: the plugin is
	// only created, never run, so its pod map stays empty; the evaluator
	// asks it about every address no cached pod has, and with NRIdisabled
	// it would dereference a nil plugin.
	ctl, err := networkpolicy.NewController(cs, pols, nss, pods, nil, nil, nil, nil, networkpolicy.Config{NodeName: "oracle"})
	if err != nil {
		return nil, fmt.Errorf("oracle: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	o := &Oracle{ctl: ctl, pods: pods.Lister(), namespaces: nss.Lister(), policies: pols.Lister(), stop: cancel}
	f.Start(ctx.Done())
	sctx, scancel := context.WithTimeout(ctx, time.Minute)
	defer scancel()
	for typ, ok := range f.WaitForCacheSync(sctx.Done()) {
		if !ok {
			o.Close()
			return nil, fmt.Errorf("oracle: cache of %v did not sync", typ)
		}
	}
	if err := o.selfCheck(); err != nil {
		o.Close()
		return nil, err
	}
	return o, nil
}

// selfCheck decides a flow between two addresses no pod has (TEST-NET-1),
// which reaches the NRI plugin's lookup: it fails rather than every later
// verdict panicking.
func (o *Oracle) selfCheck() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("oracle: kube-network-policies' evaluator panics on addresses no pod has (was its NRI plugin not created?): %v", r)
		}
	}()
	o.Allowed(netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), corev1.ProtocolTCP, 80)
	return nil
}

// NewFromObjects is New over a fake clientset holding objs (objects read
// back from an API server): what minimizing a disagreement needs, where
// objects are left out one at a time.
func NewFromObjects(objs []runtime.Object) (*Oracle, error) {
	return New(fake.NewClientset(objs...))
}

// Close stops the informers.
func (o *Oracle) Close() { o.stop() }

// Allowed decides a connection from src to dst on proto/port as
// kube-network-policies does: the source pod's egress, then the
// destination pod's ingress, each pod found by address (hostNetwork pods
// and addresses no pod has are not enforced and match only ipBlocks). A
// pod's traffic to its own address never leaves it (and never reaches
// kube-network-policies' queue): always allowed.
func (o *Oracle) Allowed(src, dst netip.Addr, proto corev1.Protocol, port uint16) bool {
	if src == dst {
		return true
	}
	fam := corev1.IPv4Protocol
	if dst.Is6() {
		fam = corev1.IPv6Protocol
	}
	p := packet{family: fam, srcIP: net.IP(src.AsSlice()), dstIP: net.IP(dst.AsSlice()), proto: proto, srcPort: 40000, dstPort: int(port)}
	return evaluatePacket(o.ctl, context.Background(), p)
}

// Versions lists the Namespaces, Pods and NetworkPolicies in the caches:
// "Kind namespace/name" → resourceVersion.
func (o *Oracle) Versions() (map[string]string, error) {
	out := map[string]string{}
	nss, err := o.namespaces.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	for _, ns := range nss {
		out[Key("Namespace", "", ns.Name)] = ns.ResourceVersion
	}
	pods, err := o.pods.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	for _, p := range pods {
		out[Key("Pod", p.Namespace, p.Name)] = p.ResourceVersion
	}
	pols, err := o.policies.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	for _, p := range pols {
		out[Key("NetworkPolicy", p.Namespace, p.Name)] = p.ResourceVersion
	}
	return out, nil
}

// Key names an object in Versions.
func Key(kind, namespace, name string) string {
	if namespace == "" {
		return kind + " " + name
	}
	return kind + " " + namespace + "/" + name
}

// Stored is what the API server holds: every Namespace, Pod and
// NetworkPolicy, as it serves them.
type Stored struct {
	Namespaces []corev1.Namespace
	Pods       []corev1.Pod
	Policies   []networkingv1.NetworkPolicy
}

// List reads every Namespace, Pod and NetworkPolicy from the server.
func List(ctx context.Context, cs kubernetes.Interface) (*Stored, error) {
	nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	pols, err := cs.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	return &Stored{Namespaces: nss.Items, Pods: pods.Items, Policies: pols.Items}, nil
}

// Versions is Oracle.Versions of what the server holds.
func (s *Stored) Versions() map[string]string {
	out := map[string]string{}
	for _, ns := range s.Namespaces {
		out[Key("Namespace", "", ns.Name)] = ns.ResourceVersion
	}
	for _, p := range s.Pods {
		out[Key("Pod", p.Namespace, p.Name)] = p.ResourceVersion
	}
	for _, p := range s.Policies {
		out[Key("NetworkPolicy", p.Namespace, p.Name)] = p.ResourceVersion
	}
	return out
}

// Objects returns copies of the stored objects, for NewFromObjects; keep
// reports whether to include a policy.
func (s *Stored) Objects(keep func(*networkingv1.NetworkPolicy) bool) []runtime.Object {
	var out []runtime.Object
	for i := range s.Namespaces {
		out = append(out, s.Namespaces[i].DeepCopy())
	}
	for i := range s.Pods {
		out = append(out, s.Pods[i].DeepCopy())
	}
	for i := range s.Policies {
		if keep == nil || keep(&s.Policies[i]) {
			out = append(out, s.Policies[i].DeepCopy())
		}
	}
	return out
}

// WaitSynced waits until the caches hold exactly want (Stored.Versions).
func (o *Oracle) WaitSynced(ctx context.Context, want map[string]string) error {
	return Poll(ctx, 30*time.Second, func() (string, bool) {
		got, err := o.Versions()
		if err != nil {
			return err.Error(), false
		}
		d := Diff(want, got)
		return d, d == ""
	})
}

// Poll calls done every 10ms until it reports true; after timeout it
// returns an error with done's last message.
func Poll(ctx context.Context, timeout time.Duration, done func() (string, bool)) error {
	deadline := time.Now().Add(timeout)
	for {
		msg, ok := done()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not synced after %v: %s", timeout, msg)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Diff describes how two Versions maps differ ("" when equal).
func Diff(want, got map[string]string) string {
	var out []string
	for k, v := range want {
		if g, ok := got[k]; !ok {
			out = append(out, "missing "+k)
		} else if g != v {
			out = append(out, fmt.Sprintf("%s at version %s, want %s", k, g, v))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			out = append(out, "extra "+k)
		}
	}
	sort.Strings(out)
	if len(out) > 5 {
		out = append(out[:5], fmt.Sprintf("… %d more", len(out)-5))
	}
	return strings.Join(out, "; ")
}
