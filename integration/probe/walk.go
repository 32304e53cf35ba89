package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// walk prints one line per entry under root (root itself excluded), sorted
// by path, without following symlinks:
//
//	path type mode uid gid size mtime rdev link xattrs sha256
//
// type is one of f d l c b p s; mode is octal with setuid, setgid and sticky;
// size is 0 except for regular files; mtime is in Unix seconds; rdev is
// major:minor for devices, link the target of symlinks, xattrs the sorted
// name=base64(value) list joined by commas, sha256 the content digest of
// regular files; fields that do not apply are "-". An entry that cannot be
// read gives "path ERROR err". Paths equal to or below an exclude are skipped.
// The last line is "walk-done <number of entry lines>".
func walk(w io.Writer, root string, excludes []string) error {
	type line struct{ path, text string }
	var lines []line
	root = filepath.Clean(root)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if excluded(p, excludes) {
			if d != nil && d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if err != nil {
			if p == root {
				return err
			}
			lines = append(lines, line{p, quote(p) + " ERROR " + err.Error()})
			return nil
		}
		if p == root {
			return nil
		}
		text, err := describe(p)
		if err != nil {
			text = quote(p) + " ERROR " + err.Error()
		}
		lines = append(lines, line{p, text})
		return nil
	})
	if err != nil {
		return fmt.Errorf("walk %s: %w", root, err)
	}
	sort.SliceStable(lines, func(i, j int) bool { return lines[i].path < lines[j].path })
	for _, l := range lines {
		if _, err := fmt.Fprintln(w, l.text); err != nil {
			return err
		}
	}
	_, err = fmt.Fprintf(w, "walk-done %d\n", len(lines))
	return err
}

func excluded(p string, excludes []string) bool {
	for _, ex := range excludes {
		ex = filepath.Clean(ex)
		if p == ex || strings.HasPrefix(p, strings.TrimSuffix(ex, "/")+"/") {
			return true
		}
	}
	return false
}

// describe returns the walk line of p.
func describe(p string) (string, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return "", err
	}
	var (
		ifmt = st.Mode & unix.S_IFMT
		size = int64(0)
		rdev = "-"
		link = "-"
		sum  = "-"
		err  error
	)
	switch ifmt {
	case unix.S_IFREG:
		size = st.Size
		if sum, err = fileSHA256(p); err != nil {
			return "", err
		}
	case unix.S_IFCHR, unix.S_IFBLK:
		dev := uint64(st.Rdev)
		rdev = fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev))
	case unix.S_IFLNK:
		target, err := os.Readlink(p)
		if err != nil {
			return "", err
		}
		link = quote(target)
	}
	xattrs, err := listXattrs(p)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s %c %04o %d %d %d %d %s %s %s %s", quote(p), typeLetter(ifmt), st.Mode&0o7777,
		st.Uid, st.Gid, size, int64(st.Mtim.Sec), rdev, link, xattrs, sum), nil
}

func typeLetter(ifmt uint32) byte {
	switch ifmt {
	case unix.S_IFREG:
		return 'f'
	case unix.S_IFDIR:
		return 'd'
	case unix.S_IFLNK:
		return 'l'
	case unix.S_IFCHR:
		return 'c'
	case unix.S_IFBLK:
		return 'b'
	case unix.S_IFIFO:
		return 'p'
	case unix.S_IFSOCK:
		return 's'
	}
	return '?'
}

// listXattrs returns p's extended attributes (not following symlinks) as
// sorted name=base64(value) joined by commas, or "-" when there are none.
func listXattrs(p string) (string, error) {
	names, err := xattrNames(p)
	if err != nil {
		return "", fmt.Errorf("list xattrs: %w", err)
	}
	var attrs []string
	for _, name := range names {
		value, err := xattrValue(p, name)
		if errors.Is(err, unix.ENODATA) {
			continue // removed meanwhile
		}
		if err != nil {
			return "", fmt.Errorf("get xattr %s: %w", name, err)
		}
		attrs = append(attrs, name+"="+base64.StdEncoding.EncodeToString(value))
	}
	if len(attrs) == 0 {
		return "-", nil
	}
	return strings.Join(attrs, ","), nil
}

func xattrNames(p string) ([]string, error) {
	buf, err := readSized(func(b []byte) (int, error) { return unix.Llistxattr(p, b) })
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, name := range strings.Split(string(buf), "\x00") {
		if name != "" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names, nil
}

func xattrValue(p, name string) ([]byte, error) {
	return readSized(func(b []byte) (int, error) { return unix.Lgetxattr(p, name, b) })
}

// readSized calls get first with no buffer to learn the size, then with a
// buffer of that size, retrying when the value grew in between.
func readSized(get func([]byte) (int, error)) ([]byte, error) {
	for range 5 {
		size, err := get(nil)
		if err != nil {
			return nil, err
		}
		if size == 0 {
			return nil, nil
		}
		buf := make([]byte, size)
		n, err := get(buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
	return nil, unix.ERANGE
}
