package service

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// listenUnix listens on a unix socket at path whose mode is 0600 from the
// moment the path exists: the socket is bound inside a fresh private
// directory next to path (mode 0700, so the mode the umask gives the bound
// file grants nobody anything), restricted to 0600 there, and only then
// renamed into place. A missing parent directory is created with mode 0700.
//
// A socket file left at path by a daemon that is gone is replaced; one that
// still answers, or anything that is not a socket, is an error. Closing the
// listener removes path if it is still this listener's socket.
func listenUnix(path string) (net.Listener, error) {
	if path == "" {
		return nil, errors.New("listen: empty socket address")
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create socket directory for %s: %w", path, err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	// A short name: the bound path must fit sun_path (108 bytes) too.
	tmp, err := os.MkdirTemp(dir, ".s")
	if err != nil {
		return nil, fmt.Errorf("create private directory to bind %s: %w", path, err)
	}
	defer os.RemoveAll(tmp)
	// MkdirTemp asks for 0700; a umask can only narrow it, and binding needs
	// the owner's bits.
	if err := os.Chmod(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("restrict private directory %s: %w", tmp, err)
	}
	bound := filepath.Join(tmp, "s")
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: bound, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// The file moves away from the bound name: removing it is Close's job.
	ul.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		ul.Close()
		return nil, err
	}
	if err := os.Chmod(bound, 0o600); err != nil {
		return fail(fmt.Errorf("restrict permissions of socket for %s: %w", path, err))
	}
	if err := renameNoReplace(bound, path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fail(fmt.Errorf("socket address %s was taken while binding: %w", path, err))
		}
		return fail(fmt.Errorf("move socket into place at %s: %w", path, err))
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(fmt.Errorf("inspect socket %s: %w", path, err))
	}
	return &unixListener{UnixListener: ul, path: path, file: fi}, nil
}

// renameNoReplace renames from to to, failing with os.ErrExist when to
// exists. Filesystems without RENAME_NOREPLACE get a plain rename (to was
// checked just before).
func renameNoReplace(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		return os.Rename(from, to)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

// unixListener is a listener whose socket file was renamed into place: it
// reports the final path as its address and removes that path on Close.
type unixListener struct {
	*net.UnixListener
	path  string
	file  os.FileInfo // the socket as it was renamed into place
	close sync.Once
}

// Addr returns the socket's final path.
func (l *unixListener) Addr() net.Addr {
	return &net.UnixAddr{Name: l.path, Net: "unix"}
}

// Close stops listening and removes the socket file, unless the path now
// names another file.
func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.close.Do(func() {
		fi, serr := os.Lstat(l.path)
		if serr != nil || !os.SameFile(fi, l.file) {
			return
		}
		if rerr := os.Remove(l.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, fmt.Errorf("remove socket %s: %w", l.path, rerr))
		}
	})
	return err
}
