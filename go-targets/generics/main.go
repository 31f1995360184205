// Command generics allocates from one generic function instantiated with anonymous struct types whose
// struct tags hold the characters an exposition format has to escape: the compiler names each
// instantiation after its type argument's GC shape, tags spelled out, so the function names in the
// binary hold double quotes, backslashes and (in the wide case) more than 512 bytes. A tracer that
// writes such a name into a label, a report or a terminal must keep it intact and well-formed. After
// the stdin line main.keep runs N times with `tagged`, 2N with `pattern`, 3N with `escape` and 4N
// with `wide`, each call keeping one heap object, makes one int from main.main, then runs -gcs GC
// cycles, so that every object is retained; after its done line the program stays alive until stdin closes, so a tracer can read its
// heap and an agent can be scraped. See TRUTH.md.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"

	"maptrace/go-targets/internal/protocol"
)

// The type arguments. Aliases keep them anonymous: the allocated type's name is the struct literal
// itself, tags included, as the function's name is.

// tagged is the everyday case: JSON tags, so its name holds `"` (escaped as \" inside the quoted tag).
type tagged = struct {
	ID   int    `json:"id"`
	Name string `json:"name,omitempty"`
}

// pattern's tag holds backslashes (a regular expression), doubled in the quoted tag.
type pattern = struct {
	Expr string `re:"^\d+\.\d+$"`
}

// escape's tag is an interpreted string holding an ESC byte and a newline: the compiler quotes tags in
// names, so the names hold the text \x1b and \n, never the raw bytes.
type escape = struct {
	Label string "term:\"\x1b[2J\"\nnext"
}

// wide's name runs past 512 bytes: twelve tagged fields.
type wide = struct {
	Alpha   string `json:"alpha_field_with_a_long_name,omitempty" yaml:"alpha"`
	Bravo   string `json:"bravo_field_with_a_long_name,omitempty" yaml:"bravo"`
	Charlie string `json:"charlie_field_with_a_long_name,omitempty" yaml:"charlie"`
	Delta   string `json:"delta_field_with_a_long_name,omitempty" yaml:"delta"`
	Echo    string `json:"echo_field_with_a_long_name,omitempty" yaml:"echo"`
	Foxtrot string `json:"foxtrot_field_with_a_long_name,omitempty" yaml:"foxtrot"`
	Golf    string `json:"golf_field_with_a_long_name,omitempty" yaml:"golf"`
	Hotel   string `json:"hotel_field_with_a_long_name,omitempty" yaml:"hotel"`
	India   string `json:"india_field_with_a_long_name,omitempty" yaml:"india"`
	Juliett string `json:"juliett_field_with_a_long_name,omitempty" yaml:"juliett"`
	Kilo    string `json:"kilo_field_with_a_long_name,omitempty" yaml:"kilo"`
	Lima    string `json:"lima_field_with_a_long_name,omitempty" yaml:"lima"`
}

// The sinks keep every object alive; made before ready, so storing into them allocates nothing.
var (
	taggedSink  []*tagged
	patternSink []*pattern
	escapeSink  []*escape
	wideSink    []*wide
)

// end is made by main.main after the last keep. A tracer that learns a frame has returned from the
// goroutine's next stack needs this next record: without it, the last keep's frame would look active
// until exit on the releases whose runtime.GC allocates nothing on the calling goroutine (up to 1.22).
var end *int

// keep returns a heap copy of v: one allocation per call, made in the instantiation for T's shape.
// new(T) takes T's type from the instantiation's dictionary, so from Go 1.21 the object's type is the
// type argument itself (Go 1.19 allocates it as the shape type).
//
//go:noinline
func keep[T any](v T) *T {
	p := new(T)
	*p = v
	return p
}

func main() {
	n := flag.Int("n", 100, "keep[tagged] runs N times, keep[pattern] 2N, keep[escape] 3N, keep[wide] 4N")
	gcs := flag.Int("gcs", 2, "GC cycles after the allocations")
	flag.Parse()
	if *n < 1 || *gcs < 0 {
		fmt.Fprintln(os.Stderr, "generics: -n must be >= 1, -gcs >= 0")
		os.Exit(2)
	}
	taggedSink = make([]*tagged, *n)
	patternSink = make([]*pattern, 2**n)
	escapeSink = make([]*escape, 3**n)
	wideSink = make([]*wide, 4**n)
	done := make([]byte, 0, protocol.DoneBufSize)
	protocol.Settle()

	protocol.Ready()
	protocol.WaitLine()

	for i := range taggedSink {
		taggedSink[i] = keep(tagged{ID: i})
	}
	for i := range patternSink {
		patternSink[i] = keep(pattern{})
	}
	for i := range escapeSink {
		escapeSink[i] = keep(escape{})
	}
	for i := range wideSink {
		wideSink[i] = keep(wide{})
	}
	end = new(int)
	for i := 0; i < *gcs; i++ {
		runtime.GC()
	}
	protocol.Done(done,
		protocol.Field{Key: "tagged", Val: int64(len(taggedSink))},
		protocol.Field{Key: "pattern", Val: int64(len(patternSink))},
		protocol.Field{Key: "escape", Val: int64(len(escapeSink))},
		protocol.Field{Key: "wide", Val: int64(len(wideSink))},
		protocol.Field{Key: "gcs", Val: int64(*gcs)})
	// Linger until stdin closes: a tracer can walk the heap, an agent be scraped.
	protocol.WaitLine()
	runtime.KeepAlive(taggedSink)
	runtime.KeepAlive(patternSink)
	runtime.KeepAlive(escapeSink)
	runtime.KeepAlive(wideSink)
	runtime.KeepAlive(end)
}
