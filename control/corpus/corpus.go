// Package corpus reads the reachability tables extracted from the upstream
// Kubernetes e2e NetworkPolicy tests (committed under testdata/),
// which the compiler's and the lab's tests are checked against. Only tests
// use it; it never decides anything itself.
package corpus

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// The corpus is committed as test data (testdata/README.md says what it is
// and how it was made), so no test depends on a folder outside the
// repository.
//
//go:embed testdata/upstream-v1.35.4.json
var upstream []byte

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

// Load parses the committed corpus.
func Load() ([]Test, error) {
	var tests []Test
	if err := json.Unmarshal(upstream, &tests); err != nil {
		return nil, fmt.Errorf("upstream corpus: %w", err)
	}
	if len(tests) == 0 {
		return nil, errors.New("upstream corpus: no tests")
	}
	return tests, nil
}

// ForTest loads the corpus for a test.
func ForTest(t testing.TB) []Test {
	t.Helper()
	tests, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	return tests
}
