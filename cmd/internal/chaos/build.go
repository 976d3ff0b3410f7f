package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/crashonly/caddy-failover/internal/freeport"
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
// looked, outside the kernel's ephemeral range (see freeport.Ports).
func FreePorts(n int) ([]int, error) { return freeport.Ports(n) }
