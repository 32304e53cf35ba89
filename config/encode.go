package config

import (
	"fmt"
	"io"

	"github.com/pelletier/go-toml/v2"
)

// Encode writes c as a TOML configuration file that Parse reads back to an
// equal Config. It backs `soci-snapshotter-grpc config default` and
// `config dump`.
func (c *Config) Encode(w io.Writer) error {
	out := *c
	// The file spells "unlimited" as a negative number: 0 would read back
	// as the default limit.
	if out.MaxConcurrency == 0 {
		out.MaxConcurrency = -1
	}
	enc := toml.NewEncoder(w)
	enc.SetIndentTables(true)
	if err := enc.Encode(&out); err != nil {
		return fmt.Errorf("encode config: %w", err)
	}
	return nil
}
