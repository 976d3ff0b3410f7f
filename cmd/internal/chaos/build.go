package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// ModuleRoot returns the directory of the nearest go.mod at or above the
// working directory: the module root when run by `go run` or `go test`
// anywhere inside the module.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("chaos: no go.mod at or above the working directory")
		}
		dir = parent
	}
}

// BuildBinary runs `go build -o outPath pkg` in the module root, so pkg is a
// path like "./cmd/caddy". The go command is looked up in PATH; `go run` and
// `go test` put the go that runs them first in PATH. The error carries the
// compiler's output.
func BuildBinary(ctx context.Context, pkg, outPath string) error {
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	out, err := filepath.Abs(outPath)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = root
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("chaos: go build %s: %w\n%s", pkg, err, buf.Bytes())
	}
	return nil
}

// FreePorts returns n distinct TCP ports on 127.0.0.1 that were free when it
// looked: it binds n listeners at once, notes their ports and closes them.
//
// The ports are drawn at random from outside the kernel's ephemeral range
// (on Linux, net.ipv4.ip_local_port_range), so the source port of some
// outgoing connection, in this process or another, cannot take one before the
// caller binds it. Another process binding that very port in between is still
// possible, but unlikely. Without a known range it falls back to ports the
// kernel picks.
func FreePorts(n int) ([]int, error) {
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
			return nil, fmt.Errorf("chaos: finding a free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// minPort is the lowest port FreePorts picks itself: above the well-known
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
