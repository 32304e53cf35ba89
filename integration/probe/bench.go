package main

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Benchmark workloads (see bench/):
//
//	stat-all DIR           lstat every entry under DIR, then "stat-all <entries>"
//	read-fraction DIR PCT  read PCT percent of the regular files under DIR (every
//	                       (100/PCT)th in walk order), then "read-fraction <files> <bytes>"
//	chain DIR              read DIR/start, then the file its first line names
//	                       (relative to DIR), and so on until a file names "end";
//	                       then "chain <files> <bytes>"
//	read-all DIR           read every regular file under DIR, then "read-all <files> <bytes>"

// regularFiles lists the regular files under dir in walk (lexical) order and
// counts every entry.
func regularFiles(dir string) (files []string, entries int, err error) {
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		entries++
		if _, err := os.Lstat(p); err != nil {
			return err
		}
		if d.Type().IsRegular() {
			files = append(files, p)
		}
		return nil
	})
	return files, entries, err
}

func statAll(w io.Writer, dir string) error {
	_, n, err := regularFiles(dir)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "stat-all %d\n", n)
	return err
}

func readFraction(w io.Writer, dir, pct string) error {
	p, err := strconv.ParseFloat(pct, 64)
	if err != nil || p <= 0 || p > 100 {
		return usageError(fmt.Sprintf("read-fraction: bad percentage %q", pct))
	}
	files, _, err := regularFiles(dir)
	if err != nil {
		return err
	}
	var n, total int64
	acc := 0.0
	for _, f := range files {
		acc += p
		if acc < 100 {
			continue
		}
		acc -= 100
		m, err := readWhole(f)
		if err != nil {
			return err
		}
		n++
		total += m
	}
	_, err = fmt.Fprintf(w, "read-fraction %d %d\n", n, total)
	return err
}

func readAll(w io.Writer, dir string) error {
	files, _, err := regularFiles(dir)
	if err != nil {
		return err
	}
	var total int64
	for _, f := range files {
		m, err := readWhole(f)
		if err != nil {
			return err
		}
		total += m
	}
	_, err = fmt.Fprintf(w, "read-all %d %d\n", len(files), total)
	return err
}

func chain(w io.Writer, dir string) error {
	next := "start"
	var n, total int64
	for next != "end" {
		f, err := os.Open(filepath.Join(dir, next))
		if err != nil {
			return err
		}
		r := bufio.NewReader(f)
		line, err := r.ReadString('\n')
		if err != nil {
			f.Close()
			return fmt.Errorf("read link of %s: %w", next, err)
		}
		rest, err := io.Copy(io.Discard, r)
		f.Close()
		if err != nil {
			return err
		}
		n++
		total += int64(len(line)) + rest
		next = strings.TrimSpace(line)
	}
	_, err := fmt.Fprintf(w, "chain %d %d\n", n, total)
	return err
}

func readWhole(p string) (int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return io.Copy(io.Discard, f)
}
