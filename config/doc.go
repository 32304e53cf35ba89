// Package config is the TOML schema of the soci-snapshotter-grpc daemon's
// configuration file, /etc/soci-snapshotter-grpc/config.toml.
//
// It is the first step of the daemon's flow: cmd loads the file once at
// start-up and hands the resulting *Config to service, which passes the
// relevant sections down to the components it builds. No other package reads
// the file.
//
// The schema is key-for-key compatible with the upstream SOCI snapshotter, so
// existing configuration files keep working and keep their meaning. That
// includes upstream's convention that an integer written as 0 means "use the
// default" for most settings (for example mount_timeout_sec = 0 is 30
// seconds) and the CamelCase keys of the [http] table.
//
// Every file upstream accepts loads, with upstream's meaning for every value
// it gives meaning to (a negative min_layer_size is "unset", a negative
// request timeout is none, a shortest retry wait above the longest waits the
// longest, ...). Unknown keys are ignored, as upstream ignores them, and
// returned by Read as Notices naming the line and the nearest known key;
// keys the daemon accepts but does not act on (UnusedKeys) are returned as
// Notices too. Values of the wrong type and values upstream cannot use
// either are errors that name the dotted key path and, when known, the line.
package config
