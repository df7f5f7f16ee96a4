/* token.h - kernel only, included by relay.c: the C decoder of route tokens.
 *
 * icegate/token.py is the reference and tests/data/token_vectors.json drives both.
 * A token is 24 characters of standard base64 (RFC 8839 ice-char, no padding) for 18
 * bytes: version|key id, cluster (BE16), transceiver index (BE16), 40-bit nonce, then
 * SipHash-2-4(route key, bytes 0-9) little endian. Checks in the reference's order:
 * alphabet, version, key id, MAC (docs/DATAPATH.md section 4).
 */
#ifndef ICEGATE_TOKEN_H
#define ICEGATE_TOKEN_H

#include "shared.h"

#define TOKEN_MAC_OFFSET 10

struct route_token {
	__u8 raw[TOKEN_BYTES];
	__u16 pad;
	__u32 tag;       /* low 32 bits of the MAC */
	__u64 mac;
	struct backend_key backend;
	__u32 key_id;
};

/* Standard base64 alphabet value of `c`, or -1 (RFC 4648 table 1). The URL-safe '-'
 * and '_' are not ice-char and fail here. */
static __always_inline int b64_value(__u8 c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Decode the TOKEN_CHARS characters at `chars` (the caller checked they are in the
 * packet) and check the version: the part of verification that needs no key. */
static __always_inline __u32 token_decode(const __u8 *chars, struct route_token *tok)
{
#pragma unroll
	for (int group = 0; group < TOKEN_CHARS / 4; group++) {
		int a = b64_value(chars[group * 4]);
		int b = b64_value(chars[group * 4 + 1]);
		int c = b64_value(chars[group * 4 + 2]);
		int d = b64_value(chars[group * 4 + 3]);

		if ((a | b | c | d) < 0)
			return STAT_DROP_TOKEN_ALPHABET;
		__u32 bits = (a << 18) | (b << 12) | (c << 6) | d;

		tok->raw[group * 3] = bits >> 16;
		tok->raw[group * 3 + 1] = bits >> 8;
		tok->raw[group * 3 + 2] = bits;
	}
	if ((tok->raw[0] >> 4) != TOKEN_VERSION)
		return STAT_DROP_TOKEN_VERSION;
	tok->key_id = tok->raw[0] & 0x0f;
	tok->backend.cluster = (tok->raw[1] << 8) | tok->raw[2];
	tok->backend.index = (tok->raw[3] << 8) | tok->raw[4];
	__builtin_memcpy(&tok->mac, &tok->raw[TOKEN_MAC_OFFSET], 8); /* little endian, as BPF */
	tok->tag = (__u32)tok->mac;
	return CONTINUE;
}

/* ---- SipHash-2-4 (Aumasson and Bernstein), specialised to the 10-byte token body. ---- */
#define ROTL64(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND(v0, v1, v2, v3)                                                        \
	do {                                                                            \
		v0 += v1; v1 = ROTL64(v1, 13); v1 ^= v0; v0 = ROTL64(v0, 32);           \
		v2 += v3; v3 = ROTL64(v3, 16); v3 ^= v2;                                \
		v0 += v3; v3 = ROTL64(v3, 21); v3 ^= v0;                                \
		v2 += v1; v1 = ROTL64(v1, 17); v1 ^= v2; v2 = ROTL64(v2, 32);           \
	} while (0)

static __always_inline __u64 siphash_token_body(__u64 k0, __u64 k1, const __u8 *body)
{
	__u64 v0 = k0 ^ 0x736f6d6570736575ULL;
	__u64 v1 = k1 ^ 0x646f72616e646f6dULL;
	__u64 v2 = k0 ^ 0x6c7967656e657261ULL;
	__u64 v3 = k1 ^ 0x7465646279746573ULL;
	__u64 m;

	__builtin_memcpy(&m, body, 8); /* first block, little endian */
	v3 ^= m;
	SIPROUND(v0, v1, v2, v3);
	SIPROUND(v0, v1, v2, v3);
	v0 ^= m;

	/* Last block: the remaining 2 bytes and the message length (10) in the top byte. */
	m = ((__u64)TOKEN_MAC_OFFSET << 56) | ((__u64)body[9] << 8) | body[8];
	v3 ^= m;
	SIPROUND(v0, v1, v2, v3);
	SIPROUND(v0, v1, v2, v3);
	v0 ^= m;

	v2 ^= 0xff;
	SIPROUND(v0, v1, v2, v3);
	SIPROUND(v0, v1, v2, v3);
	SIPROUND(v0, v1, v2, v3);
	SIPROUND(v0, v1, v2, v3);
	return v0 ^ v1 ^ v2 ^ v3;
}

/* The keyed half of verification, for a token token_decode() accepted; `key` is
 * route_keys[tok->key_id] (bcc rewrites map calls only in relay.c, so it looks it up). */
static __always_inline __u32 token_verify(const struct route_token *tok, const struct route_key *key)
{
	if (!key || !key->valid)
		return STAT_DROP_TOKEN_KEY;
	if (siphash_token_body(key->k0, key->k1, tok->raw) != tok->mac)
		return STAT_DROP_TOKEN_MAC;
	return CONTINUE;
}

#endif /* ICEGATE_TOKEN_H */
