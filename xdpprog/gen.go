package xdpprog

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -target bpfel -cflags "-O2 -g -mcpu=v3 -Wall -Werror -Iinclude" -type flow_key -type flow_val -type pod_info -type config_val -type frag_key -type frag_val tcx tcx.c
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -target bpfel -cflags "-O2 -g -Wall -Werror -Iinclude" punt punt.c
