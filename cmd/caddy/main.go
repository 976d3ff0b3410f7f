// Command caddy is Caddy with the failover plugin built in: what
// `xcaddy build --with github.com/crashonly/caddy-failover` generates.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// plug in Caddy modules here
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/crashonly/caddy-failover/caddymodule"
)

func main() {
	caddycmd.Main()
}
