package compile_test

import (
	"math/rand/v2"
	"testing"
)

// FuzzCompile drives the random cluster generator with the fuzzer's bytes
// (each byte one decision: a namespace label, a selector operator, a CIDR,
// a port, a broken field…) and checks that compiling never panics and that
// the compiled ruleset agrees with the naive interpreter on a sample of
// flows. `go test` runs the seed corpus; `go test -fuzz=FuzzCompile
// ./control/compile` explores.
func FuzzCompile(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0})
	f.Add([]byte("xdpolicy"))
	r := rand.New(rand.NewPCG(7, 7))
	for range 8 {
		b := make([]byte, 64+r.IntN(512))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		g := &gen{r: newByteSource(data), invalid: true}
		var st diffStats
		diffCluster(t, g, "fuzz input", 64, false, &st)
	})
}
