// Command counting allocates exactly the documented number of maps, slices and objects, each from its
// own function, so that a tracer's counts, sizes, types and creating frames can be checked against a
// known truth (TRUTH.md, truth.json).
//
// Everything the measured phase needs (the sinks that keep allocations alive, the done-line buffer)
// is allocated before "ready", so the only heap allocations after the stdin line are the ones made by
// makeMaps, makeSlices and makeObjects.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"

	"maptrace/go-targets/internal/protocol"
)

// Node is a 48-byte struct with one pointer field: new(Node) takes the small "scan" malloc path
// (mallocgcSmallScanNoHeader in 1.24+, the size-specialized mallocgcSmallScanNoHeaderSC5 in 1.27).
type Node struct {
	Next   *Node
	Key    uint64
	Value  int64
	Weight int64
	Tag    [16]byte
}

// Package-level sinks: every allocation escapes into one of them and stays reachable until exit.
// They are sized before the measured phase so that storing into them never allocates.
var (
	mapSink   []map[string]int
	sliceSink [][]byte
	objSink   []*Node
	// appendSink holds A slices with len = cap = 1, made before the measured phase, so that each
	// append in growSlices must grow exactly one of them.
	appendSink [][]uint64
)

// makeMaps makes exactly n maps. hint is a parameter, unknown at compile time, so the compiler calls
// runtime.makemap (with the map type) rather than makemap_small; hint >= 64 makes the runtime allocate
// the buckets (1.19-1.23) or the table and groups (1.24+, swiss maps) inside makemap.
//
//go:noinline
func makeMaps(n, hint int) {
	for i := 0; i < n; i++ {
		mapSink[i] = make(map[string]int, hint)
	}
}

// makeSlices makes exactly m []byte of size bytes each. size is a parameter, so every make is a call
// to runtime.makeslice.
//
//go:noinline
func makeSlices(m, size int) {
	for i := 0; i < m; i++ {
		sliceSink[i] = make([]byte, size)
	}
}

// makeObjects makes exactly k *Node, chained through Next (each node keeps the previous one alive too).
//
//go:noinline
func makeObjects(k int) {
	var prev *Node
	for i := 0; i < k; i++ {
		n := &Node{Next: prev, Key: uint64(i), Value: int64(i) * 3}
		objSink[i] = n
		prev = n
	}
}

// growSlices appends one element to each of the a full slices in appendSink: exactly a calls to
// runtime.growslice, each making a new []uint64 backing array of capacity 2 (16 bytes, noscan).
//
//go:noinline
func growSlices(a int) {
	for i := 0; i < a; i++ {
		appendSink[i] = append(appendSink[i], uint64(i))
	}
}

// Preallocated so that reading memory statistics in the measured phase allocates nothing.
var before, after runtime.MemStats

func main() {
	maps := flag.Int("maps", 100, "number of maps main.makeMaps makes")
	slices := flag.Int("slices", 200, "number of []byte main.makeSlices makes")
	objects := flag.Int("objects", 300, "number of *main.Node main.makeObjects makes")
	sliceSize := flag.Int("slice-size", 4096, "length in bytes of each slice")
	appends := flag.Int("appends", 0, "number of appends main.growSlices makes, each growing a full 1-element []uint64")
	mapHint := flag.Int("map-hint", 64, "size hint of each map (at least 64)")
	memstats := flag.Bool("memstats", false, "append the runtime's own count of the measured phase's heap allocations to the done line (mallocs=, bytes=)")
	flag.Parse()
	if *maps < 0 || *slices < 0 || *objects < 0 || *appends < 0 || *sliceSize < 0 || *mapHint < 64 {
		fmt.Fprintln(os.Stderr, "counting: counts must be >= 0 and -map-hint >= 64")
		os.Exit(2)
	}

	mapSink = make([]map[string]int, *maps)
	sliceSink = make([][]byte, *slices)
	objSink = make([]*Node, *objects)
	appendSink = make([][]uint64, *appends)
	for i := range appendSink {
		appendSink[i] = make([]uint64, 1)
	}
	done := make([]byte, 0, protocol.DoneBufSize)

	protocol.Settle()
	protocol.Ready()
	protocol.WaitLine()

	if *memstats {
		runtime.ReadMemStats(&before)
	}
	makeMaps(*maps, *mapHint)
	makeSlices(*slices, *sliceSize)
	makeObjects(*objects)
	growSlices(*appends)
	if *memstats {
		runtime.ReadMemStats(&after)
		protocol.Done(done,
			protocol.Field{Key: "maps", Val: int64(*maps)},
			protocol.Field{Key: "slices", Val: int64(*slices)},
			protocol.Field{Key: "objects", Val: int64(*objects)},
			protocol.Field{Key: "mallocs", Val: int64(after.Mallocs - before.Mallocs)},
			protocol.Field{Key: "bytes", Val: int64(after.TotalAlloc - before.TotalAlloc)},
			protocol.Field{Key: "gcs", Val: int64(after.NumGC - before.NumGC)})
		return
	}
	protocol.Done(done,
		protocol.Field{Key: "maps", Val: int64(*maps)},
		protocol.Field{Key: "slices", Val: int64(*slices)},
		protocol.Field{Key: "objects", Val: int64(*objects)})
}
