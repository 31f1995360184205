module maptrace/go-targets

// 1.19 is the oldest toolchain we build with (Debian's golang-1.19-go); every newer one accepts it.
go 1.19
