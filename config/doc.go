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
// Decoding is strict: unknown keys, values of the wrong type and invalid
// values are errors that name the dotted key path and, when known, the line.
package config
