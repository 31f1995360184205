// Command churn is the lifecycle control: every round, main.makeGarbage makes -per-round maps and
// []byte buffers that are all unreachable by the end of the round, then a GC cycle runs
// (runtime.GC). Nothing it makes survives a cycle, so a tracer must report no retained object
// at a main.* site. See TRUTH.md.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"

	"maptrace/go-targets/internal/protocol"
)

// Package-level sinks force every value onto the heap; makeGarbage clears them before it returns.
var (
	mapSink   map[string]int
	bytesSink []byte
)

// makeGarbage makes n maps and n buffers of size bytes, each overwriting the last, and drops the
// last ones too.
//
//go:noinline
func makeGarbage(n, size, hint int) {
	for i := 0; i < n; i++ {
		mapSink = make(map[string]int, hint)
		bytesSink = make([]byte, size)
	}
	mapSink = nil
	bytesSink = nil
}

func main() {
	rounds := flag.Int("rounds", 5, "rounds; each makes garbage and runs one GC cycle")
	perRound := flag.Int("per-round", 50, "maps and buffers made per round")
	size := flag.Int("size", 1024, "bytes per buffer")
	flag.Parse()
	if *rounds < 1 || *perRound < 1 || *size < 0 {
		fmt.Fprintln(os.Stderr, "churn: -rounds and -per-round must be >= 1, -size >= 0")
		os.Exit(2)
	}
	done := make([]byte, 0, protocol.DoneBufSize)
	protocol.Settle()

	protocol.Ready()
	protocol.WaitLine()

	for r := 0; r < *rounds; r++ {
		makeGarbage(*perRound, *size, 64)
		runtime.GC()
	}
	runtime.GC()
	protocol.Done(done,
		protocol.Field{Key: "rounds", Val: int64(*rounds)},
		protocol.Field{Key: "made", Val: int64(2 * *rounds * *perRound)})
}
