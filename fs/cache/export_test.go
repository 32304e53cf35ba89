package cache

import "os"

// FailWrites makes every later Put of d fail while writing, with err.
func (d *Disk) FailWrites(err error) {
	d.writeFile = func(f *os.File, data []byte) (int, error) {
		n, _ := f.Write(data[:len(data)/2])
		return n, err
	}
}
