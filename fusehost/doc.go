// Package fusehost runs the lazily loaded layers' FUSE sessions in a
// process of their own, the FUSE host, so that they outlive the daemon: a
// restart, a crash or an upgrade of soci-snapshotter-grpc leaves running
// containers reading from their layers.
//
// The host serves a small HTTP+JSON protocol on a unix socket (protocol.go,
// server.go): mount, check, unmount and release a layer, list the
// mountpoints it serves, report its health and metrics, retire, shut down.
// The daemon talks to it through Client (client.go), which is the
// snapshotter's Mounter and Releaser, and starts it when none answers
// (launch.go). A host is named by the digest of the executable that runs it,
// so that an upgraded daemon starts a host of its own and retires the older
// ones, which exit once their last layer is unmounted.
package fusehost
