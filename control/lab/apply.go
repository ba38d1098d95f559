package lab

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/xdpolicy/xdpolicy/control/model"
)

// PolicyFile is where the lab keeps a NetworkPolicy:
// <dir>/policies/<namespace>/<name>.yaml.
func PolicyFile(dir, namespace, name string) string {
	return filepath.Join(PoliciesDir(dir), namespace, name+".yaml")
}

// object is one Kubernetes object read from -f.
type object struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
	Items []json.RawMessage `json:"items"`

	js   []byte
	file string
}

func (o *object) namespace() string {
	if o.Metadata.Namespace == "" {
		return "default"
	}
	return o.Metadata.Namespace
}

func (o *object) String() string {
	if o.Kind == "Namespace" {
		return "Namespace " + o.Metadata.Name
	}
	return o.Kind + " " + o.namespace() + "/" + o.Metadata.Name
}

// Apply adds or replaces NetworkPolicies in the lab at dir and replaces the
// labels of its Namespaces and Pods (a Namespace not in the lab is added;
// a Pod not in the lab is an error: pods come only from `lab up`). Nothing
// is written unless every object is valid. It returns one line per object.
func Apply(dir string, paths []string) ([]string, error) {
	if s := labState(dir); s != nil && s.Kubeconfig != "" {
		return s.applyAPI(paths, false)
	}
	objs, err := readObjects(paths)
	if err != nil {
		return nil, err
	}
	c, err := loadLabCluster(dir)
	if err != nil {
		return nil, err
	}
	type write struct {
		path string
		data []byte
	}
	var writes []write
	var out []string
	clusterChanged := false
	for _, o := range objs {
		switch {
		case o.Kind == "NetworkPolicy" && o.APIVersion == "networking.k8s.io/v1":
			np, err := model.DecodePolicy(o.js)
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", o.file, o, err)
			}
			data, err := yaml.JSONToYAML(o.js)
			if err != nil {
				return nil, err
			}
			path := PolicyFile(dir, np.Namespace, np.Name)
			verb := "created"
			if old, err := os.ReadFile(path); err == nil {
				verb = "configured"
				if bytes.Equal(old, data) {
					verb = "unchanged"
				}
			}
			writes = append(writes, write{path, data})
			out = append(out, fmt.Sprintf("networkpolicy %s/%s %s", np.Namespace, np.Name, verb))
		case o.Kind == "Namespace" && o.APIVersion == "v1":
			labels := maps.Clone(o.Metadata.Labels)
			if labels == nil {
				labels = map[string]string{}
			}
			labels[model.NamespaceNameLabel] = o.Metadata.Name
			i := indexFunc(c.Namespaces, func(n *corev1.Namespace) bool { return n.Name == o.Metadata.Name })
			switch {
			case i < 0:
				ns := &corev1.Namespace{}
				ns.Name, ns.Labels = o.Metadata.Name, labels
				c.Namespaces = append(c.Namespaces, ns)
				sort.SliceStable(c.Namespaces, func(i, j int) bool { return c.Namespaces[i].Name < c.Namespaces[j].Name })
				out = append(out, fmt.Sprintf("namespace %s created", o.Metadata.Name))
				clusterChanged = true
			case maps.Equal(c.Namespaces[i].Labels, labels):
				out = append(out, fmt.Sprintf("namespace %s unchanged", o.Metadata.Name))
			default:
				c.Namespaces[i].Labels = labels
				out = append(out, fmt.Sprintf("namespace %s labels updated", o.Metadata.Name))
				clusterChanged = true
			}
		case o.Kind == "Pod" && o.APIVersion == "v1":
			i := indexFunc(c.Pods, func(p *corev1.Pod) bool { return p.Namespace == o.namespace() && p.Name == o.Metadata.Name })
			if i < 0 {
				return nil, fmt.Errorf("%s: %s is not in the lab: pods cannot be added with apply (only their labels change; pods come from 'lab up --cluster')", o.file, o)
			}
			labels := maps.Clone(o.Metadata.Labels)
			if maps.Equal(c.Pods[i].Labels, labels) {
				out = append(out, fmt.Sprintf("pod %s/%s unchanged", o.namespace(), o.Metadata.Name))
				continue
			}
			c.Pods[i].Labels = labels
			out = append(out, fmt.Sprintf("pod %s/%s labels updated", o.namespace(), o.Metadata.Name))
			clusterChanged = true
		default:
			return nil, fmt.Errorf("%s: %s: the lab applies NetworkPolicy (networking.k8s.io/v1), and Namespace and Pod (v1) labels, not %s %s", o.file, o, o.APIVersion, o.Kind)
		}
	}
	for _, w := range writes {
		if err := os.MkdirAll(filepath.Dir(w.path), 0o755); err != nil {
			return nil, err
		}
		if err := writeAtomic(w.path, w.data); err != nil {
			return nil, err
		}
	}
	if clusterChanged {
		if err := writeCluster(dir, c); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Delete removes NetworkPolicies from the lab at dir. Namespaces and Pods
// cannot be deleted. Nothing is removed unless every policy is present.
func Delete(dir string, paths []string) ([]string, error) {
	if s := labState(dir); s != nil && s.Kubeconfig != "" {
		return s.applyAPI(paths, true)
	}
	objs, err := readObjects(paths)
	if err != nil {
		return nil, err
	}
	var files, out []string
	for _, o := range objs {
		switch {
		case o.Kind == "NetworkPolicy":
			path := PolicyFile(dir, o.namespace(), o.Metadata.Name)
			if _, err := os.Stat(path); err != nil {
				return nil, fmt.Errorf("%s: %s: not found in the lab (%s)", o.file, o, path)
			}
			files = append(files, path)
			out = append(out, fmt.Sprintf("networkpolicy %s/%s deleted", o.namespace(), o.Metadata.Name))
		case o.Kind == "Namespace" || o.Kind == "Pod":
			return nil, fmt.Errorf("%s: %s: namespaces and pods cannot be deleted from a lab (change their labels with 'lab apply', or take the lab down)", o.file, o)
		default:
			return nil, fmt.Errorf("%s: %s: the lab deletes only NetworkPolicies", o.file, o)
		}
	}
	for _, f := range files {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		os.Remove(filepath.Dir(f)) // the namespace's directory, once empty
	}
	return out, nil
}

func indexFunc[T any](s []T, f func(T) bool) int {
	for i, v := range s {
		if f(v) {
			return i
		}
	}
	return -1
}

func loadLabCluster(dir string) (*model.Cluster, error) {
	if _, err := os.Stat(clusterFile(dir)); err != nil {
		return nil, fmt.Errorf("not a lab directory: %w", err)
	}
	res, err := model.Load(clusterFile(dir))
	if err != nil {
		return nil, err
	}
	return res.Cluster, nil
}

// readObjects reads every object from files, directories (*.yaml, *.yml,
// *.json) or "-" (stdin), unrolling kind: List.
func readObjects(paths []string) ([]*object, error) {
	if len(paths) == 0 {
		return nil, errors.New("-f is required: a file, directory or - for stdin")
	}
	var out []*object
	for _, p := range paths {
		var files []string
		if p == "-" {
			files = []string{"-"}
		} else {
			var err error
			if files, err = model.Files(p); err != nil {
				return nil, err
			}
		}
		for _, f := range files {
			var data []byte
			var err error
			if f == "-" {
				data, err = io.ReadAll(os.Stdin)
			} else {
				data, err = os.ReadFile(f)
			}
			if err != nil {
				return nil, err
			}
			r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
			for doc := 1; ; doc++ {
				raw, err := r.Read()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return nil, fmt.Errorf("%s: document %d: %w", f, doc, err)
				}
				js, err := yaml.YAMLToJSON(raw)
				if err != nil {
					return nil, fmt.Errorf("%s: document %d: malformed YAML: %w", f, doc, err)
				}
				js = bytes.TrimSpace(js)
				if len(js) == 0 || string(js) == "null" {
					continue
				}
				if out, err = appendObject(out, f, js); err != nil {
					return nil, fmt.Errorf("%s: document %d: %w", f, doc, err)
				}
			}
		}
	}
	return out, nil
}

func appendObject(out []*object, file string, js []byte) ([]*object, error) {
	o := &object{js: js, file: file}
	if err := json.Unmarshal(js, o); err != nil {
		return nil, fmt.Errorf("not a Kubernetes object: %w", err)
	}
	if strings.HasSuffix(o.Kind, "List") && o.Items != nil {
		for _, it := range o.Items {
			var err error
			if out, err = appendObject(out, file, it); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	if o.Kind == "" || o.Metadata.Name == "" {
		return nil, errors.New("object without kind or metadata.name")
	}
	return append(out, o), nil
}
