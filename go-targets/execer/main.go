// Command execer is a Go process that stops being one: after the stdin line it replaces itself
// (execve) with `/bin/sleep 30`. The PID stays, the binary changes: a tracer must drop it.
package main

import (
	"fmt"
	"os"
	"syscall"

	"maptrace/go-targets/internal/protocol"
)

func main() {
	protocol.Ready()
	protocol.WaitLine()
	err := syscall.Exec("/bin/sleep", []string{"sleep", "30"}, os.Environ())
	fmt.Fprintln(os.Stderr, "execer:", err)
	os.Exit(1)
}
