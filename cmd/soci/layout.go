package main

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxIndexJSONBytes bounds an OCI layout's index.json and the manifest
// lists it names.
const maxIndexJSONBytes = 16 << 20

// blobPath is where an OCI image layout keeps blob d.
func blobPath(dir string, d digest.Digest) string {
	return filepath.Join(dir, ocispec.ImageBlobsDir, d.Algorithm().String(), d.Encoded())
}

// copyLayout copies the OCI image layout in src (a directory or a tar of
// one) into the empty directory dst.
func copyLayout(src, dst string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("open input layout: %w", err)
	}
	if fi.IsDir() {
		if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
			return fmt.Errorf("copy OCI layout %s: %w", src, err)
		}
		return nil
	}
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open input layout: %w", err)
	}
	defer f.Close()
	if err := extractLayout(f, dst); err != nil {
		return fmt.Errorf("extract OCI layout archive %s: %w", src, err)
	}
	return nil
}

// extractLayout writes the layout files of the tar stream r under dst:
// oci-layout, index.json and blobs/<algorithm>/<encoded digest>. Other
// entries (docker's manifest.json, links, devices) are skipped; names
// that would leave dst can't occur because only those three forms are
// written.
func extractLayout(r io.Reader, dst string) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		rel, ok := layoutFile(h.Name)
		if !ok {
			continue
		}
		target := filepath.Join(dst, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		out, err := os.OpenFile(target, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		_, err = io.Copy(out, tr)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", rel, err)
		}
	}
}

// layoutFile maps a tar entry name to the layout file it is, if any.
func layoutFile(name string) (string, bool) {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	switch name {
	case ocispec.ImageLayoutFile, ocispec.ImageIndexFile:
		return name, true
	}
	parts := strings.Split(name, "/")
	if len(parts) != 3 || parts[0] != ocispec.ImageBlobsDir {
		return "", false
	}
	if digest.NewDigestFromEncoded(digest.Algorithm(parts[1]), parts[2]).Validate() != nil {
		return "", false
	}
	return name, true
}

// layoutRoot is the image the layout in dir holds: one image manifest,
// or a manifest list. It understands index.json naming one manifest, one
// nested manifest list (nerdctl save, ctr export) or several manifests
// directly (go-containerregistry). Manifests whose blobs are absent (a
// multi-platform image saved for one platform) are dropped; when that
// changes the list, a new list is written into dir.
func layoutRoot(dir string) (ocispec.Descriptor, error) {
	top, err := readIndex(filepath.Join(dir, ocispec.ImageIndexFile))
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if len(top.Manifests) == 0 {
		return ocispec.Descriptor{}, errors.New("index.json names no image")
	}
	for _, m := range top.Manifests {
		if err := m.Digest.Validate(); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("index.json: %w", err)
		}
	}
	list, mediaType, nested := top, top.MediaType, false
	if len(top.Manifests) == 1 {
		if !images.IsIndexType(top.Manifests[0].MediaType) {
			return top.Manifests[0], nil
		}
		nested, mediaType = true, top.Manifests[0].MediaType
		if list, err = readIndex(blobPath(dir, top.Manifests[0].Digest)); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("manifest list %s: %w", top.Manifests[0].Digest, err)
		}
	}
	if mediaType == "" {
		mediaType = ocispec.MediaTypeImageIndex
	}
	var present []ocispec.Descriptor
	for _, m := range list.Manifests {
		if m.Digest.Validate() != nil {
			continue
		}
		if _, err := os.Stat(blobPath(dir, m.Digest)); err == nil {
			present = append(present, m)
		}
	}
	switch {
	case len(present) == 0:
		return ocispec.Descriptor{}, errors.New("the layout holds none of the manifests its index lists")
	case len(present) == 1 && images.IsManifestType(present[0].MediaType):
		return present[0], nil
	case nested && len(present) == len(list.Manifests):
		return top.Manifests[0], nil
	}
	list.MediaType, list.Manifests = mediaType, present
	if list.SchemaVersion == 0 {
		list.Versioned = specs.Versioned{SchemaVersion: 2}
	}
	data, err := json.Marshal(list)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
	if err := os.MkdirAll(filepath.Dir(blobPath(dir, desc.Digest)), 0o755); err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := os.WriteFile(blobPath(dir, desc.Digest), data, 0o644); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("write manifest list: %w", err)
	}
	return desc, nil
}

func readIndex(file string) (ocispec.Index, error) {
	var idx ocispec.Index
	f, err := os.Open(file)
	if err != nil {
		return idx, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxIndexJSONBytes+1))
	if err != nil {
		return idx, err
	}
	if len(data) > maxIndexJSONBytes {
		return idx, fmt.Errorf("%s is larger than %d bytes", file, maxIndexJSONBytes)
	}
	if err := json.Unmarshal(data, &idx); err != nil {
		return idx, fmt.Errorf("decode %s: %w", file, err)
	}
	return idx, nil
}

// writeLayoutDir copies the layout in src to out and points its index.json
// at desc alone. out must not exist, be empty, or be an OCI layout (which
// is replaced).
func writeLayoutDir(src string, desc ocispec.Descriptor, out string) error {
	if err := clearOutputDir(out); err != nil {
		return err
	}
	if err := os.CopyFS(out, os.DirFS(src)); err != nil {
		return fmt.Errorf("copy OCI layout to %s: %w", out, err)
	}
	data, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{desc},
	})
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, ocispec.ImageIndexFile), data, 0o644)
}

func clearOutputDir(out string) error {
	ents, err := os.ReadDir(out)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("output %s: %w", out, err)
	}
	if len(ents) > 0 {
		if _, err := os.Stat(filepath.Join(out, ocispec.ImageLayoutFile)); err != nil {
			return fmt.Errorf("output %s exists and is not an OCI image layout: not overwriting it", out)
		}
	}
	return os.RemoveAll(out)
}
