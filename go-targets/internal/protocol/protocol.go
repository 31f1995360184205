// Package protocol is the handshake every go-target follows (see go-targets/README.md).
//
// A test harness starts a target, reads "ready <pid>" to learn that the process exists and its runtime
// is initialised, attaches the tracer, then writes one line to stdin so the target runs its measured work.
// Everything here that runs after Ready must not allocate: the tracer is attached by then and would
// count it.
package protocol

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"
)

// Settle does, before Ready, the runtime's one-time allocations that would otherwise land in a
// measured phase that sleeps:
//   - the calling goroutine's first time.Sleep allocates its timer (runtime.timeSleep, gp.timer == nil);
//   - each P's timer heap is a slice that grows on first use (runtime.(*timers).addHeap in 1.23+,
//     runtime.doaddtimer before), so the background scavenger's timer (runtime.bgscavenge) can append
//     to a heap that has no room yet, at any later moment.
//
// Goroutines that first spin (so that idle Ps steal them) and then sleep together give every P's
// timer heap room for several timers. It is best effort (the runtime decides where timers go, and it
// may start a new thread, which allocates, at any time), which is why TRUTH.md files only promise
// "no allocation with a main.* frame".
func Settle() {
	time.Sleep(time.Millisecond)
	var wg sync.WaitGroup
	for i := 0; i < 4*runtime.GOMAXPROCS(0); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := time.Now(); time.Since(t) < 2*time.Millisecond; {
			}
			time.Sleep(5 * time.Millisecond)
		}()
	}
	wg.Wait()
}

// Ready prints "ready <pid>" as the first line on stdout. os.Stdout is unbuffered in Go, so the line
// has been written when Ready returns. It may allocate: the tracer is not attached yet.
func Ready() {
	fmt.Printf("ready %d\n", os.Getpid())
}

// one is the byte WaitLine reads into; a package variable so that reading needs no allocation.
var one [1]byte

// WaitLine blocks until one full line (or EOF, or a read error) arrives on stdin. It reads a byte at
// a time into a static buffer instead of using bufio, which would allocate the line after the tracer
// attached.
func WaitLine() {
	for {
		n, err := os.Stdin.Read(one[:])
		if err != nil || (n == 1 && one[0] == '\n') {
			return
		}
	}
}

// Field is one "key=value" pair of the done line.
type Field struct {
	Key string
	Val int64
}

// DoneBufSize is the capacity a caller preallocates for Done: enough for the longest done line of any
// target, so that Done never grows the buffer.
const DoneBufSize = 256

// Done writes "done k1=v1 k2=v2 ...\n" on stdout, formatting into buf (allocated by the caller before
// the measured phase with capacity DoneBufSize) so that it allocates nothing.
func Done(buf []byte, fields ...Field) {
	b := append(buf[:0], "done"...)
	for _, f := range fields {
		b = append(b, ' ')
		b = append(b, f.Key...)
		b = append(b, '=')
		b = strconv.AppendInt(b, f.Val, 10)
	}
	b = append(b, '\n')
	os.Stdout.Write(b)
}
