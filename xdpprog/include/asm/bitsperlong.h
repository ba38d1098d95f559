/* The bpf target has no asm/ directory of its own; the generic one fits. */
#include <asm-generic/bitsperlong.h>
