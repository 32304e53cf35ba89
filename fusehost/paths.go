package fusehost

import (
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
)

// sunPathMax is the longest path a unix socket can be bound at or
// dialled (sun_path is 108 bytes with its NUL).
const sunPathMax = 107

// fallbackSocketBase holds the sockets of roots whose own directory is too
// deep for sun_path.
const fallbackSocketBase = "/run/soci-snapshotter-grpc"

// Dir is the directory of root's FUSE hosts: their lock files, and their
// sockets when SocketDir is the same.
func Dir(root string) string { return filepath.Join(root, "fusehost") }

// SocketDir is where the sockets of root's FUSE hosts are: Dir(root), or,
// when a socket there (or the private directory it is bound in first) would
// not fit sun_path, a directory under /run named by the hash of root.
func SocketDir(root string) string {
	dir := Dir(root)
	// "/.s<10 digits>/s" while binding; "/<16 hex>.sock" once renamed.
	if len(dir)+len("/.s0123456789/s") <= sunPathMax && len(dir)+len("/0123456789abcdef.sock") <= sunPathMax {
		return dir
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		abs = root
	}
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join(fallbackSocketBase, "fusehost-"+hex.EncodeToString(sum[:8]))
}

// SocketPath is the socket of the host id of root.
func SocketPath(root, id string) string { return filepath.Join(SocketDir(root), id+".sock") }

// LockPath is the lock file of the host id of root: the host holds an
// exclusive flock on it for its life and writes its pid into it.
func LockPath(root, id string) string { return filepath.Join(Dir(root), id+".lock") }
