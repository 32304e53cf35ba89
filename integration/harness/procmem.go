package harness

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ProcMem is what /proc says about a live process's memory now, in bytes.
// PSS counts each shared page (the executable's text, shared by a daemon
// and its FUSE hosts) divided among the processes mapping it, so the PSS
// of several processes adds up to what they hold together.
type ProcMem struct {
	PSS     int64 // smaps_rollup Pss
	PSSAnon int64 // smaps_rollup Pss_Anon (0 on kernels before 5.9)
	PSSFile int64 // smaps_rollup Pss_File (0 on kernels before 5.9)
	RSSAnon int64 // status RssAnon: private anonymous memory (heap, stacks)
	RSSFile int64 // status RssFile: file-backed pages mapped (binary text, data)
}

// ReadProcMem reads /proc/PID/smaps_rollup and /proc/PID/status.
func ReadProcMem(pid int) (ProcMem, error) {
	var m ProcMem
	rollup, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return m, fmt.Errorf("read smaps_rollup of pid %d: %w", pid, err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m, fmt.Errorf("read status of pid %d: %w", pid, err)
	}
	fields := map[string]*int64{
		"Pss:": &m.PSS, "Pss_Anon:": &m.PSSAnon, "Pss_File:": &m.PSSFile,
		"RssAnon:": &m.RSSAnon, "RssFile:": &m.RSSFile,
	}
	for _, text := range []string{string(rollup), string(status)} {
		parseKB(text, fields)
	}
	return m, nil
}

// parseKB sets *fields[key] from lines "key  N kB".
func parseKB(text string, fields map[string]*int64) {
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		if p, ok := fields[f[0]]; ok {
			if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				*p = kb << 10
			}
		}
	}
}
