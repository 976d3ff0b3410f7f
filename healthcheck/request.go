package healthcheck

import (
	"cmp"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// heartbeatRequest is the request every beat of one prober sends, built
// once: cfg's method, path, headers and body; Host is cfg's Host header if
// set, else host. User-Agent and Accept have defaults that a header of
// cfg's replaces. cfg has its defaults applied and is valid.
func heartbeatRequest(cfg Config, host string) []byte {
	names := make([]string, 0, len(cfg.Headers))
	set := make(map[string]bool, len(cfg.Headers))
	for name, values := range cfg.Headers {
		c := http.CanonicalHeaderKey(name)
		if c == "Host" {
			if len(values) > 0 {
				host = values[0] // Validate allows one at most
			}
			continue
		}
		names = append(names, name)
		set[c] = true
	}
	slices.SortFunc(names, func(a, b string) int { // the same bytes for the same config
		return cmp.Or(strings.Compare(http.CanonicalHeaderKey(a), http.CanonicalHeaderKey(b)), strings.Compare(a, b))
	})
	b := make([]byte, 0, 256+len(cfg.Body))
	b = append(b, cfg.Method...)
	b = append(b, ' ')
	b = append(b, cfg.Path...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, host...)
	b = append(b, "\r\n"...)
	if !set["User-Agent"] {
		b = append(b, "User-Agent: caddy-failover-heartbeat\r\n"...)
	}
	if !set["Accept"] {
		b = append(b, "Accept: */*\r\n"...)
	}
	for _, name := range names {
		for _, v := range cfg.Headers[name] {
			b = append(b, http.CanonicalHeaderKey(name)...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	// as net/http does: a method that expects a body says its length, 0 too
	if cfg.Body != "" || cfg.Method == http.MethodPost || cfg.Method == http.MethodPut || cfg.Method == http.MethodPatch {
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, int64(len(cfg.Body)), 10)
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	return append(b, cfg.Body...)
}

// probeTarget is where heartbeats of a backend at addr go, and the Host
// header they carry unless one is configured. addr is host:port, or
// network/address as Caddy writes dial addresses: tcp4/host:port, or
// unix//run/app.sock for a unix socket (whose Host is localhost). port,
// when set, replaces a TCP address's port.
func probeTarget(addr string, port int) (network, address, host string) {
	network, address = "tcp", addr
	if n, rest, ok := strings.Cut(addr, "/"); ok {
		switch n = strings.ToLower(strings.TrimSpace(n)); n { // as Caddy reads them
		case "unix":
			return n, rest, "localhost"
		case "tcp", "tcp4", "tcp6":
			network, address = n, rest
		}
	}
	if port != 0 {
		h, _, err := net.SplitHostPort(address)
		if err != nil {
			h = address
		}
		address = net.JoinHostPort(h, strconv.Itoa(port))
	}
	return network, address, address
}
