package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Caddyfile returns a minimal Caddyfile: global options that keep Caddy on
// loopback and away from the user's files, and one plain-HTTP site on
// 127.0.0.1:listenPort whose body is directiveBlock (one or more lines,
// indented one more tab).
//
//	admin <adminAddr>       StartCaddy finds the admin endpoint here
//	auto_https off          plain HTTP, no certificates
//	persist_config off      no autosave.json
//	default_bind 127.0.0.1  listen on loopback only
//	grace_period 10s        reload/stop wait at most this for open requests
//
// The site address carries host 127.0.0.1, so requests must use that host
// (as URLs from Caddy.URL do), not "localhost".
func Caddyfile(adminAddr string, listenPort int, directiveBlock string) string {
	return CaddyfileWithGlobals(adminAddr, listenPort, "", directiveBlock)
}

// CaddyfileWithGlobals is Caddyfile with more global options (one or more
// lines, e.g. a log block) after the fixed ones.
func CaddyfileWithGlobals(adminAddr string, listenPort int, globals, directiveBlock string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "{\n\tadmin %s\n\tauto_https off\n\tpersist_config off\n\tdefault_bind 127.0.0.1\n\tgrace_period 10s\n", adminAddr)
	indent(&b, globals)
	b.WriteString("}\n\n")
	fmt.Fprintf(&b, "http://127.0.0.1:%d {\n", listenPort)
	indent(&b, directiveBlock)
	b.WriteString("}\n")
	return b.String()
}

// indent writes the lines of text, each indented by one more tab.
func indent(b *strings.Builder, text string) {
	for line := range strings.Lines(strings.Trim(text, "\n")) {
		b.WriteString("\t" + strings.TrimRight(line, " \t\r\n") + "\n")
	}
}

// Caddy is a running `caddy run` process. Its stdout and stderr go to
// <dir>/caddy.log.
type Caddy struct {
	bin, dir, file, logPath string
	env                     []string
	p                       *proc

	mu     sync.Mutex
	admin  string   // host:port of the admin endpoint
	listen []string // host:port the HTTP servers listen on
}

// caddyTimeout bounds starting, reloading and stopping Caddy.
const caddyTimeout = 20 * time.Second

var adminRE = regexp.MustCompile(`(?m)^\s*admin\s+(\S+)`)

// adminAddr finds the admin address in a Caddyfile's global options. It must
// be a TCP host:port (Caddyfile produces one).
func adminAddr(caddyfile string) (string, error) {
	m := adminRE.FindStringSubmatch(caddyfile)
	if m == nil || m[1] == "off" || m[1] == "{" {
		return "", errors.New("chaos: the Caddyfile must set `admin 127.0.0.1:PORT` in its global options")
	}
	addr := strings.TrimPrefix(m[1], "tcp/")
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", fmt.Errorf("chaos: admin address %q: %w", m[1], err)
	}
	return addr, nil
}

// StartCaddy writes caddyfileText to <dir>/Caddyfile and runs
// `bin run --config <dir>/Caddyfile --adapter caddyfile` with HOME and the
// XDG_*_HOME variables pointed into dir, so Caddy never touches the real
// home. The admin address is read from the Caddyfile's global `admin` option,
// which is therefore required (see Caddyfile). StartCaddy returns once the
// admin endpoint answers and every address the HTTP servers listen on (read
// from the loaded config) accepts connections, within 20s and ctx. ctx does
// not bound the process's life: end it with Stop or Close. On error nothing
// is left running.
func StartCaddy(ctx context.Context, bin, caddyfileText, dir string) (*Caddy, error) {
	admin, err := adminAddr(caddyfileText)
	if err != nil {
		return nil, err
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, err
	}
	c := &Caddy{bin: bin, dir: dir, file: filepath.Join(dir, "Caddyfile"), logPath: filepath.Join(dir, "caddy.log"), admin: admin}
	env := os.Environ()
	for _, v := range []string{"HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"} {
		d := filepath.Join(dir, strings.ToLower(v))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		env = append(env, v+"="+d) // later entries win in exec
	}
	c.env = env
	if err := os.WriteFile(c.file, []byte(caddyfileText), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(c.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor

	cmd := exec.Command(bin, "run", "--config", c.file, "--adapter", "caddyfile")
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = dir, env, logf, logf
	if c.p, err = startProc(cmd); err != nil {
		return nil, fmt.Errorf("chaos: starting caddy: %w", err)
	}

	ctx, cancel := context.WithTimeout(ctx, caddyTimeout)
	defer cancel()
	if err := c.waitReady(ctx); err != nil {
		c.p.kill()
		return nil, fmt.Errorf("chaos: caddy: %w\n%s", err, tail(c.Logs(), 4096))
	}
	return c, nil
}

// adminClient talks to the admin endpoint; no proxy, no pooling.
var adminClient = &http.Client{
	Timeout:   2 * time.Second,
	Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
}

// waitReady polls (every 20ms, bounded by ctx) until the admin endpoint
// serves the config and every listen address accepts a connection.
func (c *Caddy) waitReady(ctx context.Context) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		lastErr = c.probe(ctx)
		if lastErr == nil {
			return nil
		}
		select {
		case <-tick.C:
		case <-c.p.done:
			return fmt.Errorf("exited before ready (%v)", c.p.err)
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w (last: %v)", ctx.Err(), lastErr)
		}
	}
}

// probe reads the running config from the admin endpoint, records the listen
// addresses and dials each.
func (c *Caddy) probe(ctx context.Context) error {
	c.mu.Lock()
	admin := c.admin
	c.mu.Unlock()
	var body json.RawMessage
	if err := getJSON(ctx, adminClient, admin, "/config/", &body); err != nil {
		return err
	}
	listen, err := listenAddrs(body)
	if err != nil {
		return err
	}
	var d net.Dialer
	for _, a := range listen {
		conn, err := d.DialContext(ctx, "tcp", a)
		if err != nil {
			return err
		}
		conn.Close()
	}
	c.mu.Lock()
	c.listen = listen
	c.mu.Unlock()
	return nil
}

// listenAddrs extracts the TCP listen addresses of all HTTP servers from a
// Caddy JSON config, as dialable host:port (an empty host becomes 127.0.0.1,
// a port range its first port).
func listenAddrs(config []byte) ([]string, error) {
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Listen []string `json:"listen"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(config, &cfg); err != nil {
		return nil, fmt.Errorf("parsing config: %w", err)
	}
	var out []string
	for _, srv := range cfg.Apps.HTTP.Servers {
		for _, l := range srv.Listen {
			network, addr, ok := strings.Cut(l, "/")
			if !ok {
				network, addr = "tcp", l
			}
			if !strings.HasPrefix(network, "tcp") {
				continue
			}
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, fmt.Errorf("listen address %q: %w", l, err)
			}
			port, _, _ = strings.Cut(port, "-")
			if host == "" {
				host = "127.0.0.1"
			}
			out = append(out, net.JoinHostPort(host, port))
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no HTTP server listens on TCP yet")
	}
	return out, nil
}

// Pid is the pid of the caddy process.
func (c *Caddy) Pid() int { return c.p.pid }

// Exited returns a channel closed when the caddy process exits.
func (c *Caddy) Exited() <-chan struct{} { return c.p.done }

// Admin is the admin endpoint's host:port.
func (c *Caddy) Admin() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.admin
}

// ListenAddrs are the host:port addresses Caddy's HTTP servers listen on.
func (c *Caddy) ListenAddrs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.listen...)
}

// URL is "http://" plus the first listen address, e.g. http://127.0.0.1:8080.
func (c *Caddy) URL() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return "http://" + c.listen[0]
}

// LogPath is the file that receives Caddy's stdout and stderr.
func (c *Caddy) LogPath() string { return c.logPath }

// Logs returns what Caddy has written to stdout and stderr so far (the last
// 8 MiB of it).
func (c *Caddy) Logs() string {
	f, err := os.Open(c.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	const max = 8 << 20
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		f.Seek(fi.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, max))
	return string(b)
}

// run runs a caddy CLI subcommand with Caddy's environment, bounded by
// caddyTimeout, and returns its combined output in the error.
func (c *Caddy) run(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), caddyTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Dir, cmd.Env = c.dir, c.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("chaos: caddy %s: %w\n%s", args[0], err, out.Bytes())
	}
	return nil
}

// Reload writes caddyfileText over the Caddyfile and runs `caddy reload
// --config <file> --adapter caddyfile --address <admin>`, which returns once
// the new config runs. If the new text moves the admin endpoint, later calls
// use the new address. Reload then waits, bounded, until the listen addresses
// accept connections.
func (c *Caddy) Reload(caddyfileText string) error {
	newAdmin, err := adminAddr(caddyfileText)
	if err != nil {
		return err
	}
	if err := os.WriteFile(c.file, []byte(caddyfileText), 0o644); err != nil {
		return err
	}
	if err := c.run("reload", "--config", c.file, "--adapter", "caddyfile", "--address", c.Admin()); err != nil {
		return err
	}
	c.mu.Lock()
	c.admin = newAdmin
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), caddyTimeout)
	defer cancel()
	return c.waitReady(ctx)
}

// Stop runs `caddy stop --address <admin>` (a graceful stop, bounded by the
// grace period) and waits for the process to exit; if it does not exit in
// 20s, or the stop command fails, it SIGKILLs it. It returns nil once the
// process is gone and the stop went as planned.
func (c *Caddy) Stop() error {
	if c.p.exited() {
		return nil
	}
	stopErr := c.run("stop", "--address", c.Admin())
	if stopErr == nil {
		if err := c.p.wait(caddyTimeout); err != nil {
			stopErr = err
		}
	}
	if err := c.p.kill(); err != nil {
		return err
	}
	return stopErr
}

// Close SIGKILLs Caddy if it is still running and waits until it is reaped.
// It is meant for deferred cleanup.
func (c *Caddy) Close() error { return c.p.kill() }

// Signal sends sig to the caddy process, e.g. syscall.SIGSTOP.
func (c *Caddy) Signal(sig syscall.Signal) error { return c.p.signal(sig) }

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
