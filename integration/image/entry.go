package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"path"
	"strings"
	"time"
)

// Entry is one tar entry of a layer. Fields are written as given: there are no
// default modes or owners, so a zero Mode really is mode 0000 (see File, Dir,
// Symlink and Hardlink for the usual defaults).
type Entry struct {
	Name         string // path in the layer, no leading slash
	Type         byte   // tar.TypeReg (also when 0), TypeDir, TypeSymlink, TypeLink, TypeChar, TypeBlock, TypeFifo
	Mode         int64  // permission bits plus setuid, setgid and sticky (07777)
	UID, GID     int
	Uname, Gname string
	// ModTime is truncated to whole seconds; the zero time means the Unix epoch.
	ModTime time.Time
	// Data is the content of a regular file. When nil, the content is Size
	// bytes of incompressible pseudo-random data derived from Seed.
	Data []byte
	Size int64
	Seed int64
	// Compressible makes the generated content (Data nil) text of 16
	// letters drawn from Seed: about 2:1 under gzip, and slow to inflate
	// as real layers are (literals, not stored blocks).
	Compressible bool
	Linkname     string // symlink target or hardlink target
	Devmajor     int64
	Devminor     int64
	Xattrs       map[string]string // written as PAX records SCHILY.xattr.<name>
}

// File returns a regular file entry owned by root with mode 0644.
func File(name string, data []byte) Entry {
	return Entry{Name: name, Type: tar.TypeReg, Mode: 0o644, Data: data}
}

// RandomFile returns a regular file entry owned by root with mode 0644 whose
// content is size pseudo-random bytes derived from seed.
func RandomFile(name string, size, seed int64) Entry {
	return Entry{Name: name, Type: tar.TypeReg, Mode: 0o644, Size: size, Seed: seed}
}

// Dir returns a directory entry owned by root with mode 0755.
func Dir(name string) Entry {
	return Entry{Name: name, Type: tar.TypeDir, Mode: 0o755}
}

// Symlink returns a symbolic link entry name -> target with mode 0777.
func Symlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeSymlink, Mode: 0o777, Linkname: target}
}

// Hardlink returns a hard link entry name to the earlier entry target (a path
// in the layer, no leading slash).
func Hardlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeLink, Mode: 0o644, Linkname: target}
}

// Whiteout returns the entry by which an upper layer deletes p from the layers
// below: an empty file ".wh.<base>" in the parent directory of p.
func Whiteout(p string) Entry {
	dir, base := path.Split(strings.Trim(p, "/"))
	return Entry{Name: dir + ".wh." + base, Type: tar.TypeReg}
}

// OpaqueDir returns the entry by which an upper layer hides everything the
// layers below have in dir: "<dir>/.wh..wh..opq".
func OpaqueDir(dir string) Entry {
	return Entry{Name: path.Join(strings.Trim(dir, "/"), ".wh..wh..opq"), Type: tar.TypeReg}
}

// header converts e to a tar header. Directories get the conventional
// trailing slash.
func (e Entry) header() (*tar.Header, error) {
	typ := e.Type
	if typ == 0 {
		typ = tar.TypeReg
	}
	name := strings.TrimLeft(e.Name, "/")
	if name == "" {
		return nil, fmt.Errorf("entry with empty name")
	}
	if typ == tar.TypeDir && !strings.HasSuffix(name, "/") {
		name += "/"
	}
	mtime := e.ModTime
	if mtime.IsZero() {
		mtime = time.Unix(0, 0)
	}
	hdr := &tar.Header{
		Typeflag: typ,
		Name:     name,
		Linkname: e.Linkname,
		Mode:     e.Mode & 0o7777,
		Uid:      e.UID,
		Gid:      e.GID,
		Uname:    e.Uname,
		Gname:    e.Gname,
		ModTime:  mtime.Truncate(time.Second).UTC(),
		Devmajor: e.Devmajor,
		Devminor: e.Devminor,
	}
	if typ == tar.TypeReg {
		hdr.Size = e.size()
	}
	if len(e.Xattrs) > 0 {
		hdr.Format = tar.FormatPAX
		hdr.PAXRecords = make(map[string]string, len(e.Xattrs))
		for k, v := range e.Xattrs {
			hdr.PAXRecords["SCHILY.xattr."+k] = v
		}
	}
	return hdr, nil
}

func (e Entry) size() int64 {
	if e.Data != nil {
		return int64(len(e.Data))
	}
	return e.Size
}

// content returns the reader of a regular file's content.
func (e Entry) content() io.Reader {
	if e.Data != nil {
		return bytes.NewReader(e.Data)
	}
	if e.Compressible {
		return io.LimitReader(lettersReader{seededReader(e.Seed)}, e.Size)
	}
	return io.LimitReader(seededReader(e.Seed), e.Size)
}

// lettersReader maps each byte of r onto one of 16 letters.
type lettersReader struct{ r io.Reader }

func (l lettersReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	for i := range p[:n] {
		p[i] = 'a' + p[i]&15
	}
	return n, err
}

// seededReader returns an endless stream of pseudo-random bytes that depends
// only on seed (ChaCha8 output is specified, so it is stable across Go releases).
func seededReader(seed int64) io.Reader {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(uint64(seed) >> (8 * i))
	}
	return rand.NewChaCha8(key)
}

// writeEntry writes e, header and content, to tw.
func writeEntry(tw *tar.Writer, e Entry) error {
	hdr, err := e.header()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write tar header of %s: %w", hdr.Name, err)
	}
	if hdr.Typeflag != tar.TypeReg || hdr.Size == 0 {
		return nil
	}
	if _, err := io.Copy(tw, e.content()); err != nil {
		return fmt.Errorf("write content of %s: %w", hdr.Name, err)
	}
	return nil
}
