package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Root is where labs keep their state, one directory per lab name.
const Root = "/run/xdpolicy/labs"

// BPFFSRoot is the bpffs directory of a lab's agents: BPFFSRoot(name)/node-K.
func BPFFSRoot(name string) string { return "/sys/fs/bpf/xdpolicy-" + name }

// DefaultName is the lab name when --name is not given.
const DefaultName = "xdpolicy"

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,22}[a-z0-9])?$`)

// CheckName rejects lab names that would not make unique, valid namespace
// and directory names. Lab names never contain '_', which separates the lab
// name from the rest in every namespace name the lab makes.
func CheckName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("lab name %q: want 1-24 lowercase letters, digits or '-', starting and ending with a letter or digit", name)
	}
	return nil
}

// Dir is the lab's directory.
func Dir(name string) string { return filepath.Join(Root, name) }

// Namespace names. Every named network namespace of lab L starts with "L_";
// pods are "L_<namespace>_<pod>" (Kubernetes names never contain '_').
func NodeNetns(lab string, k int) string         { return fmt.Sprintf("%s_node-%d", lab, k) }
func UnderlayNetns(lab string) string            { return lab + "_underlay" }
func ExternalNetns(lab string) string            { return lab + "_external" }
func PodNetns(lab, namespace, pod string) string { return lab + "_" + namespace + "_" + pod }

// NodeName is the Kubernetes node name of the lab's k-th node (1-based).
func NodeName(k int) string { return fmt.Sprintf("node-%d", k) }

// Annotations the lab writes on every pod of its cluster YAML, so that an
// agent (or a person) can find the pod's namespace and host-side veth.
const (
	AnnotationNetns     = "lab.xdpolicy.io/netns"          // named netns (under /var/run/netns)
	AnnotationHostIface = "lab.xdpolicy.io/host-interface" // host-side veth in the node netns
)

// Address plan of a lab with index i (1-254, unique among the labs present):
// the underlay is 100.64.i.0/24 and fd78:6470:i::/64 (hex i); node-k is .k,
// external is .250 (::fa). Pods keep the addresses of status.podIP(s);
// pods without one get 10.244.k.100+ (and fd00:10:244:k::100+ when the
// cluster has IPv6 pods) on their node k.
func underlay4(idx int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(idx), 0}), 24)
}

func underlay6(idx int) netip.Prefix {
	var b [16]byte
	b[0], b[1], b[2], b[3], b[4], b[5] = 0xfd, 0x78, 0x64, 0x70, 0, byte(idx)
	return netip.PrefixFrom(netip.AddrFrom16(b), 64)
}

func hostAddr(p netip.Prefix, host int) netip.Addr {
	b := p.Addr().AsSlice()
	b[len(b)-1] = byte(host)
	a, _ := netip.AddrFromSlice(b)
	return a
}

const externalHost = 250

// Gateway addresses the pods route through; the host-side veth answers
// for them (proxy ARP, proxy NDP), as with Calico.
var (
	gateway4 = netip.MustParseAddr("169.254.1.1")
	gateway6 = netip.MustParseAddr("fe80::1")
)

// State is what a lab is made of: written to <dir>/state.json before each
// thing is created, so that Down can remove everything even after a
// half-finished Up.
type State struct {
	Name  string `json:"name"`
	Index int    `json:"index"`
	Dir   string `json:"dir"`
	// Binary is the xdpolicy executable the servers and agents run.
	Binary string `json:"binary"`
	// Netns lists every named network namespace the lab created (or was
	// about to create), in creation order.
	Netns    []string  `json:"netns"`
	Underlay string    `json:"underlay"`
	Nodes    []Node    `json:"nodes"`
	External Endpoint  `json:"external"`
	Pods     []Pod     `json:"pods"`
	Procs    []Process `json:"processes"`
	BPFFS    string    `json:"bpffs"`
	// SCTP reports whether the kernel had SCTP when the lab came up.
	SCTP bool `json:"sctp"`
	// RawSCTP reports that it had not: every pod runs a server that
	// answers SCTP over raw sockets (see rawsctp.go).
	RawSCTP bool `json:"rawSCTP,omitempty"`
	// Kubeconfig of the API server the lab's objects live on, when the
	// lab runs on one; APIServer is the directory of the one it started.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	APIServer  string `json:"apiServer,omitempty"`
}

// Node is one node namespace.
type Node struct {
	Name  string       `json:"name"` // node-K
	Netns string       `json:"netns"`
	IPs   []netip.Addr `json:"ips"` // underlay addresses
	// API is the unix socket of the node's agent (its /trace, /explain,
	// /metrics), when the lab runs agents.
	API string `json:"api,omitempty"`
}

// Endpoint is the external namespace.
type Endpoint struct {
	Netns string       `json:"netns"`
	IPs   []netip.Addr `json:"ips"`
}

// Pod is one pod namespace.
type Pod struct {
	Namespace string       `json:"namespace"`
	Name      string       `json:"name"`
	Node      string       `json:"node"`
	Netns     string       `json:"netns"`
	HostIface string       `json:"hostInterface"`
	IPs       []netip.Addr `json:"ips"`
	Ports     []string     `json:"ports"` // N/PROTO served
}

// ID is "namespace/name", what the pod's servers answer with.
func (p *Pod) ID() string { return p.Namespace + "/" + p.Name }

// Process is a background process the lab started.
type Process struct {
	Role string `json:"role"` // "agent" or "server"
	Of   string `json:"of"`   // node name or pod ID
	PID  int    `json:"pid"`
	Log  string `json:"log"`
}

func statePath(dir string) string { return filepath.Join(dir, "state.json") }

// ClusterDir and PoliciesDir are what the agents watch.
func ClusterDir(dir string) string  { return filepath.Join(dir, "cluster") }
func PoliciesDir(dir string) string { return filepath.Join(dir, "policies") }
func clusterFile(dir string) string { return filepath.Join(ClusterDir(dir), "cluster.yaml") }

// save writes the state atomically.
func (s *State) save() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(statePath(s.Dir), append(b, '\n'))
}

// Load reads a lab's state.
func Load(name string) (*State, error) {
	return loadDir(Dir(name))
}

func loadDir(dir string) (*State, error) {
	b, err := os.ReadFile(statePath(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no lab %q (%s does not exist; see 'xdpolicy lab list')", filepath.Base(dir), statePath(dir))
	}
	if err != nil {
		return nil, err
	}
	s := &State{}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("%s: %w", statePath(dir), err)
	}
	return s, nil
}

// List returns the states of the labs present, by name.
func List() ([]*State, error) {
	ents, err := os.ReadDir(Root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*State
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		s, err := loadDir(filepath.Join(Root, e.Name()))
		if err != nil {
			// A lab whose up was interrupted before its state was
			// written: list it by name so that it can be taken down.
			s = &State{Name: e.Name(), Dir: filepath.Join(Root, e.Name())}
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// writeAtomic writes a file through a temporary name that watchers of
// *.yaml/*.json ignore, then renames it into place.
func writeAtomic(path string, data []byte) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// lockRoot serialises labs coming up (index allocation, name check); the
// returned function releases the lock.
func lockRoot() (func(), error) {
	if err := os.MkdirAll(Root, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(Root, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// existingNetns lists the named network namespaces whose names start with
// prefix.
func existingNetns(prefix string) []string {
	ents, _ := os.ReadDir(netnsDir)
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}
