// Package packet decodes punted Ethernet frames into a caller-owned Parsed
// value and completes their L4 checksums before re-injection.
//
// Its decoder follows the tcx program's parser (xdpprog/tcx.c) rule for
// rule — up to two VLAN tags, IPv4 options, up to eight IPv6 extension
// headers, ports only for TCP/UDP/SCTP first fragments, ICMP without ports —
// so the flow key userspace builds for a frame is the key the kernel looked
// up for it.
//
// What it must never do: allocate, panic or return an error value per
// packet. Malformed input decodes as "not OK" and is dropped by the caller;
// offsets are stored, bytes are never copied.
package packet
