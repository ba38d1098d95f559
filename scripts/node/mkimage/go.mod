// Build module of mkimage (scripts/node): packs a static binary into a
// FROM-scratch image tarball for `ctr images import`; kept out of the main
// module so go-containerregistry is not one of its dependencies.
module github.com/xdpolicy/xdpolicy/scripts/node/mkimage

go 1.26

require github.com/google/go-containerregistry v0.22.1

require (
	github.com/klauspost/compress v1.19.2 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/opencontainers/image-spec v1.1.1 // indirect
)
