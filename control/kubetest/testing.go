package kubetest

import (
	"context"
	"errors"
	"os"
	"time"
)

// TB is what Start and Require need of a *testing.T: this package ships in
// the binary (the lab starts API servers with Run), so it does not import
// testing.
type TB interface {
	Helper()
	Skip(args ...any)
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
}

// Start runs a server for the test and stops it (removing its directory)
// when the test ends, also on failure. Without the cached binaries the test
// skips with one line, except under CI (CI=true), where it fails: CI builds
// them first (.ci/run).
func Start(t TB) *Server {
	t.Helper()
	Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	s, err := Run(ctx, Options{})
	if err != nil {
		t.Fatalf("start API server: %v", err)
	}
	t.Cleanup(s.Stop)
	t.Logf("kube-apiserver %s ready at %s in %v", Version, s.URL, time.Since(start).Round(time.Millisecond))
	return s
}

// Require skips (or, under CI, fails) the test when the binaries are missing.
func Require(t TB) {
	t.Helper()
	if _, _, err := Binaries(); err != nil {
		if errors.Is(err, ErrNoBinaries) && os.Getenv("CI") != "true" {
			t.Skip("no API server: " + err.Error())
		}
		t.Fatal(err)
	}
}
