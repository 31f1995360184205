//go:build go1.24

// The cleanup variants of the finalizer scenarios (runtime.AddCleanup is Go 1.24+).

package main

import (
	"runtime"
	"time"
)

func init() {
	scenarios["cheld"] = openHeldCleanups
	scenarios["ccycle"] = openCycleCleanups
	scenarios["cblocked"] = openBlockedCleanups
	scenarios["call"] = openAllCleanups
	scenarios["callrun"] = dropCleaned
}

func cleanupDone(id int64) { ran.Add(1) }

// blockingCleanup never returns: the cleanups queued after it wait behind it.
func blockingCleanup(id int64) {
	ran.Add(1)
	<-block
}

// openHeldCleanups registers n cleanups on resources the registry keeps reachable.
//
//go:noinline
func openHeldCleanups(n int) {
	for i := 0; i < n; i++ {
		r := &Resource{id: int64(1000 + i)}
		runtime.AddCleanup(r, cleanupDone, r.id)
		registry[r.id] = r
	}
}

// owner points at a resource.
type owner struct{ r *Resource }

// openCycleCleanups registers n cleanups whose function (main.openCycleCleanups.func1) captures
// an owner of the resource: the resource is reachable from its own cleanup, so it is never
// collected. (A closure capturing the resource itself is refused by AddCleanup since Go 1.26;
// one pointer further is not.)
//
//go:noinline
func openCycleCleanups(n int) {
	for i := 0; i < n; i++ {
		r := &Resource{id: int64(i)}
		o := &owner{r}
		runtime.AddCleanup(r, func(int64) { ran.Add(o.r.id) }, 0)
	}
}

// openBlockedCleanups drops one resource whose cleanup blocks forever and lets it start; then n
// more resources with ordinary cleanups are dropped: they are queued behind it.
//
//go:noinline
func openBlockedCleanups(n int) {
	before := ran.Load()
	first := &Resource{id: -1}
	runtime.AddCleanup(first, blockingCleanup, first.id)
	first = nil
	runtime.GC()
	for i := 0; i < 100 && ran.Load() == before; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	dropCleaned(n)
}

// dropCleaned registers n cleanups on resources that are unreachable at once.
//
//go:noinline
func dropCleaned(n int) {
	for i := 0; i < n; i++ {
		r := &Resource{id: int64(i)}
		runtime.AddCleanup(r, cleanupDone, r.id)
	}
}

// openAllCleanups runs cheld, ccycle and cblocked, n cleanups each (blocked last).
func openAllCleanups(n int) {
	openHeldCleanups(n)
	openCycleCleanups(n)
	openBlockedCleanups(n)
}
