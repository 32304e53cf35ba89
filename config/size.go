package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ByteSize is a size in bytes written in the file as a string with an
// optional unit: "8mb", "512 KB", "1.5gb", "4096". Units are b, kb, mb and gb
// in any case, with binary multiples (1kb = 1024 bytes). The empty string,
// and any size that rounds down to zero bytes, is Unbounded.
type ByteSize int64

// Size units, in the order MarshalText prefers them.
const (
	kib = 1 << 10
	mib = 1 << 20
	gib = 1 << 30
)

// UnmarshalText parses a size as described on ByteSize.
func (b *ByteSize) UnmarshalText(text []byte) error {
	n, err := ParseByteSize(string(text))
	if err != nil {
		return err
	}
	*b = n
	return nil
}

// MarshalText writes b in the largest unit that represents it exactly, and
// Unbounded (or any non-positive size) as the empty string.
func (b ByteSize) MarshalText() ([]byte, error) {
	if b <= 0 {
		return []byte{}, nil
	}
	for _, u := range []struct {
		size int64
		name string
	}{{gib, "gb"}, {mib, "mb"}, {kib, "kb"}} {
		if int64(b)%u.size == 0 {
			return []byte(strconv.FormatInt(int64(b)/u.size, 10) + u.name), nil
		}
	}
	return []byte(strconv.FormatInt(int64(b), 10) + "b"), nil
}

// ParseByteSize parses s as described on ByteSize.
func ParseByteSize(s string) (ByteSize, error) {
	trimmed := strings.TrimSpace(s)
	if trimmed == "" {
		return Unbounded, nil
	}
	number, unit := splitNumber(trimmed)
	multiplier, ok := unitMultiplier(strings.TrimSpace(unit))
	if number == "" || !ok {
		return 0, fmt.Errorf("invalid size %q: want a number with an optional unit b, kb, mb or gb, such as \"8mb\"", s)
	}
	if !strings.Contains(number, ".") {
		// Whole numbers exactly: a float would round sizes above 2^53 and
		// refuse math.MaxInt64 bytes, which MarshalText writes as such.
		n, err := strconv.ParseInt(number, 10, 64)
		if err != nil || n > math.MaxInt64/multiplier {
			return 0, fmt.Errorf("invalid size %q: too large", s)
		}
		if n == 0 {
			return Unbounded, nil
		}
		return ByteSize(n * multiplier), nil
	}
	value, err := strconv.ParseFloat(number, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q: %w", s, err)
	}
	bytes := value * float64(multiplier)
	if bytes >= math.MaxInt64 {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	if int64(bytes) == 0 {
		return Unbounded, nil
	}
	return ByteSize(bytes), nil
}

// splitNumber splits s after its leading unsigned decimal number (digits,
// optionally followed by a fraction). A malformed number yields "".
func splitNumber(s string) (number, rest string) {
	i := countDigits(s)
	if i == 0 {
		return "", s
	}
	if i < len(s) && s[i] == '.' {
		frac := countDigits(s[i+1:])
		if frac == 0 {
			return "", s
		}
		i += 1 + frac
	}
	return s[:i], s[i:]
}

func countDigits(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}

func unitMultiplier(unit string) (int64, bool) {
	switch strings.ToLower(unit) {
	case "", "b":
		return 1, true
	case "kb":
		return kib, true
	case "mb":
		return mib, true
	case "gb":
		return gib, true
	}
	return 0, false
}
