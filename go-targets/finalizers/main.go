// Command finalizers has one scenario per way a finalizer can fail to run (see TRUTH.md), and a
// control where every finalizer runs. After the stdin line it runs -scenario, forces GC cycles
// (runtime.GC, so they are deterministic), gives the finalizer goroutine time to work, prints
// its done line, then stays alive until stdin closes, so a tracer can still read its state.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"maptrace/go-targets/internal/protocol"
)

// Resource is what the finalizers are set on: 32 bytes with a pointer (never a tiny object).
type Resource struct {
	id   int64
	name *string
	buf  []byte
}

var (
	// registry keeps "held" resources reachable forever: their finalizers can never run.
	registry = map[int64]*Resource{}
	// ran counts finalizers that ran (atomically: they run on the finalizer goroutine).
	ran atomic.Int64
	// block is never closed: blockingFinalizer waits on it forever.
	block = make(chan struct{})
	// tinyKeep keeps alive the tiny values that share a 16-byte block with a finalized one.
	tinyKeep []*int64
	// scenarios by -scenario name (cleanups.go adds the cleanup ones on Go 1.24+).
	scenarios = map[string]func(int){
		"held": openHeld, "cycle": openCycles, "blocked": openBlocked, "tiny": openTiny, "all": openAll, "allrun": dropFinalized,
	}
)

func finalize(r *Resource) { ran.Add(1) }

// blockingFinalizer never returns, and every finalizer queued after it waits behind it.
func blockingFinalizer(r *Resource) {
	ran.Add(1)
	<-block
}

func finalizeTiny(p *int64) { ran.Add(1) }

// openHeld registers n finalizers on resources the registry keeps reachable.
//
//go:noinline
func openHeld(n int) {
	for i := 0; i < n; i++ {
		r := &Resource{id: int64(i)}
		runtime.SetFinalizer(r, finalize)
		registry[r.id] = r
	}
}

// openCycles registers n finalizers whose closure refers to the resource itself: the resource is
// reachable from its own finalizer, so it is never collected and the finalizer never runs.
//
//go:noinline
func openCycles(n int) {
	for i := 0; i < n; i++ {
		r := &Resource{id: int64(i)}
		runtime.SetFinalizer(r, func(*Resource) { ran.Add(r.id) })
	}
}

// openBlocked registers one finalizer that blocks forever, drops the resource, and lets it start;
// then n more resources with ordinary finalizers are dropped: they are queued behind it.
//
//go:noinline
func openBlocked(n int) {
	first := &Resource{id: -1}
	runtime.SetFinalizer(first, blockingFinalizer)
	first = nil
	runtime.GC()
	for i := 0; i < 100 && ran.Load() == 0; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	dropFinalized(n)
}

// dropFinalized registers n finalizers on resources that are unreachable at once.
//
//go:noinline
func dropFinalized(n int) {
	for i := 0; i < n; i++ {
		r := &Resource{id: int64(i)}
		runtime.SetFinalizer(r, finalize)
	}
}

// openTiny registers n finalizers on 8-byte pointer-free values (tiny allocations: two share a
// 16-byte block), each allocated between values kept in main.tinyKeep. With 8-byte values every
// block the loop touches holds two of its values, so each finalized value shares its block with
// a kept one (a preceding filler, or its own neighbour), whatever the allocator's state.
//
//go:noinline
func openTiny(n int) {
	tinyKeep = append(tinyKeep, new(int64))
	for i := 0; i < n; i++ {
		p := new(int64)
		*p = int64(i)
		runtime.SetFinalizer(p, finalizeTiny)
		tinyKeep = append(tinyKeep, new(int64))
	}
}

// openAll runs held, cycle, tiny and blocked, in that order, n finalizers each (blocked last: it
// stops the finalizer goroutine, which the others never need).
func openAll(n int) {
	openHeld(n)
	openCycles(n)
	openTiny(n)
	openBlocked(n)
}

func main() {
	scenario := flag.String("scenario", "allrun", "held, cycle, blocked, tiny, all (those four together) or allrun (the control); cheld, ccycle, cblocked, call, callrun: the same with cleanups (Go 1.24+)")
	n := flag.Int("n", 10, "finalizers the scenario registers")
	cycles := flag.Int("cycles", 4, "GC cycles forced after the scenario")
	flag.Parse()
	run, ok := scenarios[*scenario]
	if !ok || *n < 1 || *cycles < 0 {
		fmt.Fprintln(os.Stderr, "finalizers: -scenario must be one of TRUTH.md's (cleanup ones need Go 1.24+); -n >= 1; -cycles >= 0")
		os.Exit(2)
	}
	// Go 1.25+ runs cleanups on max(GOMAXPROCS/4, 1) goroutines: one, so that a blocked cleanup
	// holds up every cleanup queued after it (1.24 runs them on the finalizer goroutine).
	if runtime.GOMAXPROCS(0) > 4 {
		runtime.GOMAXPROCS(4)
	}
	tinyKeep = make([]*int64, 0, *n+1)
	done := make([]byte, 0, protocol.DoneBufSize)
	protocol.Settle()

	protocol.Ready()
	protocol.WaitLine()

	run(*n)
	for i := 0; i < *cycles; i++ {
		runtime.GC()
		time.Sleep(50 * time.Millisecond) // the finalizer goroutine runs what the cycle queued
	}
	protocol.Done(done, protocol.Field{Key: "registered", Val: int64(*n)}, protocol.Field{Key: "ran", Val: ran.Load()})
	io.Copy(io.Discard, os.Stdin) // linger until stdin closes
}
