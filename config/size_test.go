package config

import "testing"

func TestParseByteSize(t *testing.T) {
	tests := []struct {
		in   string
		want ByteSize
	}{
		{"", Unbounded},
		{"   ", Unbounded},
		{"0", Unbounded},
		{"0mb", Unbounded},
		{"0.4", Unbounded},
		{"4096", 4096},
		{"100b", 100},
		{"1kb", 1 << 10},
		{"8mb", 8 << 20},
		{"8MB", 8 << 20},
		{"8 Mb", 8 << 20},
		{" 16mb ", 16 << 20},
		{"2gb", 2 << 30},
		{"1.5mb", 3 << 19},
		{"1.5b", 1},
		{"9223372036854775807", 9223372036854775807},
		{"9223372036854775807b", 9223372036854775807},
		{"9007199254740993", 9007199254740993},
		{"8589934591gb", 8589934591 << 30},
	}
	for _, tc := range tests {
		got, err := ParseByteSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestParseByteSizeErrors(t *testing.T) {
	for _, in := range []string{"mb", "8xb", "8 m b", "-8mb", "+8mb", "8.", ".5mb", "1e3", "8mb8", "0x10", "8_000", "99999999999gb", "1tb", "9223372036854775808", "8589934592gb", "9223372036854775807kb", "99999999999999999999999"} {
		if got, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestByteSizeMarshalText(t *testing.T) {
	tests := []struct {
		in   ByteSize
		want string
	}{
		{Unbounded, ""},
		{0, ""},
		{1, "1b"},
		{1000, "1000b"},
		{1024, "1kb"},
		{3 << 19, "1536kb"},
		{8 << 20, "8mb"},
		{2 << 30, "2gb"},
	}
	for _, tc := range tests {
		text, err := tc.in.MarshalText()
		if err != nil || string(text) != tc.want {
			t.Errorf("MarshalText(%d) = %q, %v; want %q", tc.in, text, err, tc.want)
		}
		if tc.in <= 0 {
			continue
		}
		var back ByteSize
		if err := back.UnmarshalText(text); err != nil || back != tc.in {
			t.Errorf("UnmarshalText(%q) = %d, %v; want %d", text, back, err, tc.in)
		}
	}
}
