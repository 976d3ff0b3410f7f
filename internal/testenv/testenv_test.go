package testenv

import (
	"testing"
)

// fakeTB records how Missing ended a test.
type fakeTB struct {
	testing.TB
	fatal, skip string
}

func (f *fakeTB) Helper()                           {}
func (f *fakeTB) Fatalf(format string, args ...any) { f.fatal = format }
func (f *fakeTB) Skipf(format string, args ...any)  { f.skip = format }

func TestMissing(t *testing.T) {
	for _, tc := range []struct {
		ci       string
		wantFail bool
	}{{"", false}, {"true", true}, {"1", true}, {"yes", true}} {
		t.Setenv("CI", tc.ci)
		f := &fakeTB{}
		Missing(f, "supervisord is not installed")
		if got := f.fatal != ""; got != tc.wantFail || (f.skip != "") == tc.wantFail {
			t.Errorf("CI=%q: fatal %q skip %q, want a failure: %v", tc.ci, f.fatal, f.skip, tc.wantFail)
		}
		if CI() != tc.wantFail {
			t.Errorf("CI=%q: CI() = %v", tc.ci, CI())
		}
	}
}
