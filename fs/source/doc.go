// Package source is the input of step 2 (discovery) of the flow in
// docs/architecture.md: it turns the labels containerd (with remote snapshot
// annotations) or nerdctl attach to a layer's Prepare into a typed Target
// naming the image, its manifest, the layer and an optional SOCI index.
//
// Labels are untrusted input: FromLabels validates every value it returns
// and never panics.
package source
