// Package bench measures time-to-ready of containers side by side under
// overlayfs (containerd's default, full pull), our SOCI snapshotter and any
// number of other soci-snapshotter-grpc builds, over a shaped loopback link
// to a registry. It is not part of the snapshotter's flow: it drives the
// whole flow (discovery, zTOC, mount, span reads) from the outside, through
// containerd and nerdctl, as a user would, and reports what it costs.
//
// The program is bench/cmd/bench (`make bench`); this package holds the
// workloads, the runner, the statistics, the table and the chart.
package bench
