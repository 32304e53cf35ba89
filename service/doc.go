// Package service is the composition root of the daemon: it turns the
// configuration into the filesystem and the snapshotter, serves containerd's
// snapshots gRPC API on a unix socket, and owns the daemon's lifecycle
// (root lock, socket, systemd notifications, graceful stop).
package service
