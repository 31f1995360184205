// Command demo is a small "server" with a leaky session cache, the program `./x demo` traces.
//
// A generator goroutine makes one synthetic request every -interval; a handler goroutine serves it.
// Each request is short-lived garbage (main.newRequest: a *Request and its body). Each request also
// creates a *Session with a buffer (main.newSession) and stores it in the global map main.cache under
// a key that is never reused, and nothing ever evicts: the cache, and the heap, grow without bound.
// See TRUTH.md for what a tracer must report.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"maptrace/go-targets/internal/protocol"
)

// Request is one synthetic request: 40 bytes (size class 48), with a pointer (Body).
type Request struct {
	ID   int64
	User int64
	Body []byte
}

// Session is what the handler caches per request: 64 bytes, with pointers (Key, buf).
type Session struct {
	Key  string
	User int64
	Seq  int64
	Hits int64
	buf  []byte
}

// cache is the leak: every request adds a session under a new key and nothing ever deletes one.
// Only the handler goroutine touches it.
var cache = make(map[string]*Session)

// Counters for the done line, read by main when it stops.
var handled, sessions int64

// newRequest allocates one request and its body (garbage once served).
//
//go:noinline
func newRequest(id int64, bodySize int) *Request {
	r := &Request{ID: id, User: id % 97}
	r.Body = make([]byte, bodySize)
	for i := range r.Body {
		r.Body[i] = byte(id + int64(i))
	}
	return r
}

// generate sends one new request every interval.
func generate(out chan<- *Request, interval time.Duration, bodySize int) {
	t := time.NewTicker(interval)
	for id := int64(1); ; id++ {
		<-t.C
		out <- newRequest(id, bodySize)
	}
}

// sessionKey returns "session-%08d" (16 bytes: one small noscan allocation, above the tiny-allocator
// limit) built in scratch without fmt.
//
//go:noinline
func sessionKey(scratch *[16]byte, id int64) string {
	copy(scratch[:], "session-")
	for i := 15; i >= 8; i-- {
		scratch[i] = byte('0' + id%10)
		id /= 10
	}
	return string(scratch[:])
}

// newSession allocates a session and its buffer; both stay reachable from main.cache forever.
//
//go:noinline
func newSession(key string, user, seq int64, bufSize int) *Session {
	s := &Session{Key: key, User: user, Seq: seq}
	s.buf = make([]byte, bufSize)
	return s
}

// handle serves one request: looks its session up, creates and caches it when missing (always, since
// keys are per request: the bug), and copies the body into the session's buffer.
//
//go:noinline
func handle(req *Request, scratch *[16]byte, bufSize int) {
	key := sessionKey(scratch, req.ID)
	s := cache[key]
	if s == nil {
		s = newSession(key, req.User, req.ID, bufSize)
		cache[key] = s
		atomic.AddInt64(&sessions, 1)
	}
	s.Hits++
	copy(s.buf, req.Body)
	atomic.AddInt64(&handled, 1)
}

func serve(in <-chan *Request, bufSize int) {
	var scratch [16]byte
	for req := range in {
		handle(req, &scratch, bufSize)
	}
}

func main() {
	interval := flag.Duration("interval", 5*time.Millisecond, "time between two synthetic requests")
	duration := flag.Duration("duration", 0, "stop after this long (0: run until SIGINT or SIGTERM)")
	bodySize := flag.Int("body-size", 16384, "bytes of each request body (garbage: sized so that the GC runs about once a second)")
	sessionBuf := flag.Int("session-buf", 1024, "bytes of each session buffer (leaked)")
	flag.Parse()
	if *interval <= 0 || *duration < 0 || *bodySize < 0 || *sessionBuf < 0 {
		fmt.Fprintln(os.Stderr, "demo: -interval must be > 0, the others >= 0")
		os.Exit(2)
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	var timeout <-chan time.Time
	if *duration > 0 {
		timeout = time.After(*duration)
	}

	protocol.Ready()

	reqs := make(chan *Request, 64)
	go generate(reqs, *interval, *bodySize)
	go serve(reqs, *sessionBuf)

	select {
	case <-stop:
	case <-timeout:
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fmt.Printf("done requests=%d sessions=%d mallocs=%d gcs=%d heap_alloc=%d\n",
		atomic.LoadInt64(&handled), atomic.LoadInt64(&sessions), ms.Mallocs, ms.NumGC, ms.HeapAlloc)
}
