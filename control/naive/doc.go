// Package naive is a deliberately straightforward interpreter of
// networking.k8s.io/v1 NetworkPolicy semantics, used only by tests as the
// reference the compiled classifier (control/compile, dataplane/ruleset) is
// checked against.
//
// It evaluates every verdict directly over the Kubernetes objects of a
// model.Cluster: it finds the pods owning the addresses, parses every label
// selector again with metav1.LabelSelectorAsSelector, and walks every policy
// and rule. It shares no code with the compiler beyond the model's
// defaulting, validation and address parsing, and it trades all speed for
// being obviously correct.
//
// It must never be imported by non-test code.
package naive
