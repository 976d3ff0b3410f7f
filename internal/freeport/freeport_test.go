package freeport

import (
	"net"
	"strconv"
	"testing"
)

func TestPorts(t *testing.T) {
	ports, err := Ports(50)
	if err != nil {
		t.Fatal(err)
	}
	if len(ports) != 50 {
		t.Fatalf("got %d ports, want 50", len(ports))
	}
	lo, hi := ephemeralRange()
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] || p <= 0 || p > 65535 || (lo > minPort && p >= lo && p <= hi) {
			t.Fatalf("bad port %d in %v (ephemeral range %d-%d)", p, ports, lo, hi)
		}
		seen[p] = true
	}
	// and they are free: each can be bound now
	for _, p := range ports[:5] {
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("port %d is not free: %v", p, err)
		}
		ln.Close()
	}
}
