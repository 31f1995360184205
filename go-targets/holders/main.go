// Command holders is the reference-chain target: every round, main.openSessions opens -per-round
// sessions (a main.Session with a -size byte buffer) and keeps each in the package-level map
// main.sessions, which nothing ever shrinks, and main.startWorker hands a batch made by
// main.makeBatch to a goroutine that blocks forever (a goroutine leak); then a GC cycle runs. After its done line it stays
// alive until stdin closes, so a tracer can walk its heap. A lookup table built before the
// measured phase (main.lookup) is retained too, but by design, and was not allocated while traced.
// See TRUTH.md.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"

	"maptrace/go-targets/internal/protocol"
)

// Session is what the leak keeps: a small header and a buffer it points to.
type Session struct {
	ID  int
	Buf []byte
}

// sessions holds every session ever opened: the leak.
var sessions = map[int]*Session{}

// lookup is a fixed table made at start-up: held for the whole run, and expected to be.
var lookup []string

// Record is what a worker batches.
type Record struct {
	ID, Size int64
}

// never is never closed: the workers wait on it for ever.
var never = make(chan struct{})

// makeBatch returns a fresh batch of n records.
//
//go:noinline
func makeBatch(n int) []Record {
	return make([]Record, n)
}

// startWorker hands a new batch to a goroutine that blocks for ever, holding it.
//
//go:noinline
func startWorker(n int) {
	batch := makeBatch(n)
	go func() {
		<-never
		runtime.KeepAlive(batch)
	}()
}

// openSessions opens n sessions with ids from, from+1, … and a size-byte buffer each.
//
//go:noinline
func openSessions(from, n, size int) {
	for i := from; i < from+n; i++ {
		sessions[i] = &Session{ID: i, Buf: make([]byte, size)}
	}
}

func main() {
	rounds := flag.Int("rounds", 5, "rounds; each opens -per-round sessions and runs one GC cycle")
	perRound := flag.Int("per-round", 20, "sessions opened per round")
	size := flag.Int("size", 4096, "bytes of each session's buffer")
	settle := flag.Int("settle", 2, "extra GC cycles after the last round")
	idle := flag.Int("idle", 0, "goroutines parked for good before ready, holding nothing (a program of many goroutines)")
	flag.Parse()
	if *rounds < 1 || *perRound < 1 || *size < 1 || *settle < 0 || *idle < 0 {
		fmt.Fprintln(os.Stderr, "holders: -rounds, -per-round and -size must be >= 1, -settle and -idle >= 0")
		os.Exit(2)
	}
	park := make(chan struct{})
	for i := 0; i < *idle; i++ {
		go func() { <-park }()
	}
	for i := 0; i < 256; i++ {
		lookup = append(lookup, fmt.Sprintf("entry-%d", i))
	}
	done := make([]byte, 0, protocol.DoneBufSize)
	protocol.Settle()

	protocol.Ready()
	protocol.WaitLine()

	for r := 0; r < *rounds; r++ {
		openSessions(r**perRound, *perRound, *size)
		startWorker(64)
		runtime.GC()
	}
	for i := 0; i < *settle; i++ {
		runtime.GC()
	}
	protocol.Done(done,
		protocol.Field{Key: "sessions", Val: int64(len(sessions))},
		protocol.Field{Key: "lookup", Val: int64(len(lookup))},
		protocol.Field{Key: "gcs", Val: int64(*rounds + *settle)})
	// Linger until stdin closes: the tracer walks the heap of a live process.
	protocol.WaitLine()
	runtime.KeepAlive(lookup)
}
