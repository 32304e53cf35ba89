package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// pause blocks until SIGTERM or SIGINT, then prints "paused <signal>": the
// pod sandbox process of the CRI tests (a stand-in for the pause image, so
// no image needs to come from the internet). As PID 1 of its namespace it
// must handle the signals itself: the kernel ignores unhandled ones.
func pause(w io.Writer) error {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	s := <-ch
	_, err := fmt.Fprintf(w, "paused %v\n", s)
	return err
}
