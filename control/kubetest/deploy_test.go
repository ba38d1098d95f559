package kubetest_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/xdpolicy/xdpolicy/control/kubetest"
	"github.com/xdpolicy/xdpolicy/control/model"
	"github.com/xdpolicy/xdpolicy/control/source"
)

const deployDir = "../../deploy"

// kustomizeObjects reads deploy/kustomization.yaml the way `kubectl apply
// -k` does for the features it uses: its resources, in order, with the
// namespace set on namespaced objects and the image replaced.
func kustomizeObjects(t *testing.T) []runtime.Object {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Namespace  string   `json:"namespace"`
		Resources  []string `json:"resources"`
		Images     []struct {
			Name, NewName, NewTag string
		} `json:"images"`
	}
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	var out []runtime.Object
	for _, r := range k.Resources {
		data, err := os.ReadFile(filepath.Join(deployDir, r))
		if err != nil {
			t.Fatal(err)
		}
		rd := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for {
			doc, err := rd.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("%s: %v", r, err)
			}
			switch o := obj.(type) {
			case *corev1.ServiceAccount:
				o.Namespace = k.Namespace
			case *appsv1.DaemonSet:
				o.Namespace = k.Namespace
				for i, c := range o.Spec.Template.Spec.Containers {
					for _, im := range k.Images {
						if c.Image == im.Name || strings.HasPrefix(c.Image, im.Name+":") {
							o.Spec.Template.Spec.Containers[i].Image = im.NewName + ":" + im.NewTag
						}
					}
				}
			case *rbacv1.ClusterRoleBinding:
				for i := range o.Subjects {
					o.Subjects[i].Namespace = k.Namespace
				}
			}
			out = append(out, obj)
		}
	}
	return out
}

// TestDeploy applies deploy/ to a real API server (server-side dry-run,
// then for real) and checks with SubjectAccessReviews that the agent's
// ServiceAccount may do what the agent does and nothing more; then runs the
// Kubernetes source with that ServiceAccount's token.
func TestDeploy(t *testing.T) {
	srv := kubetest.Start(t)
	cs := srv.Client
	ctx := context.Background()
	objs := kustomizeObjects(t)
	for _, dry := range []bool{true, false} {
		opts := metav1.CreateOptions{}
		if dry {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		for _, obj := range objs {
			var err error
			switch o := obj.(type) {
			case *corev1.Namespace:
				_, err = cs.CoreV1().Namespaces().Create(ctx, o, opts)
			case *corev1.ServiceAccount:
				_, err = cs.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, opts)
			case *rbacv1.ClusterRole:
				_, err = cs.RbacV1().ClusterRoles().Create(ctx, o, opts)
			case *rbacv1.ClusterRoleBinding:
				_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, o, opts)
			case *appsv1.DaemonSet:
				_, err = cs.AppsV1().DaemonSets(o.Namespace).Create(ctx, o, opts)
			default:
				t.Fatalf("unexpected object %T in deploy/", obj)
			}
			if err != nil && !(dry && strings.Contains(err.Error(), "not found")) {
				t.Fatalf("create %T (dry run %v): %v", obj, dry, err)
			}
		}
	}

	// kubectl apply -k, with the kubectl of the same version as the API
	// server (scripts/k8s/build.sh builds both).
	kc := filepath.Join(kubetest.CacheDir(), "kubectl")
	out, err := exec.Command(kc, "--kubeconfig", srv.Kubeconfig, "apply", "-k", deployDir, "--server-side", "--force-conflicts").CombinedOutput()
	if err != nil {
		t.Errorf("kubectl apply -k deploy/: %v\n%s", err, out)
	} else {
		t.Logf("kubectl apply -k deploy/:\n%s", out)
	}

	sa := "system:serviceaccount:xdpolicy-system:xdpolicy"
	type access struct {
		verb, group, resource, sub, ns string
	}
	allowed := []access{}
	for _, r := range []string{"pods", "namespaces", "services", "nodes"} {
		for _, v := range []string{"get", "list", "watch"} {
			allowed = append(allowed, access{v, "", r, "", ""})
		}
	}
	for _, v := range []string{"get", "list", "watch"} {
		allowed = append(allowed, access{v, "networking.k8s.io", "networkpolicies", "", ""})
	}
	allowed = append(allowed, access{"create", "", "events", "", "default"}, access{"patch", "", "events", "", "default"})
	denied := []access{
		{"list", "", "secrets", "", ""}, {"get", "", "secrets", "", "kube-system"},
		{"update", "", "pods", "", "default"}, {"delete", "", "pods", "", "default"}, {"create", "", "pods", "", "default"},
		{"update", "", "pods", "status", "default"}, {"patch", "", "nodes", "", ""}, {"delete", "", "namespaces", "", ""},
		{"create", "networking.k8s.io", "networkpolicies", "", "default"}, {"update", "networking.k8s.io", "networkpolicies", "", "default"},
		{"list", "", "configmaps", "", ""}, {"list", "", "endpoints", "", ""}, {"list", "discovery.k8s.io", "endpointslices", "", ""},
		{"delete", "", "events", "", "default"}, {"list", "", "events", "", ""},
		{"create", "", "serviceaccounts", "token", "xdpolicy-system"},
		{"list", "apps", "daemonsets", "", ""}, {"escalate", "rbac.authorization.k8s.io", "clusterroles", "", ""},
	}
	check := func(a access, want bool) {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:               sa,
			Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:xdpolicy-system", "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: a.verb, Group: a.group, Resource: a.resource, Subresource: a.sub, Namespace: a.ns},
		}}
		got, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Status.Allowed != want {
			t.Errorf("%s %s %s/%s (ns %q): allowed=%v, want %v (%s)", sa, a.verb, a.group, a.resource+"/"+a.sub, a.ns, got.Status.Allowed, want, got.Status.Reason)
		}
	}
	for _, a := range allowed {
		check(a, true)
	}
	for _, a := range denied {
		check(a, false)
	}

	// The source with the ServiceAccount's own token: the caches sync
	// (every list and watch is allowed) and the first snapshot arrives.
	tr, err := cs.CoreV1().ServiceAccounts("xdpolicy-system").CreateToken(ctx, "xdpolicy", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.AnonymousClientConfig(srv.Config)
	cfg.BearerToken = tr.Status.Token
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	got := make(chan *model.Cluster, 1)
	k := &source.Kube{Config: cfg, Node: "n1", Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	done := make(chan error, 1)
	go func() {
		done <- k.Run(sctx, func(c *model.Cluster) {
			select {
			case got <- c:
			default:
			}
		})
	}()
	select {
	case c := <-got:
		t.Logf("source as the ServiceAccount: first snapshot with %d namespaces", len(c.Namespaces))
	case err := <-done:
		t.Fatalf("source as the ServiceAccount: %v", err)
	case <-sctx.Done():
		t.Fatal("source as the ServiceAccount: no snapshot within 60s (a list or watch denied?)")
	}
	cancel()
	<-done
}
