package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// tlsFiles are the PEM files of --tlscacert, --tlscert and --tlskey.
type tlsFiles struct {
	ca, cert, key string
}

// given says whether any of the files was named.
func (f tlsFiles) given() bool { return f.ca != "" || f.cert != "" || f.key != "" }

// config builds the TLS client configuration the registry connection
// starts from (hosts.toml can still add its own): the CA file replaces the
// system roots, the certificate and key are presented when the registry
// asks for a client certificate. It is nil when no flag asks for anything,
// so that containerd's defaults apply.
func (f tlsFiles) config(skipVerify bool) (*tls.Config, error) {
	if f.ca == "" && f.cert == "" && f.key == "" && !skipVerify {
		return nil, nil
	}
	cfg := &tls.Config{InsecureSkipVerify: skipVerify} //nolint:gosec // asked for with --skip-verify
	if f.ca != "" {
		data, err := os.ReadFile(f.ca)
		if err != nil {
			return nil, fmt.Errorf("read --%s: %w", tlsCACertFlag, err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("--%s %s: no PEM certificate in the file", tlsCACertFlag, f.ca)
		}
	}
	if (f.cert == "") != (f.key == "") {
		return nil, errors.New("--tlscert and --tlskey go together: give both or neither")
	}
	if f.cert != "" {
		pair, err := tls.LoadX509KeyPair(f.cert, f.key)
		if err != nil {
			return nil, fmt.Errorf("load TLS client certificate %s with key %s: %w", f.cert, f.key, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}
