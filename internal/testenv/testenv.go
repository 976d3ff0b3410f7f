// Package testenv holds the one rule of caddy-failover's tests about what
// they need from the machine: on CI (the environment variable CI set to
// anything) a missing tool fails the test, because .ci/run installs every
// tool the tests need; elsewhere the test is skipped, saying what to
// install.
package testenv

import (
	"fmt"
	"os"
	"testing"
)

// CI reports whether the tests run on CI: CI is set and not empty.
func CI() bool { return os.Getenv("CI") != "" }

// Missing ends the test because something it needs is not there: a failure
// on CI, a skip elsewhere. The message says what is missing and how to
// install it.
func Missing(tb testing.TB, format string, args ...any) {
	tb.Helper()
	msg := fmt.Sprintf(format, args...)
	if CI() {
		tb.Fatalf("%s (CI is set: .ci/run must install it)", msg)
		return
	}
	tb.Skipf("%s; skipped (on CI, with CI set, this fails instead)", msg)
}
