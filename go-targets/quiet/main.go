// Command quiet is the control: after the stdin line it sleeps without allocating anything, so a
// tracer attached to it must report no allocation, retention or leak from its measured phase.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"

	"maptrace/go-targets/internal/protocol"
)

var before, after runtime.MemStats

func main() {
	sleep := flag.Duration("sleep", 2*time.Second, "how long the measured phase sleeps")
	memstats := flag.Bool("memstats", false, "append the runtime's own count of the measured phase's heap allocations to the done line (mallocs=, bytes=)")
	flag.Parse()
	if *sleep < 0 {
		fmt.Fprintln(os.Stderr, "quiet: -sleep must be >= 0")
		os.Exit(2)
	}
	done := make([]byte, 0, protocol.DoneBufSize)
	protocol.Settle()

	protocol.Ready()
	protocol.WaitLine()

	if *memstats {
		runtime.ReadMemStats(&before)
	}
	time.Sleep(*sleep)
	if *memstats {
		runtime.ReadMemStats(&after)
		protocol.Done(done,
			protocol.Field{Key: "slept_ms", Val: sleep.Milliseconds()},
			protocol.Field{Key: "mallocs", Val: int64(after.Mallocs - before.Mallocs)},
			protocol.Field{Key: "bytes", Val: int64(after.TotalAlloc - before.TotalAlloc)},
			protocol.Field{Key: "gcs", Val: int64(after.NumGC - before.NumGC)})
		return
	}
	protocol.Done(done, protocol.Field{Key: "slept_ms", Val: sleep.Milliseconds()})
}
