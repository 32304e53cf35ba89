package main

import (
	_ "github.com/containerd/containerd/v2/contrib/snapshotservice"
	_ "github.com/containerd/containerd/v2/core/snapshots/storage"
	_ "github.com/containerd/containerd/v2/core/snapshots/testsuite"
	_ "github.com/containerd/containerd/v2/core/remotes/docker"
	_ "github.com/containerd/containerd/v2/core/mount"
	_ "github.com/containerd/containerd/v2/plugins/snapshots/overlay/overlayutils"
	_ "github.com/containerd/containerd/api/services/snapshots/v1"
	_ "github.com/containerd/continuity/fs"
	_ "github.com/containerd/log"
	_ "github.com/containerd/errdefs"
	_ "github.com/coreos/go-systemd/v22/daemon"
	_ "github.com/coreos/go-systemd/v22/activation"
	_ "google.golang.org/grpc"
	_ "github.com/pelletier/go-toml/v2"
	_ "github.com/hanwen/go-fuse/v2/fs"
	_ "github.com/awslabs/soci-snapshotter/ztoc"
	_ "github.com/awslabs/soci-snapshotter/soci"
)
func main() {}
