// Package freeport finds free TCP ports on the loopback address, for the
// tests, the chaos tools and the demo: the one such helper in
// caddy-failover.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// Ports returns n distinct TCP ports on 127.0.0.1 that were free when it
// looked: it binds n listeners at once, notes their ports and closes them.
//
// The ports are drawn at random from outside the kernel's ephemeral range
// (on Linux, net.ipv4.ip_local_port_range), so the source port of some
// outgoing connection, in this process or another, cannot take one before the
// caller binds it. Another process binding that very port in between is still
// possible, but unlikely. Without a known range it falls back to ports the
// kernel picks.
func Ports(n int) ([]int, error) {
	ports := make([]int, 0, n)
	lns := make([]net.Listener, 0, n)
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	lo, hi := ephemeralRange()
	for attempt := 0; len(ports) < n; attempt++ {
		port := 0 // the kernel picks
		if attempt < 100*n && lo > minPort {
			if port = minPort + rand.IntN(lo-minPort+65535-hi); port >= lo {
				port += hi - lo + 1
			}
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			if port != 0 {
				continue // taken; try another
			}
			return nil, fmt.Errorf("freeport: finding a free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// minPort is the lowest port Ports picks itself: above the well-known
// and commonly used low ports.
const minPort = 10000

// ephemeralRange returns the kernel's range for outgoing source ports, or
// (0, 0) if unknown.
func ephemeralRange() (lo, hi int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || lo > hi || hi > 65535 {
		return 0, 0
	}
	return lo, hi
}
