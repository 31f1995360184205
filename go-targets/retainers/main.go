// Command retainers is the "who keeps it" target: one scenario per way a small value keeps a big one
// alive, each made by its own function. Every round, main.loadHeader keeps a 16-byte sub-slice of a fresh
// 1 MiB array in the package-level slice main.headers (the whole array stays alive), and main.newTenant
// appends a *Tenant to main.tenants whose field chain Tenant.Account → Account.Profile → Profile.Avatar
// ends at an 8 KiB buffer; then a GC cycle runs. In round 0 only, main.fillIndex builds the map
// main.index with 10000 keys and deletes all but 10 (its storage stays sized for 10000), and
// main.buildTable builds the 512-entry map main.table, never changed again (the control: retained by
// design, stable). After its done line it stays alive until stdin closes, so a tracer can walk its
// heap. See TRUTH.md.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"

	"maptrace/go-targets/internal/protocol"
)

// headers holds a 16-byte header of every loaded blob: each one keeps its whole 1 MiB array alive.
var headers [][]byte

// Tenant, Account and Profile are the field chain main.tenants → Tenant.Account → Account.Profile →
// Profile.Avatar. Offsets on 64-bit: Tenant.Account +16, Account.Profile +8, Profile.Avatar +8.
type Tenant struct {
	Name    string
	Account *Account
}

type Account struct {
	ID      int
	Profile *Profile
}

type Profile struct {
	Score  int
	Avatar []byte
}

// tenants holds every tenant ever made: each keeps its account, profile and 8 KiB avatar alive.
var tenants []*Tenant

// index had 10000 keys; all but 10 were deleted, but its storage is still sized for 10000.
var index map[int]int

// table is a fixed table made once: held for the whole run, and expected to be.
var table map[string]int

const (
	blobSize    = 1 << 20
	headerSize  = 16
	avatarSize  = 8192
	indexFilled = 10000
	indexKept   = 10
	tableSize   = 512
)

// loadHeader reads a 1 MiB blob and keeps only its first 16 bytes, as a sub-slice of the blob.
//
//go:noinline
func loadHeader(r int) {
	data := make([]byte, blobSize)
	copy(data, "HDR")
	data[3] = byte(r)
	headers = append(headers, data[:headerSize])
}

// newTenant makes a tenant with an account, a profile and an 8 KiB avatar, and keeps it.
//
//go:noinline
func newTenant(r int) {
	p := &Profile{Score: r, Avatar: make([]byte, avatarSize)}
	a := &Account{ID: r, Profile: p}
	t := &Tenant{Name: "tenant", Account: a}
	tenants = append(tenants, t)
}

// fillIndex fills main.index with 10000 keys, then deletes all but 10: a map never shrinks.
//
//go:noinline
func fillIndex() {
	index = make(map[int]int)
	for i := 0; i < indexFilled; i++ {
		index[i] = i
	}
	for i := indexKept; i < indexFilled; i++ {
		delete(index, i)
	}
}

// buildTable fills main.table with the keys "k0" … "k511": each key is one string allocation.
//
//go:noinline
func buildTable() {
	table = make(map[string]int, tableSize)
	var kb [8]byte
	for i := 0; i < tableSize; i++ {
		b := strconv.AppendInt(append(kb[:0], 'k'), int64(i), 10)
		table[string(b)] = i
	}
}

func main() {
	rounds := flag.Int("rounds", 5, "rounds; each keeps a header and a tenant and runs one GC cycle")
	settle := flag.Int("settle", 2, "extra GC cycles after the last round")
	flag.Parse()
	if *rounds < 1 || *settle < 0 {
		fmt.Fprintln(os.Stderr, "retainers: -rounds must be >= 1, -settle >= 0")
		os.Exit(2)
	}
	done := make([]byte, 0, protocol.DoneBufSize)
	protocol.Settle()

	protocol.Ready()
	protocol.WaitLine()

	for r := 0; r < *rounds; r++ {
		loadHeader(r)
		newTenant(r)
		if r == 0 {
			fillIndex()
			buildTable()
		}
		runtime.GC()
	}
	for i := 0; i < *settle; i++ {
		runtime.GC()
	}
	protocol.Done(done,
		protocol.Field{Key: "headers", Val: int64(len(headers))},
		protocol.Field{Key: "tenants", Val: int64(len(tenants))},
		protocol.Field{Key: "index", Val: int64(len(index))},
		protocol.Field{Key: "table", Val: int64(len(table))},
		protocol.Field{Key: "gcs", Val: int64(*rounds + *settle)})
	// Linger until stdin closes: the tracer walks the heap of a live process.
	protocol.WaitLine()
	runtime.KeepAlive(headers)
	runtime.KeepAlive(tenants)
	runtime.KeepAlive(index)
	runtime.KeepAlive(table)
}
