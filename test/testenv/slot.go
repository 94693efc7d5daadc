package testenv

import (
	"strconv"
	"strings"
)

// NumSlots is the number of hash slots of a Redis Cluster.
const NumSlots = 16384

// KeySlot returns the Redis Cluster hash slot of key: CRC16 (XMODEM) of the
// key, or of its hash tag (the text between the first "{" and the next "}",
// if not empty), modulo 16384.
func KeySlot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return int(crc16(key)) % NumSlots
}

// KeyInSlot returns a short key that hashes to slot. Wrap it in braces to
// make as many keys as needed in that slot: "{"+KeyInSlot(s)+"}:a",
// "{"+KeyInSlot(s)+"}:b", ...
func KeyInSlot(slot int) string {
	if slot < 0 || slot >= NumSlots {
		panic("testenv: slot out of range: " + strconv.Itoa(slot))
	}
	for i := 0; ; i++ {
		k := "k" + strconv.Itoa(i)
		if KeySlot(k) == slot {
			return k
		}
	}
}

// crc16 is CRC-16/XMODEM (polynomial 0x1021, initial value 0), as used by
// Redis Cluster.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
