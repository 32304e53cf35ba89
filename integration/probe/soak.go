package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The restart-survival workload (integration/survive_test.go):
//
//	soak LIST OUT PAUSE    LIST has lines "<sha256 hex> <path>"; read the listed
//	                       files whole, again and again, each pass in a new random
//	                       order, with PAUSE (a Go duration) between two reads, and
//	                       after every read replace OUT with one line
//	                       "reads=N errors=N mismatches=N last_error=QUOTED"
//	                       (reads: files read whole with the right digest; errors:
//	                       opens or reads that failed; mismatches: files read whole
//	                       with another digest). Runs until SIGTERM or SIGINT.

// soakCounts is what OUT holds.
type soakCounts struct {
	reads, errors, mismatches int64
	lastError                 string
}

func (c soakCounts) String() string {
	return fmt.Sprintf("reads=%d errors=%d mismatches=%d last_error=%q\n", c.reads, c.errors, c.mismatches, c.lastError)
}

type soakFile struct{ path, sum string }

func soakCommand(w io.Writer, list, out, pause string) error {
	d, err := time.ParseDuration(pause)
	if err != nil || d < 0 {
		return usageError(fmt.Sprintf("soak: bad pause %q", pause))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	files, err := readSoakList(list)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(w, "soak %d files\n", len(files)); err != nil {
		return err
	}
	if f, ok := w.(interface{ Flush() error }); ok {
		if err := f.Flush(); err != nil {
			return err
		}
	}
	return soak(ctx, files, out, d, 0, rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(os.Getpid()))))
}

// readSoakList parses LIST.
func readSoakList(list string) ([]soakFile, error) {
	f, err := os.Open(list)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var files []soakFile
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 2 || len(fields[0]) != 64 {
			return nil, fmt.Errorf("%s: bad line %q (want \"<sha256 hex> <path>\")", list, s.Text())
		}
		files = append(files, soakFile{path: fields[1], sum: fields[0]})
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", list, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%s lists no files", list)
	}
	return files, nil
}

// soak reads files in random passes until ctx ends (or, when passes > 0,
// after that many passes), writing the counts to out after every read.
func soak(ctx context.Context, files []soakFile, out string, pause time.Duration, passes int, rnd *rand.Rand) error {
	var c soakCounts
	if err := writeCounts(out, c); err != nil {
		return err
	}
	for pass := 0; passes <= 0 || pass < passes; pass++ {
		for _, i := range rnd.Perm(len(files)) {
			if ctx.Err() != nil {
				return nil
			}
			f := files[i]
			switch got, err := fileSHA256(f.path); {
			case err != nil:
				c.errors++
				c.lastError = err.Error()
			case got != f.sum:
				c.mismatches++
				c.lastError = fmt.Sprintf("%s: sha256 %s, want %s", f.path, got, f.sum)
			default:
				c.reads++
			}
			if err := writeCounts(out, c); err != nil {
				return err
			}
			if pause > 0 {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(pause):
				}
			}
		}
	}
	return nil
}

// writeCounts replaces out atomically (a temporary file renamed over it),
// so that a reader sees one whole line.
func writeCounts(out string, c soakCounts) error {
	tmp, err := os.CreateTemp(filepath.Dir(out), ".counts-*")
	if err != nil {
		return fmt.Errorf("write counts: %w", err)
	}
	_, werr := tmp.WriteString(c.String())
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write counts: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write counts: %w", err)
	}
	return nil
}
