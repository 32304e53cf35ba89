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

// RegistryBytesServed sums the bytes of blob bodies the registry sent, as
// its access log records them.
func RegistryBytesServed(logPath string) (int64, error) {
	data, err := os.ReadFile(logPath)
	if err != nil {
		return 0, fmt.Errorf("read registry access log: %w", err)
	}
	var total int64
	for _, line := range strings.Split(string(data), "\n") {
		m := accessLine.FindStringSubmatch(line)
		if m == nil || m[1] != "GET" || !strings.Contains(m[2], "/blobs/") || m[4] == "-" {
			continue
		}
		n, err := strconv.ParseInt(m[4], 10, 64)
		if err != nil {
			continue
		}
		total += n
	}
	return total, nil
}
