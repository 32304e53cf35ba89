package harness

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// accessLine matches a request line of the registry's access log (combined
// log format): "GET /v2/<repo>/blobs/<digest> HTTP/1.1" 206 1234
var accessLine = regexp.MustCompile(`"(GET|HEAD) (\S+) HTTP/[0-9.]+" (\d{3}) (\d+|-)`)

// Request is one request in the registry's access log.
type Request struct {
	Method string
	URI    string // path and query, as sent
	Status int
	Bytes  int64 // body bytes sent; 0 for "-"
}

// RegistryRequests returns the GET and HEAD requests of the registry's
// access log, in order.
func RegistryRequests(logPath string) ([]Request, error) {
	data, err := os.ReadFile(logPath)
	if err != nil {
		return nil, fmt.Errorf("read registry access log: %w", err)
	}
	var out []Request
	for _, line := range strings.Split(string(data), "\n") {
		m := accessLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		status, _ := strconv.Atoi(m[3])
		n, _ := strconv.ParseInt(m[4], 10, 64) // "-": 0
		out = append(out, Request{Method: m[1], URI: m[2], Status: status, Bytes: n})
	}
	return out, nil
}

// RegistryBytesServed sums the bytes of blob bodies the registry sent, as
// its access log records them.
func RegistryBytesServed(logPath string) (int64, error) {
	reqs, err := RegistryRequests(logPath)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, r := range reqs {
		if r.Method == "GET" && strings.Contains(r.URI, "/blobs/") {
			total += r.Bytes
		}
	}
	return total, nil
}
