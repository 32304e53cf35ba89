// Command probe is the entrypoint of the integration tests' images. It reports
// what a container sees of its root filesystem (file digests, a full walk with
// attributes and xattrs), writes files and reads file prefixes, so that a test
// can compare a lazily loaded container with one unpacked by overlayfs. It is
// not part of the snapshotter's flow; it exercises the flow's Read step.
//
// Usage: probe CMD ARGS... [-- CMD ARGS...]...
//
//	sha256 PATH...         "<path> <hex>", "<path> MISSING", "<path> DIR" or "<path> ERROR <err>"
//	walk ROOT [EXCLUDE...] one line per entry under ROOT, sorted, then "walk-done <count>"
//	write PATH CONTENT     writes the file, then "wrote <path>"
//	read-bytes PATH N      reads up to N bytes from the start, then "<path> <bytes read>"
//	ready                  "ready"
//	slow-read PATH CHUNK MS reads PATH CHUNK bytes at a time with MS ms between
//	                       reads, then "<path> <hex> reads=<n>" (a failed read
//	                       stops the chain with exit status 1)
//	soak LIST OUT PAUSE    read listed files until SIGTERM, counts in OUT (soak.go)
//	pause                  waits for SIGTERM or SIGINT, then "paused <signal>" (pause.go)
//
// Paths containing spaces or unprintable characters are printed Go-quoted.
// Failures of write and read-bytes stop the chain with exit status 1; usage
// errors exit with status 2 before any command runs.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"
)

func main() {
	code := 0
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "probe: %v\n", err)
		code = 1
		var usage usageError
		if errors.As(err, &usage) {
			code = 2
		}
	}
	os.Exit(code)
}

type usageError string

func (e usageError) Error() string { return string(e) }

type command struct {
	name string
	args []string
}

// run parses the whole chain, then runs its commands in order, writing their
// output to stdout.
func run(args []string, stdout io.Writer) error {
	cmds, err := parse(args)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(stdout)
	for _, c := range cmds {
		err := c.run(w)
		if ferr := w.Flush(); err == nil {
			err = ferr
		}
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
	}
	return nil
}

func parse(args []string) ([]command, error) {
	if len(args) == 0 {
		return nil, usageError("no command (want sha256, walk, write, read-bytes or ready)")
	}
	var cmds []command
	for len(args) > 0 {
		i := 0
		for i < len(args) && args[i] != "--" {
			i++
		}
		if i == 0 {
			return nil, usageError("empty command in chain")
		}
		c := command{name: args[0], args: args[1:i]}
		lo, hi, ok := arity(c.name)
		if !ok {
			return nil, usageError(fmt.Sprintf("unknown command %q", c.name))
		}
		if len(c.args) < lo || (hi >= 0 && len(c.args) > hi) {
			return nil, usageError(fmt.Sprintf("%s: wrong number of arguments: %d", c.name, len(c.args)))
		}
		if c.name == "read-bytes" {
			if n, err := strconv.ParseInt(c.args[1], 10, 64); err != nil || n < 0 {
				return nil, usageError(fmt.Sprintf("read-bytes: bad count %q", c.args[1]))
			}
		}
		cmds = append(cmds, c)
		args = args[i:]
		if len(args) > 0 {
			args = args[1:] // the "--"
			if len(args) == 0 {
				return nil, usageError("empty command at the end of the chain")
			}
		}
	}
	return cmds, nil
}

// arity returns the smallest and largest (-1: any) argument counts of a command.
func arity(name string) (lo, hi int, ok bool) {
	switch name {
	case "sha256":
		return 1, -1, true
	case "walk":
		return 1, -1, true
	case "write", "read-bytes":
		return 2, 2, true
	case "ready", "pause":
		return 0, 0, true
	case "stat-all", "chain", "read-all":
		return 1, 1, true
	case "read-fraction":
		return 2, 2, true
	case "slow-read", "soak":
		return 3, 3, true
	}
	return 0, 0, false
}

func (c command) run(w io.Writer) error {
	switch c.name {
	case "sha256":
		return sumFiles(w, c.args)
	case "walk":
		return walk(w, c.args[0], c.args[1:])
	case "write":
		return writeFile(w, c.args[0], c.args[1])
	case "read-bytes":
		n, _ := strconv.ParseInt(c.args[1], 10, 64) // checked by parse
		return readBytes(w, c.args[0], n)
	case "ready":
		_, err := fmt.Fprintln(w, "ready")
		return err
	case "pause":
		return pause(w)
	case "stat-all":
		return statAll(w, c.args[0])
	case "read-fraction":
		return readFraction(w, c.args[0], c.args[1])
	case "chain":
		return chain(w, c.args[0])
	case "read-all":
		return readAll(w, c.args[0])
	case "slow-read":
		return slowRead(w, c.args[0], c.args[1], c.args[2])
	case "soak":
		return soakCommand(w, c.args[0], c.args[1], c.args[2])
	}
	return usageError(fmt.Sprintf("unknown command %q", c.name))
}

// sumFiles prints the sha256 of each path's content (following symlinks).
// Problems with a path are reported on its line, not as errors.
func sumFiles(w io.Writer, paths []string) error {
	for _, p := range paths {
		var result string
		fi, err := os.Stat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
			result = "MISSING"
		case err != nil:
			result = "ERROR " + err.Error()
		case fi.IsDir():
			result = "DIR"
		default:
			if result, err = fileSHA256(p); err != nil {
				result = "ERROR " + err.Error()
			}
		}
		if _, err := fmt.Fprintf(w, "%s %s\n", quote(p), result); err != nil {
			return err
		}
	}
	return nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func writeFile(w io.Writer, p, content string) error {
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		fmt.Fprintf(w, "%s ERROR %v\n", quote(p), err)
		return err
	}
	_, err := fmt.Fprintf(w, "wrote %s\n", quote(p))
	return err
}

// readBytes reads up to n bytes from the start of p in 1 MiB reads.
func readBytes(w io.Writer, p string, n int64) error {
	read, err := readPrefix(p, n)
	if err != nil {
		fmt.Fprintf(w, "%s ERROR %v\n", quote(p), err)
		return err
	}
	_, err = fmt.Fprintf(w, "%s %d\n", quote(p), read)
	return err
}

func readPrefix(p string, n int64) (int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, min(n, 1<<20))
	var read int64
	for read < n {
		m, err := f.Read(buf[:min(n-read, int64(len(buf)))])
		read += int64(m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return read, err
		}
	}
	return read, nil
}

// quote returns s as is, or Go-quoted when it is empty or has spaces,
// quotes or unprintable characters, so that output fields stay one word.
func quote(s string) string {
	odd := func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) || r == '"' }
	if s == "" || !utf8.ValidString(s) || strings.ContainsFunc(s, odd) {
		return strconv.Quote(s)
	}
	return s
}

// slowRead reads p chunk bytes at a time, pausing ms milliseconds between
// reads, so that reads of a lazily loaded file span a restart of the daemon.
func slowRead(w io.Writer, p, chunk, ms string) error {
	n, err := strconv.Atoi(chunk)
	if err != nil || n <= 0 {
		return usageError(fmt.Sprintf("slow-read: bad chunk %q", chunk))
	}
	pause, err := strconv.Atoi(ms)
	if err != nil || pause < 0 {
		return usageError(fmt.Sprintf("slow-read: bad pause %q", ms))
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, n)
	reads := 0
	for {
		k, err := io.ReadFull(f, buf)
		h.Write(buf[:k])
		reads++
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("slow-read %s after %d reads: %w", p, reads, err)
		}
		time.Sleep(time.Duration(pause) * time.Millisecond)
	}
	_, err = fmt.Fprintf(w, "%s %s reads=%d\n", quote(p), hex.EncodeToString(h.Sum(nil)), reads)
	return err
}
