package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

// maxPrefetchJSONBytes bounds the --prefetch-files-json file: a list of
// paths, not a data set.
const maxPrefetchJSONBytes = 16 << 20

// prefetchPaths gathers the paths in the image to prefetch: those of
// --prefetch-file, then those of the JSON array in jsonFile. Paths are
// trimmed and empty ones dropped; the index builder resolves them against
// the image's files (with or without a leading slash).
func prefetchPaths(flags []string, jsonFile string) ([]string, error) {
	paths := trimPaths(flags)
	if jsonFile == "" {
		return paths, nil
	}
	fi, err := os.Stat(jsonFile)
	if err != nil {
		return nil, fmt.Errorf("read --%s: %w", prefetchJSONFlag, err)
	}
	if fi.Size() > maxPrefetchJSONBytes {
		return nil, fmt.Errorf("--%s %s: %d bytes is more than the %d a path list may have", prefetchJSONFlag, jsonFile, fi.Size(), maxPrefetchJSONBytes)
	}
	data, err := os.ReadFile(jsonFile)
	if err != nil {
		return nil, fmt.Errorf("read --%s: %w", prefetchJSONFlag, err)
	}
	var list []string
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("--%s %s: want a JSON array of path strings: %w", prefetchJSONFlag, jsonFile, err)
	}
	return append(paths, trimPaths(list)...), nil
}

func trimPaths(in []string) []string {
	var out []string
	for _, p := range in {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
