// Command cache is a leak the lifecycle report must find: every round, main.addEntries makes
// -per-round maps and keeps them all in the package-level slice main.cache, then a GC cycle runs
// (runtime.GC, so cycles are deterministic). Nothing is ever removed: the live set at
// main.addEntries grows by -per-round every cycle and every map is retained. See TRUTH.md.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"

	"maptrace/go-targets/internal/protocol"
)

// cache holds every map ever made; sized before the measured phase so storing never allocates.
var cache []map[string]int

// addEntries makes n maps (runtime.makemap with the map type: hint is a parameter) and appends
// them to the cache at position from.
//
//go:noinline
func addEntries(from, n, hint int) {
	for i := 0; i < n; i++ {
		cache[from+i] = make(map[string]int, hint)
	}
}

func main() {
	rounds := flag.Int("rounds", 5, "rounds; each adds -per-round maps and runs one GC cycle")
	perRound := flag.Int("per-round", 20, "maps added to the cache per round")
	settle := flag.Int("settle", 2, "extra GC cycles after the last round, so the last maps survive them too")
	flag.Parse()
	if *rounds < 1 || *perRound < 1 || *settle < 0 {
		fmt.Fprintln(os.Stderr, "cache: -rounds and -per-round must be >= 1, -settle >= 0")
		os.Exit(2)
	}
	cache = make([]map[string]int, *rounds**perRound)
	done := make([]byte, 0, protocol.DoneBufSize)
	protocol.Settle()

	protocol.Ready()
	protocol.WaitLine()

	for r := 0; r < *rounds; r++ {
		addEntries(r**perRound, *perRound, 64)
		runtime.GC()
	}
	for i := 0; i < *settle; i++ {
		runtime.GC()
	}
	protocol.Done(done,
		protocol.Field{Key: "maps", Val: int64(len(cache))},
		protocol.Field{Key: "rounds", Val: int64(*rounds)},
		protocol.Field{Key: "gcs", Val: int64(*rounds + *settle)})
}
