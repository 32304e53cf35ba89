package cache

import (
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
)

// keyPath turns a key into a clean relative slash path that cannot leave the
// cache directory.
func keyPath(key string) (string, error) {
	p := strings.ReplaceAll(key, ":", "/")
	if p == "" || strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("cache key %q: %w", key, errdefs.ErrInvalidArgument)
	}
	for _, c := range strings.Split(p, "/") {
		if c == "" || strings.HasPrefix(c, ".") {
			return "", fmt.Errorf("cache key %q: empty or dot component: %w", key, errdefs.ErrInvalidArgument)
		}
	}
	return p, nil
}
