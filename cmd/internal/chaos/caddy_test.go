package chaos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCaddyfile(t *testing.T) {
	got := Caddyfile("127.0.0.1:2019", 8080, "reverse_proxy a b {\n\tlb_policy first\n}\n")
	want := "{\n\tadmin 127.0.0.1:2019\n\tauto_https off\n\tpersist_config off\n\tdefault_bind 127.0.0.1\n\tgrace_period 10s\n}\n\n" +
		"http://127.0.0.1:8080 {\n\treverse_proxy a b {\n\t\tlb_policy first\n\t}\n}\n"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	if a, err := adminAddr(got); err != nil || a != "127.0.0.1:2019" {
		t.Fatalf("adminAddr = %q, %v", a, err)
	}
	if _, err := adminAddr("{\n\tadmin off\n}\n"); err == nil {
		t.Fatal("admin off accepted")
	}
}

func TestListenAddrs(t *testing.T) {
	got, err := listenAddrs([]byte(`{"apps":{"http":{"servers":{"srv0":{"listen":[":80","tcp/127.0.0.1:81-83","udp/:443","[::1]:84"]}}}}}`))
	if err != nil || fmt.Sprint(got) != "[127.0.0.1:80 127.0.0.1:81 [::1]:84]" {
		t.Fatalf("listenAddrs = %v, %v", got, err)
	}
}

// TestCaddy runs a real Caddy in front of two backends: the binary in
// CHAOS_CADDY_BIN if set, else one it builds from ./cmd/caddy (which takes
// a while the first time; -short skips it).
func TestCaddy(t *testing.T) {
	bin := os.Getenv("CHAOS_CADDY_BIN")
	if bin == "" {
		if testing.Short() {
			t.Skip("-short: builds ./cmd/caddy (or set CHAOS_CADDY_BIN to a caddy built from it)")
		}
		bin = filepath.Join(t.TempDir(), "caddy")
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
		defer cancel()
		if err := BuildBinary(ctx, "./cmd/caddy", bin); err != nil {
			t.Fatal(err)
		}
	}
	bs, _ := startBackends(t, 2)
	ports, err := FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	admin := fmt.Sprintf("127.0.0.1:%d", ports[0])
	dir := t.TempDir()
	c, err := StartCaddy(t.Context(), bin, Caddyfile(admin, ports[1], "reverse_proxy "+bs[0].Config().Addr), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.URL() != fmt.Sprintf("http://127.0.0.1:%d", ports[1]) || c.Admin() != admin {
		t.Fatalf("URL %s admin %s", c.URL(), c.Admin())
	}
	code, body, err := call(testClient, "GET", c.URL()+"/work", "")
	if err != nil || code != 200 || !strings.Contains(body, "backend=b1") {
		t.Fatalf("GET via caddy = %d %q %v", code, body, err)
	}

	if err := c.Reload(Caddyfile(admin, ports[1], "reverse_proxy "+bs[1].Config().Addr)); err != nil {
		t.Fatal(err)
	}
	code, body, err = call(testClient, "GET", c.URL()+"/work", "")
	if err != nil || code != 200 || !strings.Contains(body, "backend=b2") {
		t.Fatalf("GET via caddy after reload = %d %q %v", code, body, err)
	}

	// Caddy stays out of the real home.
	for _, d := range []string{"home", "xdg_data_home", "xdg_config_home"} {
		if _, err := os.Stat(filepath.Join(dir, d)); err != nil {
			t.Error(err)
		}
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Exited():
	default:
		t.Fatal("caddy still running after Stop")
	}
	if !strings.Contains(c.Logs(), "serving initial configuration") {
		t.Errorf("logs:\n%s", c.Logs())
	}
}
