package oracle

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"
)

// Create creates one object from its JSON as a user would send it (a POST
// of application/json, so that the server decodes, defaults and validates
// exactly these bytes): a Namespace (one that exists gets the document's
// labels instead: nothing finalizes namespaces on a bare API server, so
// they are never deleted), a Pod, then its status if the document has one
// through the status subresource, as a kubelet sets it, or a
// NetworkPolicy. For an object the server rejects, its error is returned.
func Create(ctx context.Context, cs kubernetes.Interface, js []byte) error {
	var doc struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string            `json:"name"`
			Namespace string            `json:"namespace"`
			Labels    map[string]string `json:"labels"`
		} `json:"metadata"`
		Status *corev1.PodStatus `json:"status"`
	}
	if err := json.Unmarshal(js, &doc); err != nil {
		return fmt.Errorf("not a Kubernetes object: %w", err)
	}
	post := func(c rest.Interface, namespaced bool, resource string) *rest.Request {
		r := c.Post().Resource(resource).Body(js).SetHeader("Content-Type", "application/json")
		if namespaced {
			r = r.Namespace(doc.Metadata.Namespace)
		}
		return r
	}
	switch {
	case doc.APIVersion == "v1" && doc.Kind == "Namespace":
		err := post(cs.CoreV1().RESTClient(), false, "namespaces").Do(ctx).Error()
		if !apierrors.IsAlreadyExists(err) {
			return err
		}
		ns, err := cs.CoreV1().Namespaces().Get(ctx, doc.Metadata.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		ns.Labels = doc.Metadata.Labels
		_, err = cs.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{})
		return err
	case doc.APIVersion == "v1" && doc.Kind == "Pod":
		if doc.Metadata.Namespace == "" {
			doc.Metadata.Namespace = "default"
		}
		pod := &corev1.Pod{}
		if err := post(cs.CoreV1().RESTClient(), true, "pods").Do(ctx).Into(pod); err != nil {
			return err
		}
		if doc.Status == nil {
			return nil
		}
		pod.Status = *doc.Status
		_, err := cs.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		return err
	case doc.APIVersion == "networking.k8s.io/v1" && doc.Kind == "NetworkPolicy":
		if doc.Metadata.Namespace == "" {
			doc.Metadata.Namespace = "default"
		}
		return post(cs.NetworkingV1().RESTClient(), true, "networkpolicies").Do(ctx).Error()
	}
	return fmt.Errorf("%s %s: not a v1 Namespace, v1 Pod or networking.k8s.io/v1 NetworkPolicy", doc.APIVersion, doc.Kind)
}

// Reset deletes every Pod in every namespace (at once: no kubelet would
// confirm a graceful deletion) and every NetworkPolicy. Namespaces stay
// (see Create).
func Reset(ctx context.Context, cs kubernetes.Interface) error {
	nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	now := int64(0)
	for _, ns := range nss.Items {
		if err := cs.CoreV1().Pods(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &now}, metav1.ListOptions{}); err != nil {
			return err
		}
		if err := cs.NetworkingV1().NetworkPolicies(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			return err
		}
	}
	return nil
}

// Docs reads the JSON of every object in files or directories (walked for
// *.yaml, *.yml and *.json, sorted); a file may hold several YAML
// documents.
func Docs(paths ...string) ([][]byte, error) {
	var files []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		var found []string
		err = filepath.WalkDir(p, func(path string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			switch strings.ToLower(filepath.Ext(path)) {
			case ".yaml", ".yml", ".json":
				if !d.IsDir() {
					found = append(found, path)
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		sort.Strings(found)
		files = append(files, found...)
	}
	var out [][]byte
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for {
			raw, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			js, err := yaml.YAMLToJSON(raw)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			if js = bytes.TrimSpace(js); len(js) > 0 && string(js) != "null" {
				out = append(out, js)
			}
		}
	}
	return out, nil
}
