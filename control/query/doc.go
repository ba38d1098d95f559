// Package query answers reachability questions about a cluster from its
// compiled ruleset: the truth table `xdpolicy probe` prints and the
// explanation `xdpolicy explain` gives. It reads rulesets exactly as the
// dataplane does (Ruleset.Verdict), so what it predicts is what the workers
// enforce.
package query
