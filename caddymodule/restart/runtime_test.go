//go:build unix

package restart

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/crashonly/caddy-failover/internal/freeport"
)

// TestRunTimeFailures: restarters that fail when they run return an error
// and do not panic.
func TestRunTimeFailures(t *testing.T) {
	ports, err := freeport.Ports(1)
	require.NoError(t, err)
	closed := fmt.Sprintf("127.0.0.1:%d", ports[0])

	dir := t.TempDir()
	for name, raw := range map[string]string{
		"http to a closed port":      `{"restarter": "http", "url": "http://` + closed + `/restart"}`,
		"exec of a missing program":  `{"restarter": "exec", "command": "caddy-failover-no-such-program", "args": ["{port}"]}`,
		"exec of a missing path":     `{"restarter": "exec", "command": "/nonexistent/restart"}`,
		"signal, missing pidfile":    `{"restarter": "signal", "pidfile": "` + dir + `/none-{port}.pid"}`,
		"supervisord, no socket":     `{"restarter": "supervisord", "address": "` + dir + `/none.sock", "process": "b{index}"}`,
		"supervisord, closed port":   `{"restarter": "supervisord", "address": "http://` + closed + `", "process": "b"}`,
		"exec of a non-executable":   `{"restarter": "exec", "command": "` + dir + `"}`,
		"http to a bad placeholder":  `{"restarter": "http", "url": "http://{host}:1/x"}`,
		"http, cancelled at once":    `{"restarter": "http", "url": "http://` + closed + `/", "timeout": 1}`,
		"exec, one-nanosecond limit": `{"restarter": "exec", "command": "true", "timeout": 1}`,
	} {
		t.Run(name, func(t *testing.T) {
			r := mustLoad(t, raw)
			var err error
			require.NotPanics(t, func() {
				err = r.Restart(context.Background(), Target{Backend: "[::1", Index: -1, Reason: "hang"})
			})
			require.Error(t, err)
			t.Log(err)
		})
	}
}
