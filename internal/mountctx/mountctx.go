// Package mountctx carries, in a context, how a layer mount was asked for,
// across packages that must not import each other (snapshot and fs) and
// across the daemon -> FUSE host boundary.
package mountctx

import "context"

type localOnlyKey struct{}

// WithLocalOnly marks ctx: the mount must be made from local state only
// (the index, zTOCs and span cache on disk) and must never wait for a
// registry. The snapshotter sets it when it restores snapshots on start.
func WithLocalOnly(ctx context.Context) context.Context {
	return context.WithValue(ctx, localOnlyKey{}, true)
}

// LocalOnly reports whether ctx was marked by WithLocalOnly.
func LocalOnly(ctx context.Context) bool {
	v, _ := ctx.Value(localOnlyKey{}).(bool)
	return v
}
