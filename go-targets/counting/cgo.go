//go:build maptrace_cgo

// Built only for the counting-cgo binary (-tags maptrace_cgo, CGO_ENABLED=1): importing "C" from the
// main package makes the Go linker link externally with gcc, which is what cgo programs in the wild
// (Debian's prometheus, for one) look like. The C call runs in init, before "ready", so the measured
// phase is the same as in the pure-Go build.

package main

/*
#include <unistd.h>
static long counting_c_getpid(void) { return (long)getpid(); }
*/
import "C"

import "os"

func init() {
	if int(C.counting_c_getpid()) != os.Getpid() {
		panic("counting-cgo: getpid through cgo disagrees with os.Getpid")
	}
}
