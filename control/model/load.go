package model

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// LoadResult is what Load read: the objects it kept and one line describing
// the objects of other kinds it skipped ("" when none).
type LoadResult struct {
	Cluster *Cluster
	Skipped string
}

// Load reads Namespaces, Pods, NetworkPolicies and Services from files and directories
// (walked recursively for *.yaml, *.yml and *.json). A file may hold several
// YAML documents, a JSON object or a `kind: List` (the output of
// `kubectl get ns,pods,netpol,svc -A -o yaml|json`). Objects are defaulted and
// validated; the first bad file fails the whole load with an error naming
// the file, the object and the field, so callers never act on half an input.
func Load(paths ...string) (*LoadResult, error) {
	l := loader{c: &Cluster{}, seen: map[string]string{}}
	for _, p := range paths {
		files, err := Files(p)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			if err := l.file(f); err != nil {
				return nil, err
			}
		}
	}
	l.c.Complete()
	res := &LoadResult{Cluster: l.c}
	if n := len(l.skipped); n > 0 {
		shown := l.skipped
		if len(shown) > 5 {
			shown = append(shown[:5:5], "…")
		}
		res.Skipped = fmt.Sprintf("skipped %d object(s) that are not Namespace, Pod, NetworkPolicy or Service: %s", n, strings.Join(shown, ", "))
	}
	return res, nil
}

// Files lists what Load reads for a path: the file itself, or the *.yaml,
// *.yml and *.json files below a directory, sorted.
func Files(p string) ([]string, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return []string{p}, nil
	}
	var files []string
	err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch strings.ToLower(filepath.Ext(path)) {
		case ".yaml", ".yml", ".json":
			if !d.IsDir() {
				files = append(files, path)
			}
		}
		return nil
	})
	sort.Strings(files)
	return files, err
}

type loader struct {
	c       *Cluster
	seen    map[string]string // "Kind ns/name" → file
	skipped []string
}

func (l *loader) file(name string) error {
	data, err := os.ReadFile(name)
	if err != nil {
		return err
	}
	if err := l.read(name, data); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// read decodes every document of one file.
func (l *loader) read(name string, data []byte) error {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for doc := 1; ; doc++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("document %d: %w", doc, err)
		}
		js, err := yaml.YAMLToJSON(raw)
		if err != nil {
			return fmt.Errorf("document %d: malformed YAML: %w", doc, err)
		}
		js = bytes.TrimSpace(js)
		if len(js) == 0 || string(js) == "null" {
			continue
		}
		if err := l.object(name, js); err != nil {
			return fmt.Errorf("document %d: %w", doc, err)
		}
	}
}

// DecodePolicy decodes one networking.k8s.io/v1 NetworkPolicy from JSON,
// defaults and validates it. Decoding is strict: a misspelt field in a
// policy would silently widen or narrow what it allows.
func DecodePolicy(js []byte) (*networkingv1.NetworkPolicy, error) {
	np := &networkingv1.NetworkPolicy{}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(np); err != nil {
		return nil, err
	}
	DefaultPolicy(np)
	return np, ValidatePolicy(np)
}

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Items []json.RawMessage `json:"items"`
}

func (l *loader) object(file string, js []byte) error {
	var tm typeMeta
	if err := json.Unmarshal(js, &tm); err != nil {
		return fmt.Errorf("not a Kubernetes object: %w", err)
	}
	id := tm.Kind + " " + tm.Metadata.Name
	if tm.Metadata.Namespace != "" {
		id = tm.Kind + " " + tm.Metadata.Namespace + "/" + tm.Metadata.Name
	}
	if strings.HasSuffix(tm.Kind, "List") && tm.Items != nil {
		for i, item := range tm.Items {
			if err := l.object(file, item); err != nil {
				return fmt.Errorf("%s items[%d]: %w", tm.Kind, i, err)
			}
		}
		return nil
	}
	var obj any
	var err error
	switch {
	case tm.Kind == "Namespace" && tm.APIVersion == "v1":
		ns := &corev1.Namespace{}
		err = json.Unmarshal(js, ns)
		obj = ns
	case tm.Kind == "Pod" && tm.APIVersion == "v1":
		p := &corev1.Pod{}
		if err = json.Unmarshal(js, p); err == nil {
			err = ValidatePod(p)
		}
		obj = p
	case tm.Kind == "Service" && tm.APIVersion == "v1":
		svc := &corev1.Service{}
		if err = json.Unmarshal(js, svc); err == nil {
			err = ValidateService(svc)
		}
		obj = svc
	case tm.Kind == "NetworkPolicy" && tm.APIVersion == "networking.k8s.io/v1":
		obj, err = DecodePolicy(js)
	case tm.Kind == "NetworkPolicy":
		return fmt.Errorf("%s: apiVersion %q is not supported, use networking.k8s.io/v1", id, tm.APIVersion)
	case tm.Kind == "":
		return errors.New("object has no kind")
	default:
		l.skipped = append(l.skipped, fmt.Sprintf("%s (%s)", id, filepath.Base(file)))
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", id, err)
	}
	key := id
	if tm.Kind != "Namespace" && tm.Metadata.Namespace == "" {
		key = tm.Kind + " default/" + tm.Metadata.Name
	}
	if prev, ok := l.seen[key]; ok {
		return fmt.Errorf("%s: defined twice (first in %s)", id, prev)
	}
	l.seen[key] = file
	l.c.Add(obj)
	return nil
}
