package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// DebugNetwork returns the network debug_address names: "unix" for a path
// (anything with a "/"), "tcp" for host:port.
func DebugNetwork(addr string) string {
	if strings.Contains(addr, "/") {
		return NetworkUnix
	}
	return NetworkTCP
}

// CheckLoopback reports an error unless hostport is a TCP address whose host
// is a loopback address (127.0.0.0/8, ::1) or "localhost". An empty host
// (":6060") listens on every interface and is refused.
func CheckLoopback(hostport string) error {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return fmt.Errorf("want a unix socket path or a loopback host:port: %w", err)
	}
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	// An IPv6 zone ("::1%lo") is not a plain loopback address.
	if ip, err := netip.ParseAddr(host); err == nil && ip.Zone() == "" && ip.Unmap().IsLoopback() {
		return nil
	}
	if host == "" {
		return errors.New("an empty host listens on every interface; want a unix socket path or a loopback host:port (127.0.0.1, ::1, localhost): the endpoint is unauthenticated")
	}
	return fmt.Errorf("%q is not a loopback address; want a unix socket path or a loopback host:port (127.0.0.1, ::1, localhost): the endpoint is unauthenticated", host)
}
