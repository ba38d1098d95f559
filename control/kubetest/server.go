package kubetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Version is the Kubernetes version scripts/k8s/build.sh builds.
const Version = "v1.37.2"

// CacheDir is where scripts/k8s/build.sh puts the binaries:
// $XDPOLICY_K8S_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/xdpolicy/k8s-<Version>.
func CacheDir() string {
	if d := os.Getenv("XDPOLICY_K8S_CACHE"); d != "" {
		return d
	}
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, _ := os.UserHomeDir()
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "xdpolicy", "k8s-"+Version)
}

// ErrNoBinaries says the cache has not been built.
var ErrNoBinaries = errors.New("kube-apiserver/etcd not built: run scripts/k8s/build.sh")

// Binaries returns the paths of kube-apiserver and etcd in the cache.
func Binaries() (apiserver, etcd string, err error) {
	d := CacheDir()
	apiserver, etcd = filepath.Join(d, "kube-apiserver"), filepath.Join(d, "etcd")
	for _, p := range []string{apiserver, etcd} {
		if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
			return "", "", fmt.Errorf("%w (missing %s)", ErrNoBinaries, p)
		}
	}
	return apiserver, etcd, nil
}

// Options for Run.
type Options struct {
	// Dir holds certificates, tokens, etcd data, logs and the kubeconfig.
	// Empty: a new temporary directory, removed by Stop.
	Dir string
	// Detach starts the processes in their own session so they outlive the
	// caller (the lab); otherwise they die with the calling process.
	Detach bool
}

// Server is a running kube-apiserver with its etcd.
type Server struct {
	Dir        string
	Kubeconfig string // admin (system:masters) kubeconfig
	URL        string // https://127.0.0.1:port
	EtcdURL    string // http://127.0.0.1:port
	Token      string // admin bearer token
	Config     *rest.Config
	Client     kubernetes.Interface

	removeDir bool
	detach    bool
	apiBin    string
	apiArgs   []string
	// PIDs of the processes (0: not running), saved in Dir/pids.json.
	EtcdPID, APIPID int
	etcdCmd, apiCmd *exec.Cmd
}

// Run starts etcd and kube-apiserver and waits until /readyz answers ok.
// On error nothing is left running.
func Run(ctx context.Context, o Options) (s *Server, err error) {
	apiBin, etcdBin, err := Binaries()
	if err != nil {
		return nil, err
	}
	srv := &Server{Dir: o.Dir, detach: o.Detach, apiBin: apiBin}
	s = srv
	if s.Dir == "" {
		if s.Dir, err = os.MkdirTemp("", "xdpolicy-apiserver-"); err != nil {
			return nil, err
		}
		s.removeDir = true
	} else if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			srv.Stop() // s is nil here: every error path returns nil, err
		}
	}()
	if err := writePKI(s.Dir); err != nil {
		return nil, fmt.Errorf("certificates: %w", err)
	}
	tok := make([]byte, 16)
	rand.Read(tok)
	s.Token = hex.EncodeToString(tok)
	if err := os.WriteFile(s.path("tokens.csv"), []byte(s.Token+`,admin,admin,"system:masters"`+"\n"), 0o600); err != nil {
		return nil, err
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	s.EtcdURL = etcdURL
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	// etcd's data lives in memory when /dev/shm exists: fsync latency is not
	// what the tests measure.
	dataDir := s.path("etcd")
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if dataDir, err = os.MkdirTemp("/dev/shm", "xdpolicy-etcd-"); err != nil {
			return nil, err
		}
		if err := os.Symlink(dataDir, s.path("etcd")); err != nil {
			os.RemoveAll(dataDir)
			return nil, err
		}
	}
	s.etcdCmd, err = s.start("etcd", etcdBin,
		"--name=default", "--data-dir="+dataDir,
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=default="+peerURL, "--log-level=warn")
	if err != nil {
		return nil, err
	}
	s.EtcdPID = s.etcdCmd.Process.Pid
	s.URL = "https://127.0.0.1:" + strconv.Itoa(ports[2])
	s.apiArgs = []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(ports[2]),
		"--cert-dir=" + s.path("cert"),
		"--tls-cert-file=" + s.path("server.crt"), "--tls-private-key-file=" + s.path("server.key"),
		"--client-ca-file=" + s.path("ca.crt"),
		"--token-auth-file=" + s.path("tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + s.path("sa.pub"),
		"--service-account-signing-key-file=" + s.path("sa.key"),
		"--service-cluster-ip-range=10.96.0.0/16",
		// No controller-manager creates the "default" ServiceAccounts.
		"--disable-admission-plugins=ServiceAccount",
		// 1.37 refuses a loopback advertise address for the kubernetes
		// Service's endpoints; nothing here reaches the API through it.
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=0",
	}
	if err := s.StartAPIServer(ctx); err != nil {
		return nil, err
	}
	if err := s.writeKubeconfig(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) path(name string) string { return filepath.Join(s.Dir, name) }

func (s *Server) start(name, bin string, args ...string) (*exec.Cmd, error) {
	logf, err := os.OpenFile(s.path(name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = s.Dir
	if s.detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go cmd.Wait() // reap, so that alive() sees it gone
	return cmd, nil
}

// StartAPIServer starts kube-apiserver (again, after StopAPIServer) on the
// same port and waits for /readyz.
func (s *Server) StartAPIServer(ctx context.Context) error {
	cmd, err := s.start("kube-apiserver", s.apiBin, s.apiArgs...)
	if err != nil {
		return err
	}
	s.apiCmd, s.APIPID = cmd, cmd.Process.Pid
	if err := s.savePIDs(); err != nil {
		return err
	}
	return s.waitReady(ctx, 90*time.Second)
}

// StopAPIServer stops kube-apiserver, leaving etcd running.
func (s *Server) StopAPIServer() {
	stopPID(s.APIPID, 10*time.Second)
	s.APIPID = 0
	s.savePIDs()
}

// state is what Dir/pids.json keeps, for StopDir and Attach.
type state struct {
	Etcd      int      `json:"etcd"`
	Apiserver int      `json:"apiserver"`
	URL       string   `json:"url"`
	EtcdURL   string   `json:"etcdURL"`
	Token     string   `json:"token"`
	APIBin    string   `json:"apiBin"`
	APIArgs   []string `json:"apiArgs"`
}

func (s *Server) savePIDs() error {
	b, _ := json.Marshal(state{Etcd: s.EtcdPID, Apiserver: s.APIPID, URL: s.URL, EtcdURL: s.EtcdURL, Token: s.Token, APIBin: s.apiBin, APIArgs: s.apiArgs})
	return os.WriteFile(s.path("pids.json"), b, 0o600)
}

// Attach returns the server another process started detached in dir, so
// that its kube-apiserver can be stopped and started again (StopAPIServer,
// StartAPIServer). Stop on it stops both processes but keeps dir.
func Attach(dir string) (*Server, error) {
	b, err := os.ReadFile(filepath.Join(dir, "pids.json"))
	if err != nil {
		return nil, err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s/pids.json: %w", dir, err)
	}
	s := &Server{Dir: dir, URL: st.URL, EtcdURL: st.EtcdURL, Token: st.Token, EtcdPID: st.Etcd, APIPID: st.Apiserver, apiBin: st.APIBin, apiArgs: st.APIArgs, detach: true}
	return s, s.writeKubeconfig()
}

// Stop stops both processes and removes a temporary Dir.
func (s *Server) Stop() {
	stopPID(s.APIPID, 10*time.Second)
	stopPID(s.EtcdPID, 10*time.Second)
	s.APIPID, s.EtcdPID = 0, 0
	removeAll(s.Dir, s.removeDir)
}

// StopDir stops the server whose Dir (with pids.json) is dir, as started
// detached by another process, and removes dir.
func StopDir(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "pids.json"))
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	var p state
	if err := json.Unmarshal(b, &p); err != nil {
		return fmt.Errorf("%s/pids.json: %w", dir, err)
	}
	stopPID(p.Apiserver, 10*time.Second)
	stopPID(p.Etcd, 10*time.Second)
	removeAll(dir, true)
	return nil
}

// removeAll removes the etcd data behind the symlink, and dir if asked.
func removeAll(dir string, all bool) {
	if dir == "" {
		return
	}
	if t, err := os.Readlink(filepath.Join(dir, "etcd")); err == nil {
		os.RemoveAll(t)
	}
	if all {
		os.RemoveAll(dir)
	}
}

// stopPID sends SIGTERM to the process group of pid, then SIGKILL after grace.
func stopPID(pid int, grace time.Duration) {
	if pid <= 0 {
		return
	}
	if syscall.Kill(pid, 0) != nil {
		return
	}
	syscall.Kill(-pid, syscall.SIGTERM)
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	syscall.Kill(-pid, syscall.SIGKILL)
	syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 100 && alive(pid); i++ {
		time.Sleep(10 * time.Millisecond)
	}
}

// alive: the process exists and is not a zombie.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) S ...
	for i := len(b) - 1; i > 0; i-- {
		if b[i] == ')' && i+2 < len(b) {
			return b[i+2] != 'Z'
		}
	}
	return true
}

// freePorts picks n free ports below the kernel's ephemeral range
// (32768–60999 by default), so that no outgoing connection takes one while
// kube-apiserver is stopped and started again on it.
func freePorts(n int) ([]int, error) {
	var out []int
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for tries := 0; len(out) < n; tries++ {
		if tries > 1000 {
			return nil, errors.New("no free port in 20000-32767")
		}
		port := 20000 + mrand.IntN(12768)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		lns = append(lns, l)
		out = append(out, port)
	}
	return out, nil
}

func (s *Server) httpClient() (*http.Client, error) {
	ca, err := os.ReadFile(s.path("ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}, nil
}

func (s *Server) waitReady(ctx context.Context, timeout time.Duration) error {
	hc, err := s.httpClient()
	if err != nil {
		return err
	}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if s.APIPID != 0 && !alive(s.APIPID) {
			return fmt.Errorf("kube-apiserver exited: %s", tailFile(s.path("kube-apiserver.log")))
		}
		if s.EtcdPID != 0 && !alive(s.EtcdPID) {
			return fmt.Errorf("etcd exited: %s", tailFile(s.path("etcd.log")))
		}
		req, _ := http.NewRequestWithContext(ctx, "GET", s.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+s.Token)
		resp, err := hc.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, b)
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("kube-apiserver not ready after %v: %s; log: %s", timeout, last, tailFile(s.path("kube-apiserver.log")))
}

func tailFile(p string) string {
	b, _ := os.ReadFile(p)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

func (s *Server) writeKubeconfig() error {
	ca, err := os.ReadFile(s.path("ca.crt"))
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["xdpolicy"] = &clientcmdapi.Cluster{Server: s.URL, CertificateAuthorityData: ca}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: s.Token}
	cfg.Contexts["xdpolicy"] = &clientcmdapi.Context{Cluster: "xdpolicy", AuthInfo: "admin"}
	cfg.CurrentContext = "xdpolicy"
	s.Kubeconfig = s.path("kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, s.Kubeconfig); err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		return err
	}
	rc.QPS, rc.Burst = 1000, 2000
	s.Config = rc
	s.Client, err = kubernetes.NewForConfig(rc)
	return err
}

// PutStored writes an object's JSON straight into etcd under key (e.g.
// /registry/networkpolicies/NS/NAME), past the API server's validation:
// what an older API server with laxer validation stored stays there and
// is served as it is. Tests use it for objects today's validation refuses.
func (s *Server) PutStored(ctx context.Context, key string, obj []byte) error {
	body, _ := json.Marshal(map[string]string{
		"key":   base64.StdEncoding.EncodeToString([]byte(key)),
		"value": base64.StdEncoding.EncodeToString(obj),
	})
	req, err := http.NewRequestWithContext(ctx, "POST", s.EtcdURL+"/v3/kv/put", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("etcd put %s: %s: %s", key, resp.Status, b)
	}
	return nil
}
