// Package failover is what `xcaddy build --with github.com/crashonly/caddy-failover`
// imports: it registers the failover modules, which live in caddymodule.
package failover

import _ "github.com/crashonly/caddy-failover/caddymodule" // registers the modules
