// Command mkimage packs one static binary into a single-layer image FROM
// scratch and writes it as a docker-archive tarball (what `ctr images import`
// and `docker load` read), so the real-node run needs no registry:
//
//	mkimage -binary bin/xdpolicy -path /xdpolicy -tag xdpolicy:latest -o xdpolicy.tar
//	mkimage -binary agnhost -path /agnhost -entrypoint /agnhost,pause -tag registry.k8s.io/pause:3.10.2 -o pause.tar
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func main() {
	binary := flag.String("binary", "", "static binary to pack")
	path := flag.String("path", "", "its path in the image (default /<basename>)")
	entry := flag.String("entrypoint", "", "comma-separated entrypoint (default the binary's path)")
	var tags multi
	flag.Var(&tags, "tag", "image reference, repeatable (e.g. xdpolicy:latest)")
	out := flag.String("o", "", "docker-archive tarball to write")
	flag.Parse()
	if *binary == "" || len(tags) == 0 || *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*binary, *path, *entry, tags, *out); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func run(binary, path, entry string, tags []string, out string) error {
	data, err := os.ReadFile(binary)
	if err != nil {
		return err
	}
	if path == "" {
		path = "/" + binary[strings.LastIndex(binary, "/")+1:]
	}
	ep := []string{path}
	if entry != "" {
		ep = strings.Split(entry, ",")
	}

	// One layer: the binary, owned by root, mode 0755, fixed mtime so the
	// same binary gives the same image.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(path, "/"), Mode: 0o755, Size: int64(len(data)), ModTime: mtime, Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := tw.Write(data); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	})
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{Time: mtime}
	cf.Config.Entrypoint = ep
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}

	refs := map[name.Reference]v1.Image{}
	for _, t := range tags {
		tag, err := name.NewTag(t)
		if err != nil {
			return err
		}
		refs[tag] = img
	}
	tmp := out + ".tmp"
	if err := tarball.MultiRefWriteToFile(tmp, refs); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}
