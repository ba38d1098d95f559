// Package corpus reads the reachability tables extracted from the upstream
// Kubernetes e2e NetworkPolicy tests (shared/corpus beside the checkout),
// which the compiler's and the lab's tests are checked against. Only tests
// use it; it never decides anything itself.
package corpus

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// File is where the corpus lives relative to a parent of the checkout.
const File = "shared/corpus/upstream-v1.35.4.json"

// Test is one upstream e2e test.
type Test struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Steps []Step `json:"steps"`
}

// Step is the complete state after some actions, and the expected table for
// one port.
type Step struct {
	State          State                      `json:"state"`
	Port           uint16                     `json:"port"`
	Protocol       string                     `json:"protocol"`
	IgnoreLoopback bool                       `json:"ignoreLoopback"`
	Expected       map[string]map[string]bool `json:"expected"`
}

// State holds the namespaces, pods and (API-defaulted) policies of a step.
type State struct {
	Namespaces []struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	} `json:"namespaces"`
	Pods []struct {
		Namespace string            `json:"namespace"`
		Name      string            `json:"name"`
		Labels    map[string]string `json:"labels"`
		IP        string            `json:"ip"`
		Ports     []struct {
			Name     string          `json:"name"`
			Port     int32           `json:"port"`
			Protocol corev1.Protocol `json:"protocol"`
		} `json:"ports"`
	} `json:"pods"`
	Policies []json.RawMessage `json:"policies"`
}

// Find walks up from the working directory to the corpus; the error wraps
// os.ErrNotExist when no parent has it.
func Find() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, File)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("upstream reachability corpus %s not found in any parent directory: %w", File, os.ErrNotExist)
		}
		dir = parent
	}
}

// Load reads the corpus.
func Load(path string) ([]Test, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var tests []Test
	if err := json.Unmarshal(data, &tests); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return tests, nil
}

// ForTest loads the corpus for a test, skipping it with one line where the
// checkout has no shared/corpus beside it.
func ForTest(t testing.TB) []Test {
	t.Helper()
	path, err := Find()
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	tests, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return tests
}
