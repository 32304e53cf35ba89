package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/coreos/go-systemd/v22/activation"

	"github.com/fastsoci/soci-snapshotter/config"
)

// Listen opens the socket the daemon serves on. address is a path, a
// "unix://" URL, or "fd://" for a socket handed over by systemd. As with
// upstream, "fd://" when no socket was handed over (the daemon was started
// directly, not by socket activation) serves on config.DefaultAddress, and
// says so in an Info line.
//
// A missing socket directory is created with mode 0700, and the socket file
// has mode 0600 from the moment it exists (see listenUnix). A socket file
// left by a daemon that is gone is replaced; one that still answers is an
// error, so two daemons never share an address. Closing the listener removes
// the socket file.
func Listen(ctx context.Context, address string) (net.Listener, error) {
	if address == "fd://" {
		return systemdListener(ctx, config.DefaultAddress)
	}
	return listenUnix(strings.TrimPrefix(address, "unix://"))
}

// removeStaleSocket deletes a socket file at path unless a live process is
// accepting connections on it.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("inspect socket %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("socket address %s exists and is not a socket", path)
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("socket %s is in use by another running daemon", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("probe socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}

// systemdListener returns the single socket passed by systemd socket
// activation (LISTEN_FDS), or a unix socket at fallback when none was passed.
func systemdListener(ctx context.Context, fallback string) (net.Listener, error) {
	ls, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("take sockets from systemd: %w", err)
	}
	var found []net.Listener
	for _, l := range ls {
		if l != nil {
			found = append(found, l)
		}
	}
	switch len(found) {
	case 0:
		log.G(ctx).WithField("address", fallback).
			Info("fd://: no socket was passed (not started by systemd socket activation); serving on the default socket")
		l, err := listenUnix(fallback)
		if err != nil {
			return nil, fmt.Errorf("fd:// without a passed socket: %w", err)
		}
		return l, nil
	case 1:
		return found[0], nil
	default:
		for _, l := range found {
			l.Close()
		}
		return nil, fmt.Errorf("fd://: systemd passed %d sockets, want 1", len(found))
	}
}
