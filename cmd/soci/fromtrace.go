package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/soci/store"
	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/urfave/cli/v2"

	"github.com/fastsoci/soci-snapshotter/fs/trace"
)

const traceFlag = "trace"

// Bounds of what from-trace reads from containerd's content store: it is
// local, but was written by others.
const (
	maxIndexBytes    = 4 << 20
	maxZTOCBytes     = 256 << 20
	maxManifestBytes = 4 << 20
)

// fromTraceCommand turns a trace recorded by the daemon ([prefetch]
// record) into prefetch artifacts added to the image's SOCI index.
func fromTraceCommand() *cli.Command {
	return &cli.Command{
		Name:  "from-trace",
		Usage: "add prefetch artifacts made from a recorded trace ([prefetch] record) to an image's SOCI index",
		Description: "The trace is read from --trace, or from <root>/fs/traces for the image's manifest. Each traced layer\n" +
			"gets a prefetch artifact listing the spans read (coalesced ranges); the image's newest SOCI index is\n" +
			"replaced by one that lists them (a SOCI v2 image gets a new manifest and image index). Then `soci push`\n" +
			"(v1) or pushing the image (v2) publishes them.",
		ArgsUsage: "<image-ref>",
		Flags: append(platformFlags(),
			&cli.StringFlag{Name: traceFlag, Usage: "trace file (default: <root>/fs/traces/<alg>/<manifest digest>.json)"}),
		Action: fromTrace,
	}
}

func fromTrace(c *cli.Context) error {
	ref := c.Args().First()
	if ref == "" || c.NArg() > 1 {
		return errors.New("prefetch from-trace: want exactly one image reference")
	}
	ctx, s, done, err := open(c.Context, c)
	if err != nil {
		return err
	}
	defer done()
	is, cs := s.client.ImageService(), s.client.ContentStore()
	img, err := is.Get(ctx, ref)
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	ps, err := selectPlatforms(ctx, c, cs, img)
	if err != nil {
		return err
	}
	bctx, release, err := s.store.BatchOpen(ctx)
	if err != nil {
		return err
	}
	defer release(context.WithoutCancel(ctx))
	attached := 0
	for _, p := range ps {
		infos, manifest, err := soci.GetIndexDescriptorCollection(ctx, cs, s.db, img, []ocispec.Platform{p})
		if err != nil {
			return fmt.Errorf("SOCI indices of %s for %s: %w", ref, platforms.Format(p), err)
		}
		t, path, err := loadTrace(c, s.root, manifest.Digest)
		if errors.Is(err, os.ErrNotExist) && c.String(traceFlag) == "" && len(ps) > 1 {
			continue // no trace for this platform
		}
		if err != nil {
			return err
		}
		if len(infos) == 0 {
			return fmt.Errorf("no SOCI index of %s for %s: run `soci create` or `soci convert` first", ref, platforms.Format(p))
		}
		newest := slices.MaxFunc(infos, func(a, b soci.IndexDescriptorInfo) int { return a.CreatedAt.Compare(b.CreatedAt) })
		a := attacher{s: s, img: img, platform: p, manifest: *manifest, old: newest.Descriptor}
		desc, err := a.attach(bctx, t)
		if err != nil {
			return fmt.Errorf("attach trace %s to %s: %w", path, ref, err)
		}
		// Reload: a v2 attach changed the image's target.
		if img, err = is.Get(ctx, ref); err != nil {
			return fmt.Errorf("image %s: %w", ref, err)
		}
		progress("SOCI index %s of %s for %s now lists the traced spans of %d layers", desc.Digest, ref, platforms.Format(p), len(t.Layers))
		attached++
	}
	if attached == 0 {
		return fmt.Errorf("no trace for any platform of %s under %s", ref, filepath.Join(s.root, "fs", "traces"))
	}
	return nil
}

// loadTrace reads and checks the trace of --trace, or else the one the
// daemon under root recorded for manifest.
func loadTrace(c *cli.Context, root string, manifest digest.Digest) (*trace.Trace, string, error) {
	path := c.String(traceFlag)
	if path == "" {
		var err error
		if path, err = trace.Path(filepath.Join(root, "fs", "traces"), manifest); err != nil {
			return nil, "", err
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, path, fmt.Errorf("read trace: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, trace.MaxBytes+1))
	if err != nil {
		return nil, path, fmt.Errorf("read trace %s: %w", path, err)
	}
	t, err := trace.Parse(data)
	if err != nil {
		return nil, path, fmt.Errorf("trace %s: %w", path, err)
	}
	if t.Manifest != manifest {
		return nil, path, fmt.Errorf("trace %s was recorded for manifest %s, the image's is %s", path, t.Manifest, manifest)
	}
	if len(t.Layers) == 0 {
		return nil, path, fmt.Errorf("trace %s lists no layer", path)
	}
	return t, path, nil
}

// attacher adds a trace's prefetch artifacts to one SOCI index (old) of
// the image manifest of one platform.
type attacher struct {
	s        *session
	img      images.Image
	platform ocispec.Platform
	manifest ocispec.Descriptor
	old      ocispec.Descriptor
}

// attach stores one prefetch artifact per traced layer, writes the index
// listing them in place of the layers' earlier ones, and points the image
// at it; it returns the new index's descriptor.
func (a attacher) attach(ctx context.Context, t *trace.Trace) (ocispec.Descriptor, error) {
	s := a.s
	data, err := readBounded(ctx, s.store, a.old, maxIndexBytes)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("SOCI index: %w", err)
	}
	var idx soci.Index
	if err := soci.UnmarshalIndex(data, &idx); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("decode SOCI index %s: %w", a.old.Digest, err)
	}
	ztocs := map[digest.Digest]ocispec.Descriptor{}
	for _, b := range idx.Blobs {
		if b.MediaType == soci.SociLayerMediaType {
			if l, err := digest.Parse(b.Annotations[soci.IndexAnnotationImageLayerDigest]); err == nil {
				ztocs[l] = b
			}
		}
	}
	// Check every layer before writing anything.
	layers := make([]digest.Digest, 0, len(t.Layers))
	for l, lt := range t.Layers {
		zd, ok := ztocs[l]
		switch {
		case !ok:
			return ocispec.Descriptor{}, fmt.Errorf("layer %s of the trace has no zTOC in SOCI index %s", l, a.old.Digest)
		case zd.Digest != lt.ZTOC:
			return ocispec.Descriptor{}, fmt.Errorf("layer %s was traced with zTOC %s, SOCI index %s has %s", l, lt.ZTOC, a.old.Digest, zd.Digest)
		}
		n, err := a.spanCount(ctx, zd)
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("layer %s: %w", l, err)
		}
		if n != lt.SpanCount {
			return ocispec.Descriptor{}, fmt.Errorf("layer %s: the trace says %d spans, zTOC %s has %d", l, lt.SpanCount, zd.Digest, n)
		}
		layers = append(layers, l)
	}
	slices.Sort(layers)
	blobs := slices.DeleteFunc(slices.Clone(idx.Blobs), func(b ocispec.Descriptor) bool {
		_, traced := t.Layers[digest.Digest(b.Annotations[soci.IndexAnnotationImageLayerDigest])]
		return b.MediaType == soci.SociPrefetchMediaType && traced
	})
	for _, l := range layers {
		desc, err := a.storeArtifact(ctx, l, t.Layers[l].Spans)
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("layer %s: %w", l, err)
		}
		blobs = append(blobs, desc)
	}
	idx.Blobs = blobs
	// Daemons choose among a manifest's v1 indices by this annotation
	// (the reference's builder sets none): the old index, if pushed,
	// stays a referrer, and this one must win.
	idx.Annotations = cloneLabels(idx.Annotations)
	idx.Annotations[ocispec.AnnotationCreated] = time.Now().UTC().Format(time.RFC3339Nano)
	if idx.ArtifactType == soci.SociIndexArtifactTypeV2 {
		return a.writeV2(ctx, &idx)
	}
	return a.writeV1(ctx, &idx)
}

// spanCount reads zTOC desc and returns its number of spans.
func (a attacher) spanCount(ctx context.Context, desc ocispec.Descriptor) (int64, error) {
	data, err := readBounded(ctx, a.s.store, desc, maxZTOCBytes)
	if err != nil {
		return 0, fmt.Errorf("zTOC: %w", err)
	}
	toc, err := ztoc.Unmarshal(bytes.NewReader(data))
	if err != nil {
		return 0, fmt.Errorf("decode zTOC %s: %w", desc.Digest, err)
	}
	return int64(toc.MaxSpanID) + 1, nil
}

// storeArtifact writes the prefetch artifact of one layer (its ranges are
// checked, ascending and disjoint: trace.Parse) and records it in the
// artifact database, as create and convert do for --prefetch-file.
func (a attacher) storeArtifact(ctx context.Context, layer digest.Digest, ranges []trace.Range) (ocispec.Descriptor, error) {
	art := soci.NewPrefetchArtifact()
	for _, r := range ranges {
		art.AddPrefetchSpan(soci.PrefetchSpan{StartSpan: compression.SpanID(r.Start), EndSpan: compression.SpanID(r.End)})
	}
	rd, desc, err := soci.MarshalPrefetchArtifact(art)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	desc.Annotations = map[string]string{soci.IndexAnnotationImageLayerDigest: layer.String()}
	if err := a.s.store.Push(ctx, desc, rd); err != nil && !store.IsErrAlreadyExists(err) {
		return ocispec.Descriptor{}, fmt.Errorf("store prefetch artifact: %w", err)
	}
	err = a.s.db.WriteArtifactEntry(&soci.ArtifactEntry{
		Size: desc.Size, Digest: desc.Digest.String(), OriginalDigest: layer.String(),
		Type: soci.ArtifactEntryTypePrefetch, MediaType: soci.SociPrefetchMediaType, CreatedAt: time.Now(),
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("record prefetch artifact: %w", err)
	}
	progress("prefetch artifact %s for layer %s: %d span ranges", desc.Digest, layer, len(ranges))
	return desc, nil
}

// writeIndex stores idx with the garbage collection labels the builder
// gives an index (its config and blobs) and returns its descriptor.
func (a attacher) writeIndex(ctx context.Context, idx *soci.Index) (ocispec.Descriptor, error) {
	data, err := soci.MarshalIndex(idx)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("encode SOCI index: %w", err)
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: idx.ArtifactType,
		Digest: digest.FromBytes(data), Size: int64(len(data))}
	st := a.s.store
	if err := st.Push(ctx, desc, bytes.NewReader(data)); err != nil && !store.IsErrAlreadyExists(err) {
		return ocispec.Descriptor{}, fmt.Errorf("store SOCI index: %w", err)
	}
	if err := store.LabelGCRefContent(ctx, st, desc, "config", idx.Config.Digest.String()); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("label SOCI index: %w", err)
	}
	for i, b := range idx.Blobs {
		if err := store.LabelGCRefContent(ctx, st, desc, "ztoc."+strconv.Itoa(i), b.Digest.String()); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("label SOCI index: %w", err)
		}
	}
	return desc, nil
}

// replaceEntry records index desc in the artifact database in place of
// the old index, with the old entry's image, manifest and platform unless
// changed by edit.
func (a attacher) replaceEntry(desc ocispec.Descriptor, edit func(*soci.ArtifactEntry)) error {
	db := a.s.db
	e, err := db.GetArtifactEntry(a.old.Digest.String())
	if err != nil {
		return fmt.Errorf("artifact database entry of SOCI index %s: %w", a.old.Digest, err)
	}
	n := *e
	n.Digest, n.Size, n.CreatedAt = desc.Digest.String(), desc.Size, time.Now()
	if edit != nil {
		edit(&n)
	}
	if err := db.WriteArtifactEntry(&n); err != nil {
		return fmt.Errorf("record SOCI index %s: %w", desc.Digest, err)
	}
	if desc.Digest != a.old.Digest {
		if err := db.RemoveArtifactEntryByIndexDigest([]byte(a.old.Digest.String())); err != nil {
			return fmt.Errorf("forget SOCI index %s: %w", a.old.Digest, err)
		}
	}
	return nil
}

// writeV1 stores a v1 index (its subject is the image manifest, unchanged)
// and moves the image's label from the old index to it.
func (a attacher) writeV1(ctx context.Context, idx *soci.Index) (ocispec.Descriptor, error) {
	desc, err := a.writeIndex(ctx, idx)
	if err != nil {
		return desc, err
	}
	img := a.img
	var fields []string
	for k, v := range img.Labels {
		if v == a.old.Digest.String() {
			img.Labels[k] = desc.Digest.String()
			fields = append(fields, "labels."+k)
		}
	}
	if len(fields) == 0 {
		img.Labels = cloneLabels(img.Labels)
		img.Labels[imageIndexGCLabel+".trace"] = desc.Digest.String()
		fields = append(fields, "labels."+imageIndexGCLabel+".trace")
	}
	if _, err := a.s.client.ImageService().Update(ctx, img, fields...); err != nil {
		return desc, fmt.Errorf("label image %s with SOCI index %s: %w", img.Name, desc.Digest, err)
	}
	return desc, a.replaceEntry(desc, nil)
}

func cloneLabels(m map[string]string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}

// writeV2 stores a v2 index and the image that names it: the manifest's
// index annotation changes, so the manifest, the image index and the
// image's target get new digests (as `soci convert` makes them).
func (a attacher) writeV2(ctx context.Context, idx *soci.Index) (ocispec.Descriptor, error) {
	st := a.s.store
	if !images.IsIndexType(a.img.Target.MediaType) {
		return ocispec.Descriptor{}, fmt.Errorf("SOCI v2 image %s has no image index", a.img.Name)
	}
	desc, err := a.writeIndex(ctx, idx)
	if err != nil {
		return desc, err
	}
	mdata, err := readBounded(ctx, st, a.manifest, maxManifestBytes)
	if err != nil {
		return desc, fmt.Errorf("image manifest: %w", err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(mdata, &m); err != nil {
		return desc, fmt.Errorf("decode image manifest %s: %w", a.manifest.Digest, err)
	}
	if m.Annotations[soci.ImageAnnotationSociIndexDigest] != a.old.Digest.String() {
		return desc, fmt.Errorf("image manifest %s does not name SOCI index %s", a.manifest.Digest, a.old.Digest)
	}
	m.Annotations[soci.ImageAnnotationSociIndexDigest] = desc.Digest.String()
	mdesc, err := pushJSON(ctx, st, m, ocispec.MediaTypeImageManifest)
	if err != nil {
		return desc, fmt.Errorf("store image manifest: %w", err)
	}
	mdesc.Annotations = m.Annotations
	if err := store.LabelGCRefContent(ctx, st, mdesc, "config", m.Config.Digest.String()); err != nil {
		return desc, err
	}
	for i, l := range m.Layers {
		if err := store.LabelGCRefContent(ctx, st, mdesc, fmt.Sprintf("l.%d", i), l.Digest.String()); err != nil {
			return desc, err
		}
	}
	idata, err := readBounded(ctx, st, a.img.Target, maxManifestBytes)
	if err != nil {
		return desc, fmt.Errorf("image index: %w", err)
	}
	var oi ocispec.Index
	if err := json.Unmarshal(idata, &oi); err != nil {
		return desc, fmt.Errorf("decode image index %s: %w", a.img.Target.Digest, err)
	}
	found := 0
	for i := range oi.Manifests {
		d := &oi.Manifests[i]
		switch d.Digest {
		case a.manifest.Digest:
			d.Digest, d.Size, d.Annotations = mdesc.Digest, mdesc.Size, mdesc.Annotations
			found++
		case a.old.Digest:
			d.Digest, d.Size = desc.Digest, desc.Size
			d.Annotations = cloneLabels(d.Annotations)
			d.Annotations[soci.IndexAnnotationImageManifestDigest] = mdesc.Digest.String()
			found++
		}
	}
	if found != 2 {
		return desc, fmt.Errorf("image index %s does not list both manifest %s and SOCI index %s", a.img.Target.Digest, a.manifest.Digest, a.old.Digest)
	}
	odesc, err := pushJSON(ctx, st, oi, ocispec.MediaTypeImageIndex)
	if err != nil {
		return desc, fmt.Errorf("store image index: %w", err)
	}
	for i, d := range oi.Manifests {
		if err := store.LabelGCRefContent(ctx, st, odesc, fmt.Sprintf("m.%d", i), d.Digest.String()); err != nil {
			return desc, err
		}
	}
	img := a.img
	img.Target = odesc
	if _, err := a.s.client.ImageService().Update(ctx, img, "target"); err != nil {
		return desc, fmt.Errorf("point image %s at %s: %w", img.Name, odesc.Digest, err)
	}
	return desc, a.replaceEntry(desc, func(e *soci.ArtifactEntry) {
		e.OriginalDigest, e.Location, e.ImageDigest = mdesc.Digest.String(), mdesc.Digest.String(), odesc.Digest.String()
	})
}

// pushJSON stores v as JSON and returns its descriptor of media type mt.
func pushJSON(ctx context.Context, st store.Store, v any, mt string) (ocispec.Descriptor, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	desc := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(data), Size: int64(len(data))}
	if err := st.Push(ctx, desc, bytes.NewReader(data)); err != nil && !store.IsErrAlreadyExists(err) {
		return ocispec.Descriptor{}, err
	}
	return desc, nil
}

// readBounded reads desc from st: at most limit bytes, its size and digest
// checked.
func readBounded(ctx context.Context, st store.Store, desc ocispec.Descriptor, limit int64) ([]byte, error) {
	if desc.Size < 0 || desc.Size > limit {
		return nil, fmt.Errorf("%s: %d bytes, more than the %d allowed", desc.Digest, desc.Size, limit)
	}
	rc, err := st.Fetch(ctx, desc)
	if err != nil {
		return nil, fmt.Errorf("read %s from the content store: %w", desc.Digest, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, desc.Size+1))
	if err != nil {
		return nil, fmt.Errorf("read %s from the content store: %w", desc.Digest, err)
	}
	if int64(len(data)) != desc.Size || digest.FromBytes(data) != desc.Digest {
		return nil, fmt.Errorf("content of %s does not match its size and digest", desc.Digest)
	}
	return data, nil
}
