// Command allocbench is the allocation benchmark of `cargo xtask bench`: after the stdin line,
// -goroutines goroutines each repeat one operation (a small object, a small map with four keys,
// a slice grown by append to 16 elements) for -duration, then it prints
// `done ops=N nanos=T mallocs=M memprofilerate=R` and exits: operations done, the wall time they
// took, heap allocations in that time (runtime.MemStats.Mallocs, read before and after), and
// runtime.MemProfileRate at the end (a tracer that changed it must have put it back). Nothing is
// retained beyond one result per goroutine.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"maptrace/go-targets/internal/protocol"
)

type node struct {
	id   int64
	next *node
	tag  [16]byte
}

// result keeps each goroutine's last values reachable, so the compiler cannot drop them.
type result struct {
	n *node
	m map[int]int
	s []int64
	_ [40]byte // one cache line per goroutine
}

var results []result

//go:noinline
func op(r *result, i int) {
	r.n = &node{id: int64(i), next: r.n}
	r.n.next = nil
	m := make(map[int]int, 4)
	for k := 0; k < 4; k++ {
		m[k] = i
	}
	r.m = m
	var s []int64
	for k := 0; k < 16; k++ {
		s = append(s, int64(k))
	}
	r.s = s
}

func main() {
	goroutines := flag.Int("goroutines", 4, "goroutines allocating at once")
	duration := flag.Duration("duration", 2*time.Second, "how long they allocate")
	profileRate := flag.Int("memprofilerate", 0, "runtime.MemProfileRate to run with (0: the heap profiler off, as in a program that never uses it)")
	flag.Parse()
	runtime.MemProfileRate = *profileRate
	if *goroutines < 1 || *duration <= 0 {
		fmt.Fprintln(os.Stderr, "allocbench: -goroutines >= 1, -duration > 0")
		os.Exit(2)
	}
	results = make([]result, *goroutines)
	done := make([]byte, 0, protocol.DoneBufSize)
	var before, after runtime.MemStats
	protocol.Ready()
	protocol.WaitLine()

	runtime.ReadMemStats(&before)
	var ops atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	start := time.Now()
	for g := 0; g < *goroutines; g++ {
		wg.Add(1)
		go func(r *result) {
			defer wg.Done()
			n := 0
			for !stop.Load() {
				op(r, n)
				n++
			}
			ops.Add(int64(n))
		}(&results[g])
	}
	time.Sleep(*duration)
	stop.Store(true)
	wg.Wait()
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	protocol.Done(done,
		protocol.Field{Key: "ops", Val: ops.Load()},
		protocol.Field{Key: "nanos", Val: elapsed.Nanoseconds()},
		protocol.Field{Key: "mallocs", Val: int64(after.Mallocs - before.Mallocs)},
		protocol.Field{Key: "memprofilerate", Val: int64(runtime.MemProfileRate)})
}
