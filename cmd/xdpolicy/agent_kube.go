package main

import (
	"errors"
	"log/slog"
	"time"

	"github.com/xdpolicy/xdpolicy/control/source"
)

// checkSourceFlags: exactly one control source.
func checkSourceFlags(clusterDir, kubeconfig string) error {
	switch {
	case clusterDir != "" && kubeconfig != "":
		return errors.New("--cluster and --kubeconfig exclude each other")
	case clusterDir == "" && kubeconfig == "" && !source.InCluster():
		return errors.New("--cluster DIR, --kubeconfig FILE or an in-cluster service account (KUBERNETES_SERVICE_HOST) is required")
	}
	return nil
}

// agentSource picks the control source: YAML directories with --cluster,
// else the Kubernetes API server (--kubeconfig or in-cluster).
func agentSource(clusterDir, policiesDir, kubeconfig, node string, log *slog.Logger) (source.Source, error) {
	if clusterDir != "" {
		paths := []string{clusterDir}
		if policiesDir != "" {
			paths = append(paths, policiesDir)
		}
		return &source.Dir{Paths: paths, Interval: 200 * time.Millisecond, Log: log}, nil
	}
	cfg, err := source.KubeConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	log.Info("control source: Kubernetes API server", "host", cfg.Host)
	return &source.Kube{Config: cfg, Node: node, Log: log}, nil
}
