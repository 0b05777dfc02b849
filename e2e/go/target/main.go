// gotarget: the Go program ringwarden's Go tests trace (e2e/tests/go.rs).
//
// It prints "ready", waits for a line on stdin, runs one workload, prints
// one JSON report of what it did, measured by itself, and exits. Every
// traced function is kept out of line so it has an address of its own.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Server has a method, so tests can trace main.(*Server).handle.
type Server struct{ calls int64 }

var sink int64

//go:noinline
func spin(n int) int64 {
	var x int64
	for i := 0; i < n; i++ {
		x += int64(i) ^ x>>3
	}
	return x
}

// work is the timed function: some CPU, then a way of leaving the thread
// (sleep parks the goroutine, Gosched requeues it), so calls migrate.
//
//go:noinline
func work(i int, moved *int64) int64 {
	before := syscall.Gettid()
	x := spin(2000)
	switch i % 3 {
	case 0:
		time.Sleep(200 * time.Microsecond)
	case 1:
		runtime.Gosched()
		time.Sleep(50 * time.Microsecond)
	default:
		x += spin(8000)
	}
	if syscall.Gettid() != before {
		*moved++
	}
	return x
}

//go:noinline
func (s *Server) handle(n int) int {
	s.calls++
	sink += spin(1000)
	return n + 1
}

// recurse calls itself depth times: each level is a call of its own.
//
//go:noinline
func recurse(depth int) int {
	if depth <= 1 {
		return 1
	}
	return recurse(depth-1) + 1
}

// grow has a frame of 16 KiB: a fresh goroutine (8 KiB stack) must grow
// its stack, copying it, on the first call and again further down.
//
//go:noinline
func grow(depth int) int {
	var buf [16 << 10]byte
	buf[depth%len(buf)] = byte(depth)
	if depth <= 1 {
		return int(buf[1])
	}
	return grow(depth-1) + int(buf[depth%len(buf)])
}

var errOdd = errors.New("odd")

// mayPanic panics for odd i, so the call never returns.
//
//go:noinline
func mayPanic(i int) int {
	if i%2 == 1 {
		panic(errOdd)
	}
	return i
}

// exitEarly ends its goroutine without returning when i is a multiple of 4.
//
//go:noinline
func exitEarly(i int) int {
	if i%4 == 0 {
		runtime.Goexit()
	}
	return i
}

// blockOn waits on a channel: the goroutine sleeps across the call while
// others run on its thread.
//
//go:noinline
func blockOn(ch chan int) int {
	return <-ch
}

// add is the benchmark's traced function: a leaf, so the probes' cost is
// all there is to measure.
//
//go:noinline
func add(a, b int) int {
	return a + b
}

// bench calls add n times and reports the mean time per call.
func bench(n int) report {
	start := time.Now()
	var s int
	for i := 0; i < n; i++ {
		s = add(s, i)
	}
	elapsed := time.Since(start)
	sink += int64(s)
	return report{"calls": n, "ns_per_call": float64(elapsed.Nanoseconds()) / float64(n)}
}

type report map[string]any

func calls(goroutines, perGoroutine int) report {
	var wg sync.WaitGroup
	durations := make([][]int64, goroutines)
	moved := make([]int64, goroutines)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			d := make([]int64, 0, perGoroutine)
			for i := 0; i < perGoroutine; i++ {
				start := time.Now()
				sink += work(i, &moved[g])
				d = append(d, int64(time.Since(start)))
			}
			durations[g] = d
		}(g)
	}
	wg.Wait()
	var all []int64
	var totalMoved int64
	for g := range durations {
		all = append(all, durations[g]...)
		totalMoved += moved[g]
	}
	s := &Server{}
	for i := 0; i < 1000; i++ {
		s.handle(i)
	}
	return report{"calls": len(all), "durations_ns": all, "migrated": totalMoved, "handled": s.calls}
}

func hostile(rounds int) report {
	out := report{}
	// Recursion 5 deep and 20 deep.
	sum := 0
	for r := 0; r < rounds; r++ {
		sum += recurse(5) + recurse(20)
	}
	out["recurse_sum"] = sum
	// Stack growth on fresh goroutines.
	grown := 0
	for r := 0; r < rounds; r++ {
		ch := make(chan int)
		go func() { ch <- grow(6) }()
		grown += <-ch
	}
	out["grow_sum"] = grown
	// Recovered panics.
	recovered, returned := 0, 0
	for i := 0; i < 2*rounds; i++ {
		func() {
			defer func() {
				if r := recover(); r != nil {
					recovered++
				}
			}()
			returned += mayPanic(i)
		}()
	}
	out["recovered"] = recovered
	out["returned_sum"] = returned
	// Goexit from inside the traced function.
	var wg sync.WaitGroup
	var mu sync.Mutex
	exited, finished := 0, 0
	for i := 0; i < 4*rounds; i++ {
		wg.Add(1)
		go func(i int) {
			done := false
			defer func() {
				mu.Lock()
				if done {
					finished++
				} else {
					exited++
				}
				mu.Unlock()
				wg.Done()
			}()
			exitEarly(i)
			done = true
		}(i)
	}
	wg.Wait()
	out["goexited"] = exited
	out["finished"] = finished
	// Goroutines blocked across the call while others run.
	chans := make([]chan int, rounds)
	results := make(chan int, rounds)
	for i := range chans {
		chans[i] = make(chan int)
		go func(ch chan int) { results <- blockOn(ch) }(chans[i])
	}
	spin(1000000)
	time.Sleep(20 * time.Millisecond)
	for i, ch := range chans {
		ch <- i
	}
	blocked := 0
	for range chans {
		blocked += <-results
	}
	out["blocked_sum"] = blocked
	return out
}

// gc forces collections and stops with the collector off otherwise, and
// reads what the runtime itself measured of them.
func gc(cycles, memstats int) report {
	names := []string{"/gc/cycles/total:gc-cycles", "/gc/pauses:seconds"}
	samples := make([]metrics.Sample, len(names))
	for i, n := range names {
		samples[i].Name = n
	}
	metrics.Read(samples)
	cyclesBefore := samples[0].Value.Uint64()
	pausesBefore := counts(samples[1].Value.Float64Histogram())
	var ms runtime.MemStats
	for i := 0; i < cycles; i++ {
		sink += spin(100000)
		runtime.GC()
		if i < memstats {
			runtime.ReadMemStats(&ms)
		}
	}
	metrics.Read(samples)
	h := samples[1].Value.Float64Histogram()
	after := counts(h)
	// The pauses of this run: the histogram's difference, as bucket bounds.
	var lows, highs []float64
	var n []uint64
	for i := range after {
		if d := after[i] - pausesBefore[i]; d > 0 {
			lows = append(lows, h.Buckets[i])
			highs = append(highs, h.Buckets[i+1])
			n = append(n, d)
		}
	}
	return report{
		"cycles":     samples[0].Value.Uint64() - cyclesBefore,
		"memstats":   memstats,
		"pause_low":  lows,
		"pause_high": highs,
		"pause_n":    n,
	}
}

func counts(h *metrics.Float64Histogram) []uint64 {
	return append([]uint64(nil), h.Counts...)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gotarget calls G N | hostile ROUNDS | gc CYCLES MEMSTATS | bench N")
		os.Exit(2)
	}
	arg := func(i int) int {
		v, err := strconv.Atoi(os.Args[i])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		return v
	}
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		os.Exit(3)
	}
	var out report
	switch os.Args[1] {
	case "calls":
		out = calls(arg(2), arg(3))
	case "hostile":
		out = hostile(arg(2))
	case "gc":
		out = gc(arg(2), arg(3))
	case "bench":
		out = bench(arg(2))
	default:
		os.Exit(2)
	}
	out["pid"] = os.Getpid()
	out["gomaxprocs"] = runtime.GOMAXPROCS(0)
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}
