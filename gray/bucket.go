package gray

import "math/bits"

// Bucket returns the bucket in [0, 10000) of a sticky key for a service. A lane with weight w (in
// hundredths of a percent) starting at bucket 0 takes exactly the keys whose bucket is below w. The
// function is part of graylane's contract: every enforcer computes the same bucket.
func Bucket(service, key string) int {
	return int(bucketOf(bucketSeed(service), key))
}

// The bucket hash reads the key eight bytes at a time and mixes them with 64×64→128-bit
// multiplications whose two halves are folded together (fold(x, y) = high(x·y) xor low(x·y)), so a
// key costs one multiplication per 16 bytes: a 36-character UUID hashes in about 7 ns, where a
// byte-at-a-time hash takes 30. Words are little-endian. For a key k of n bytes and a seed s:
//
//	h = s xor n
//	while more than 16 bytes are left: h = fold(word(k[0:8]) xor k1 xor h, word(k[8:16]) xor k2); k = k[16:]
//	a, b = the last 1–16 bytes (see tail)
//	h = fold(fold(a xor k1 xor h, b xor k2) xor k3, k1)
//
// The seed is that hash of the service name with s = 0, and the bucket is the high 64 bits of
// h · 10000. The constants are wyhash's.
const (
	bucketK1 = 0xa0761d6478bd642f
	bucketK2 = 0xe7037ed1a0b428db
	bucketK3 = 0x8ebc6af09c88c6e3
)

func bucketSeed(service string) uint64 { return bucketHash(0, service) }

func bucketOf(seed uint64, key string) uint32 {
	hi, _ := bits.Mul64(bucketHash(seed, key), uint64(MaxWeight))
	return uint32(hi)
}

func bucketHash(seed uint64, k string) uint64 {
	h := seed ^ uint64(len(k))
	for len(k) > 16 {
		h = fold(word64(k)^bucketK1^h, word64(k[8:])^bucketK2)
		k = k[16:]
	}
	a, b := tail(k)
	return fold(fold(a^bucketK1^h, b^bucketK2)^bucketK3, bucketK1)
}

func fold(x, y uint64) uint64 {
	hi, lo := bits.Mul64(x, y)
	return hi ^ lo
}

// tail reads the last 0–16 bytes of a key as two words: 9–16 bytes as the first eight and the last
// eight (overlapping); 4–8 bytes as the first four (high half) and the last four; 1–3 bytes as the
// first, middle and last byte. With the length in the hash, no two keys read alike.
func tail(k string) (a, b uint64) {
	switch n := len(k); {
	case n > 8:
		return word64(k), word64(k[n-8:])
	case n >= 4:
		return word32(k)<<32 | word32(k[n-4:]), 0
	case n > 0:
		return uint64(k[0])<<16 | uint64(k[n/2])<<8 | uint64(k[n-1]), 0
	}
	return 0, 0
}

// word64 reads the first eight bytes of s as a little-endian word.
func word64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

// word32 reads the first four bytes of s as a little-endian word.
func word32(s string) uint64 {
	_ = s[3]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24
}
