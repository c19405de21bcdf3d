//! QPACK (RFC 9204) without a dynamic table.
//!
//! The encoder writes Required Insert Count 0 and Base 0, then one field line per header: an indexed
//! static line when name and value match a static entry, a literal with a static name reference when
//! only the name does, a literal name otherwise (strings as raw octets, never Huffman).
//!
//! The decoder takes what any encoder may send to a peer whose table capacity is 0: static references,
//! literal names and values, Huffman-coded strings (RFC 7541 Appendix B) and the never-index bit. A
//! non-zero Required Insert Count or any dynamic-table reference is `QPACK_DECOMPRESSION_FAILED`.

use super::{code, H3Error, HeaderList};

/// The static table (RFC 9204 Appendix A): index -> (name, value).
pub const STATIC_TABLE: [(&str, &str); 99] = [
    (":authority", ""),
    (":path", "/"),
    ("age", "0"),
    ("content-disposition", ""),
    ("content-length", "0"),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("referer", ""),
    ("set-cookie", ""),
    (":method", "CONNECT"),
    (":method", "DELETE"),
    (":method", "GET"),
    (":method", "HEAD"),
    (":method", "OPTIONS"),
    (":method", "POST"),
    (":method", "PUT"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "103"),
    (":status", "200"),
    (":status", "304"),
    (":status", "404"),
    (":status", "503"),
    ("accept", "*/*"),
    ("accept", "application/dns-message"),
    ("accept-encoding", "gzip, deflate, br"),
    ("accept-ranges", "bytes"),
    ("access-control-allow-headers", "cache-control"),
    ("access-control-allow-headers", "content-type"),
    ("access-control-allow-origin", "*"),
    ("cache-control", "max-age=0"),
    ("cache-control", "max-age=2592000"),
    ("cache-control", "max-age=604800"),
    ("cache-control", "no-cache"),
    ("cache-control", "no-store"),
    ("cache-control", "public, max-age=31536000"),
    ("content-encoding", "br"),
    ("content-encoding", "gzip"),
    ("content-type", "application/dns-message"),
    ("content-type", "application/javascript"),
    ("content-type", "application/json"),
    ("content-type", "application/x-www-form-urlencoded"),
    ("content-type", "image/gif"),
    ("content-type", "image/jpeg"),
    ("content-type", "image/png"),
    ("content-type", "text/css"),
    ("content-type", "text/html; charset=utf-8"),
    ("content-type", "text/plain"),
    ("content-type", "text/plain;charset=utf-8"),
    ("range", "bytes=0-"),
    ("strict-transport-security", "max-age=31536000"),
    ("strict-transport-security", "max-age=31536000; includesubdomains"),
    (
        "strict-transport-security",
        "max-age=31536000; includesubdomains; preload",
    ),
    ("vary", "accept-encoding"),
    ("vary", "origin"),
    ("x-content-type-options", "nosniff"),
    ("x-xss-protection", "1; mode=block"),
    (":status", "100"),
    (":status", "204"),
    (":status", "206"),
    (":status", "302"),
    (":status", "400"),
    (":status", "403"),
    (":status", "421"),
    (":status", "425"),
    (":status", "500"),
    ("accept-language", ""),
    ("access-control-allow-credentials", "FALSE"),
    ("access-control-allow-credentials", "TRUE"),
    ("access-control-allow-headers", "*"),
    ("access-control-allow-methods", "get"),
    ("access-control-allow-methods", "get, post, options"),
    ("access-control-allow-methods", "options"),
    ("access-control-expose-headers", "content-length"),
    ("access-control-request-headers", "content-type"),
    ("access-control-request-method", "get"),
    ("access-control-request-method", "post"),
    ("alt-svc", "clear"),
    ("authorization", ""),
    (
        "content-security-policy",
        "script-src 'none'; object-src 'none'; base-uri 'none'",
    ),
    ("early-data", "1"),
    ("expect-ct", ""),
    ("forwarded", ""),
    ("if-range", ""),
    ("origin", ""),
    ("purpose", "prefetch"),
    ("server", ""),
    ("timing-allow-origin", "*"),
    ("upgrade-insecure-requests", "1"),
    ("user-agent", ""),
    ("x-forwarded-for", ""),
    ("x-frame-options", "deny"),
    ("x-frame-options", "sameorigin"),
];

fn failed(reason: &str) -> H3Error {
    H3Error::new(code::QPACK_DECOMPRESSION_FAILED, reason)
}

/// Appends `value` as a prefixed integer (RFC 7541 §5.1) whose first byte carries `flags` in the bits
/// above the `prefix`-bit field.
fn put_int(flags: u8, prefix: u32, value: u64, out: &mut Vec<u8>) {
    let max = (1u64 << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Appends a string literal without Huffman: H = 0 and the length in a `prefix`-bit field.
fn put_string(flags: u8, prefix: u32, s: &[u8], out: &mut Vec<u8>) {
    put_int(flags, prefix, s.len() as u64, out);
    out.extend_from_slice(s);
}

/// Appends an encoded field section (the HEADERS frame payload) for `headers`.
pub fn encode_field_section(headers: &[(&[u8], &[u8])], out: &mut Vec<u8>) {
    // Required Insert Count 0; sign 0, Delta Base 0.
    out.extend_from_slice(&[0, 0]);
    for &(name, value) in headers {
        let mut name_index = None;
        let mut full_index = None;
        for (i, &(n, v)) in STATIC_TABLE.iter().enumerate() {
            if n.as_bytes() == name {
                name_index.get_or_insert(i as u64);
                if v.as_bytes() == value {
                    full_index = Some(i as u64);
                    break;
                }
            }
        }
        match (full_index, name_index) {
            // Indexed field line: 1 T=1 index(6).
            (Some(i), _) => put_int(0xc0, 6, i, out),
            // Literal with name reference: 0 1 N=0 T=1 index(4), then H=0 value(7).
            (None, Some(i)) => {
                put_int(0x50, 4, i, out);
                put_string(0x00, 7, value, out);
            }
            // Literal with literal name: 0 0 1 N=0 H=0 name length(3), name, H=0 value(7).
            (None, None) => {
                put_string(0x20, 3, name, out);
                put_string(0x00, 7, value, out);
            }
        }
    }
}

/// A cursor over one field section.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, H3Error> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| failed("field section ends inside a field line"))?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads a prefixed integer whose `prefix`-bit field sits in the low bits of `first` (already read).
    fn int(&mut self, first: u8, prefix: u32) -> Result<u64, H3Error> {
        let max = (1u64 << prefix) - 1;
        let mut value = u64::from(first) & max;
        if value < max {
            return Ok(value);
        }
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            if shift > 56 {
                return Err(failed("prefixed integer too large"));
            }
            value += u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
    }

    /// Reads a string literal whose H bit is `first & (1 << prefix)` and length has a `prefix`-bit field.
    fn string(&mut self, first: u8, prefix: u32) -> Result<Vec<u8>, H3Error> {
        let huffman = first & (1 << prefix) != 0;
        let len = self.int(first, prefix)?;
        let left = (self.buf.len() - self.pos) as u64;
        if len > left {
            return Err(failed("string literal longer than the field section"));
        }
        let raw = &self.buf[self.pos..self.pos + len as usize];
        self.pos += len as usize;
        if huffman {
            huffman_decode(raw)
        } else {
            Ok(raw.to_vec())
        }
    }
}

fn static_entry(index: u64) -> Result<(&'static str, &'static str), H3Error> {
    usize::try_from(index)
        .ok()
        .and_then(|i| STATIC_TABLE.get(i).copied())
        .ok_or_else(|| failed("static table index out of range"))
}

/// Decodes an encoded field section (a HEADERS frame payload) into (name, value) pairs.
pub fn decode_field_section(block: &[u8]) -> Result<HeaderList, H3Error> {
    let mut r = Reader { buf: block, pos: 0 };
    let first = r.byte()?;
    if r.int(first, 8)? != 0 {
        return Err(failed("Required Insert Count is not 0 (no dynamic table here)"));
    }
    // Sign bit and Delta Base: with no dynamic references the base is never used.
    let first = r.byte()?;
    r.int(first, 7)?;
    let mut headers = Vec::new();
    while r.pos < block.len() {
        let first = r.byte()?;
        if first & 0x80 != 0 {
            // Indexed field line: 1 T index(6).
            if first & 0x40 == 0 {
                return Err(failed("indexed field line refers to the dynamic table"));
            }
            let (n, v) = static_entry(r.int(first, 6)?)?;
            headers.push((n.as_bytes().to_vec(), v.as_bytes().to_vec()));
        } else if first & 0x40 != 0 {
            // Literal with name reference: 0 1 N T index(4).
            if first & 0x10 == 0 {
                return Err(failed("literal field line refers to a dynamic table name"));
            }
            let (n, _) = static_entry(r.int(first, 4)?)?;
            let vfirst = r.byte()?;
            let value = r.string(vfirst, 7)?;
            headers.push((n.as_bytes().to_vec(), value));
        } else if first & 0x20 != 0 {
            // Literal with literal name: 0 0 1 N H length(3).
            let name = r.string(first, 3)?;
            let vfirst = r.byte()?;
            let value = r.string(vfirst, 7)?;
            headers.push((name, value));
        } else {
            // 0001xxxx indexed post-base, 0000xxxx literal with post-base name reference.
            return Err(failed("field line refers to the dynamic table (post-base index)"));
        }
    }
    Ok(headers)
}

/// Huffman code lengths (RFC 7541 Appendix B), by length: the symbols (byte values, 256 = EOS) whose
/// code has that many bits. The code is canonical: within a length, codes rise with the symbol, and
/// each length's first code follows the previous length's last.
#[rustfmt::skip]
const HUFFMAN_LENGTHS: [(u8, &[u16]); 20] = [
    (5, &[48, 49, 50, 97, 99, 101, 105, 111, 115, 116]),
    (6, &[32, 37, 45, 46, 47, 51, 52, 53, 54, 55, 56, 57, 61, 65, 95, 98, 100, 102, 103, 104, 108, 109, 110,
        112, 114, 117]),
    (7, &[58, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 89, 106,
        107, 113, 118, 119, 120, 121, 122]),
    (8, &[38, 42, 44, 59, 88, 90]),
    (10, &[33, 34, 40, 41, 63]),
    (11, &[39, 43, 124]),
    (12, &[35, 62]),
    (13, &[0, 36, 64, 91, 93, 126]),
    (14, &[94, 125]),
    (15, &[60, 96, 123]),
    (19, &[92, 195, 208]),
    (20, &[128, 130, 131, 162, 184, 194, 224, 226]),
    (21, &[153, 161, 167, 172, 176, 177, 179, 209, 216, 217, 227, 229, 230]),
    (22, &[129, 132, 133, 134, 136, 146, 154, 156, 160, 163, 164, 169, 170, 173, 178, 181, 185, 186, 187, 189,
        190, 196, 198, 228, 232, 233]),
    (23, &[1, 135, 137, 138, 139, 140, 141, 143, 147, 149, 150, 151, 152, 155, 157, 158, 165, 166, 168, 174,
        175, 180, 182, 183, 188, 191, 197, 231, 239]),
    (24, &[9, 142, 144, 145, 148, 159, 171, 206, 215, 225, 236, 237]),
    (25, &[199, 207, 234, 235]),
    (26, &[192, 193, 200, 201, 202, 205, 210, 213, 218, 219, 238, 240, 242, 243, 255]),
    (27, &[203, 204, 211, 212, 214, 221, 222, 223, 241, 244, 245, 246, 247, 248, 250, 251, 252, 253, 254]),
    (28, &[2, 3, 4, 5, 6, 7, 8, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21, 23, 24, 25, 26, 27, 28, 29, 30, 31,
        127, 220, 249]),
];
/// The four 30-bit codes: the last of the canonical order.
const HUFFMAN_30: [u16; 4] = [10, 13, 22, 256];
const HUFFMAN_EOS: u16 = 256;
const HUFFMAN_MAX_LEN: usize = 30;

/// The canonical decoding tables: per code length, the first code, how many codes, and where its
/// symbols start in `symbols` (sorted by length, then value).
struct HuffmanTable {
    first: [u32; HUFFMAN_MAX_LEN + 1],
    count: [u16; HUFFMAN_MAX_LEN + 1],
    offset: [u16; HUFFMAN_MAX_LEN + 1],
    symbols: [u16; 257],
}

const fn build_huffman() -> HuffmanTable {
    let mut t = HuffmanTable {
        first: [0; HUFFMAN_MAX_LEN + 1],
        count: [0; HUFFMAN_MAX_LEN + 1],
        offset: [0; HUFFMAN_MAX_LEN + 1],
        symbols: [0; 257],
    };
    let mut n = 0usize;
    let mut g = 0usize;
    while g <= HUFFMAN_LENGTHS.len() {
        let (len, syms): (u8, &[u16]) = if g < HUFFMAN_LENGTHS.len() {
            HUFFMAN_LENGTHS[g]
        } else {
            (HUFFMAN_MAX_LEN as u8, &HUFFMAN_30)
        };
        t.count[len as usize] = syms.len() as u16;
        t.offset[len as usize] = n as u16;
        let mut i = 0;
        while i < syms.len() {
            t.symbols[n] = syms[i];
            n += 1;
            i += 1;
        }
        g += 1;
    }
    // Canonical codes: the first code of length L is (first(L-1) + count(L-1)) << 1.
    let mut code = 0u32;
    let mut len = 1;
    while len <= HUFFMAN_MAX_LEN {
        code = (code + t.count[len - 1] as u32) << 1;
        t.first[len] = code;
        len += 1;
    }
    t
}

static HUFFMAN: HuffmanTable = build_huffman();

/// Decodes a Huffman-coded string (RFC 7541 §5.2): padding must be at most 7 bits, all ones; an
/// EOS symbol inside the string is an error.
pub fn huffman_decode(src: &[u8]) -> Result<Vec<u8>, H3Error> {
    let t = &HUFFMAN;
    let mut out = Vec::with_capacity(src.len() * 8 / 5);
    let mut code = 0u32;
    let mut len = 0usize;
    for &byte in src {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let count = u32::from(t.count[len]);
            if code >= t.first[len] && code - t.first[len] < count {
                let sym = t.symbols[usize::from(t.offset[len]) + (code - t.first[len]) as usize];
                if sym == HUFFMAN_EOS {
                    return Err(failed("Huffman string contains EOS"));
                }
                out.push(sym as u8);
                code = 0;
                len = 0;
            } else if len >= HUFFMAN_MAX_LEN {
                return Err(failed("invalid Huffman code"));
            }
        }
    }
    if len > 7 || code != (1 << len) - 1 {
        return Err(failed("Huffman padding is not a prefix of EOS"));
    }
    Ok(out)
}

/// The Huffman code (bits, length) of each symbol, for tests that build Huffman-coded input.
#[cfg(test)]
fn huffman_code(sym: u16) -> (u32, usize) {
    let t = &HUFFMAN;
    for len in 1..=HUFFMAN_MAX_LEN {
        let start = usize::from(t.offset[len]);
        let syms = &t.symbols[start..start + usize::from(t.count[len])];
        if let Some(i) = syms.iter().position(|&s| s == sym) {
            return (t.first[len] + i as u32, len);
        }
    }
    unreachable!("every symbol has a code")
}

/// Huffman-encodes `src` (tests only: the encoder here writes raw strings).
#[cfg(test)]
pub(crate) fn huffman_encode(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc = 0u64;
    let mut bits = 0usize;
    for &b in src {
        let (c, l) = huffman_code(u16::from(b));
        acc = (acc << l) | u64::from(c);
        bits += l;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        let pad = 8 - bits;
        out.push(((acc << pad) | ((1 << pad) - 1)) as u8);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// Bytes from hex digits; anything else (spaces, newlines) is passed over.
    pub fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(char::is_ascii_hexdigit).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A Chromium extended CONNECT for a WebTransport session, as the browser sends it.
    pub const CHROMIUM_CONNECT: [(&[u8], &[u8]); 9] = [
        (b":method", b"CONNECT"),
        (b":protocol", b"webtransport"),
        (b":scheme", b"https"),
        (b":authority", b"127.0.0.1:4433"),
        (b":path", b"/v1/webtransport"),
        (b"origin", b"https://127.0.0.1:8000"),
        (
            b"user-agent",
            b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        ),
        (b"sec-webtransport-http3-draft02", b"1"),
        (b"sec-webtransport-http3-draft", b"draft02"),
    ];
}

#[cfg(test)]
mod tests {
    use super::tests_support::{unhex, CHROMIUM_CONNECT};
    use super::*;

    fn owned(headers: &[(&[u8], &[u8])]) -> HeaderList {
        headers.iter().map(|&(n, v)| (n.to_vec(), v.to_vec())).collect()
    }

    fn encode(headers: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_field_section(headers, &mut out);
        out
    }

    fn decode_code(block: &[u8]) -> u64 {
        decode_field_section(block).unwrap_err().code
    }

    #[test]
    fn rfc9204_b1_literal_with_static_name_reference() {
        // RFC 9204 Appendix B.1: ":path: /index.html" on stream 4, no dynamic table.
        let block = unhex("0000 510b 2f69 6e64 6578 2e68 746d 6c");
        let expected = owned(&[(b":path", b"/index.html")]);
        assert_eq!(decode_field_section(&block).unwrap(), expected);
        assert_eq!(encode(&[(b":path", b"/index.html")]), block);
    }

    #[test]
    fn rfc7541_c4_huffman_vectors() {
        // RFC 7541 C.4 (requests) and C.6 (responses) with Huffman coding.
        let vectors: [(&str, &str); 11] = [
            ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
            ("a8eb 1064 9cbf", "no-cache"),
            ("25a8 49e9 5ba9 7d7f", "custom-key"),
            ("25a8 49e9 5bb8 e8b4 bf", "custom-value"),
            ("6402", "302"),
            ("aec3 771a 4b", "private"),
            ("d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3", "https://www.example.com"),
            ("640e ff", "307"),
            ("9bd9 ab", "gzip"),
            (
                "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
                "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
            ),
        ];
        for (hex, text) in vectors {
            assert_eq!(huffman_decode(&unhex(hex)).unwrap(), text.as_bytes(), "{text}");
            assert_eq!(huffman_encode(text.as_bytes()), unhex(hex), "{text}");
        }
    }

    #[test]
    fn huffman_every_byte_round_trips_and_padding_rules_hold() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(huffman_decode(&huffman_encode(&all)).unwrap(), all);
        assert_eq!(huffman_decode(&[]).unwrap(), b"");
        // 30 one bits are EOS: not allowed inside a string.
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xff]).unwrap_err().code,
            code::QPACK_DECOMPRESSION_FAILED
        );
        // Eight bits of padding are too many; padding with zero bits is not EOS's prefix.
        assert!(huffman_decode(&[0xff]).is_err());
        assert!(huffman_decode(&[0x00]).is_err()); // "0" (00000) then padding 000
        assert_eq!(huffman_decode(&[0x07]).unwrap(), b"0"); // "0" then 111
    }

    #[test]
    fn static_table_matches_lsqpack() {
        // pylsqpack 1.0.0's encoder (capacity 0) for every static entry in order: it indexed each one at
        // the position it holds in this table.
        let block = unhex(
            "0000c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedee\
             eff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff00ff01ff02ff03ff04ff05ff06ff07ff08ff09ff0aff0bff0cff0dff0eff0fff10\
             ff11ff12ff13ff14ff15ff16ff17ff18ff19ff1aff1bff1cff1dff1eff1fff20ff21ff22ff23",
        );
        let table: Vec<(&[u8], &[u8])> = STATIC_TABLE
            .iter()
            .map(|&(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        assert_eq!(decode_field_section(&block).unwrap(), owned(&table));
        assert_eq!(encode(&table), block);
    }

    #[test]
    fn lsqpack_huffman_values_of_every_byte() {
        // pylsqpack 1.0.0, capacity 0: 256 fields "a: eeeeeeeeeeeeeeee<byte>", every value Huffman-coded.
        let block = unhex(include_str!("testdata/lsqpack_all_bytes.hex"));
        let fields = decode_field_section(&block).unwrap();
        assert_eq!(fields.len(), 256);
        for (b, (name, value)) in fields.iter().enumerate() {
            let mut expected = vec![b'e'; 16];
            expected.push(b as u8);
            assert_eq!((name.as_slice(), value), (&b"a"[..], &expected));
        }
    }

    #[test]
    fn lsqpack_webtransport_connect() {
        // pylsqpack 1.0.0 (capacity 0) encoding CHROMIUM_CONNECT: Huffman names and values, static refs.
        let block = unhex(
            "0000cf2f00b95d8749c87a3f89f058d360ea4567b13fd7508a089d5c0b8170dc69a659518c63b858f058d360ea4567b13f5f4b\
             909d29ad1718602275702e05c371e0001f5f50ced07f66a281b0dae053fafc087ed4ce6aadf2a7979c89c6bfb521aeba0bc8b1\
             e632586d975765c53facd8f7e8cff4a506ea5531149d4ffda97a7b0f49580b215c0b817029b8728ec330db2eaecb9f2f0e4148\
             b782c69b07522b3d895a74a6b65692c1ca900b01312f0d4148b782c69b07522b3d895a74a6b65692c1ca9f8592c1ca900b",
        );
        assert_eq!(decode_field_section(&block).unwrap(), owned(&CHROMIUM_CONNECT));
    }

    /// Appends a string literal with the H bit set: Huffman-coded.
    fn put_huffman(flags: u8, prefix: u32, s: &[u8], out: &mut Vec<u8>) {
        let coded = huffman_encode(s);
        put_int(flags | (1 << prefix), prefix, coded.len() as u64, out);
        out.extend_from_slice(&coded);
    }

    #[test]
    fn hand_encoded_connect_with_huffman_and_never_index() {
        let mut block = vec![0x00, 0x00];
        put_int(0xc0, 6, 15, &mut block); // :method CONNECT, indexed static 15
        put_huffman(0x20, 3, b":protocol", &mut block); // literal name, Huffman
        put_huffman(0x00, 7, b"webtransport", &mut block);
        put_int(0xc0, 6, 23, &mut block); // :scheme https
        put_int(0x50, 4, 0, &mut block); // :authority, static name 0
        put_huffman(0x00, 7, b"127.0.0.1:4433", &mut block);
        put_int(0x70, 4, 1, &mut block); // :path, static name 1, N (never index) set
        put_huffman(0x00, 7, b"/v1/webtransport", &mut block);
        put_int(0x50, 4, 90, &mut block); // origin: index 90 needs the multi-byte prefix integer
        put_huffman(0x00, 7, b"https://127.0.0.1:8000", &mut block);
        put_int(0x50, 4, 95, &mut block); // user-agent
        put_huffman(0x00, 7, CHROMIUM_CONNECT[6].1, &mut block);
        put_huffman(0x30, 3, b"sec-webtransport-http3-draft02", &mut block); // N and H set
        put_string(0x00, 7, b"1", &mut block); // raw value
        put_string(0x20, 3, b"sec-webtransport-http3-draft", &mut block); // raw name
        put_huffman(0x00, 7, b"draft02", &mut block);
        assert_eq!(&block[..3], &[0, 0, 0xcf]);
        assert_eq!(decode_field_section(&block).unwrap(), owned(&CHROMIUM_CONNECT));
    }

    #[test]
    fn encoder_picks_indexed_name_reference_or_literal() {
        assert_eq!(encode(&[(b":method", b"GET")]), [0, 0, 0xd1]);
        assert_eq!(encode(&[(b":status", b"200")]), [0, 0, 0xd9]);
        assert_eq!(
            encode(&[(b":status", b"201")]),
            [0, 0, 0x5f, 0x09, 0x03, b'2', b'0', b'1']
        );
        assert_eq!(encode(&[(b"x-a", b"b")]), [0, 0, 0x23, b'x', b'-', b'a', 0x01, b'b']);
        // A name of 7+ bytes and a value of 127+ bytes take multi-byte lengths.
        let value = vec![b'v'; 300];
        let block = encode(&[(b"x-long-name", &value)]);
        assert_eq!(&block[2..5], &[0x27, 0x04, b'x']);
        assert_eq!(&block[15..18], &[0x7f, 0xad, 0x01]); // 127 + 173 = 300
        assert_eq!(
            decode_field_section(&block).unwrap(),
            owned(&[(b"x-long-name", &value)])
        );
    }

    #[test]
    fn round_trips() {
        let big = vec![0xa5u8; 70_000];
        let lists: [&[(&[u8], &[u8])]; 4] = [
            &CHROMIUM_CONNECT,
            &[
                (b":status", b"200"),
                (b"sec-webtransport-http3-draft", b"draft02"),
                (b"content-type", b"text/plain"),
            ],
            &[(b"", b""), (b"set-cookie", b"a=b"), (b"x-bin", &[0, 1, 2, 255])],
            &[(b"x-big", &big), (b":authority", b"")],
        ];
        for headers in lists {
            assert_eq!(decode_field_section(&encode(headers)).unwrap(), owned(headers));
        }
    }

    #[test]
    fn dynamic_table_and_malformed_blocks_fail() {
        let dfail = code::QPACK_DECOMPRESSION_FAILED;
        assert_eq!(decode_code(&[0x01, 0x00]), dfail); // Required Insert Count 1
        assert_eq!(decode_code(&[0x00, 0x00, 0x80]), dfail); // indexed, dynamic
        assert_eq!(decode_code(&[0x00, 0x00, 0x10]), dfail); // indexed post-base
        assert_eq!(decode_code(&[0x00, 0x00, 0x40, 0x00]), dfail); // name ref, dynamic
        assert_eq!(decode_code(&[0x00, 0x00, 0x00, 0x00]), dfail); // name ref post-base
        assert_eq!(decode_code(&[0x00, 0x00, 0xff, 0x24]), dfail); // static index 99
        assert_eq!(decode_code(&[0x00]), dfail); // no Delta Base
        assert_eq!(decode_code(&[0x00, 0x00, 0x51, 0x05, b'/']), dfail); // value cut short
        assert_eq!(decode_code(&[0x00, 0x00, 0x51]), dfail); // value missing
        assert_eq!(decode_code(&[0x00, 0x00, 0x51, 0x81, 0x00]), dfail); // bad Huffman padding
        let mut huge = vec![0x00, 0x00, 0x5f];
        huge.extend_from_slice(&[0xff; 10]);
        assert_eq!(decode_code(&huge), dfail); // prefix integer overflow
        assert!(decode_field_section(&[0x00, 0x00]).unwrap().is_empty());
    }

    #[test]
    fn encoder_output_decodes_in_lsqpack() {
        // These bytes are this encoder's CONNECT; pylsqpack 1.0.0's decoder (capacity 0) read them back
        // as CHROMIUM_CONNECT. Literal names and static name references, no Huffman.
        let block = unhex(
            "0000cf27023a70726f746f636f6c0c7765627472616e73706f7274d7500e3132372e302e302e313a3434333351102f76312f\
             7765627472616e73706f72745f4b1668747470733a2f2f3132372e302e302e313a383030305f50654d6f7a696c6c612f352e\
             3020285831313b204c696e7578207838365f363429204170706c655765624b69742f3533372e333620284b48544d4c2c206c\
             696b65204765636b6f29204368726f6d652f3133312e302e302e30205361666172692f3533372e333627177365632d776562\
             7472616e73706f72742d68747470332d64726166743032013127157365632d7765627472616e73706f72742d68747470332d\
             64726166740764726166743032",
        );
        assert_eq!(encode(&CHROMIUM_CONNECT), block);
        assert_eq!(decode_field_section(&block).unwrap(), owned(&CHROMIUM_CONNECT));
    }

    #[test]
    fn mutated_blocks_never_panic() {
        // Every single-byte change of a Huffman-heavy real block, at a few values: an error or fields.
        let block = encode(&CHROMIUM_CONNECT);
        let mut huffman = vec![0, 0];
        for &(name, value) in &CHROMIUM_CONNECT {
            let (n, v) = (huffman_encode(name), huffman_encode(value));
            put_int(0x28, 3, n.len() as u64, &mut huffman);
            huffman.extend_from_slice(&n);
            put_int(0x80, 7, v.len() as u64, &mut huffman);
            huffman.extend_from_slice(&v);
        }
        assert_eq!(decode_field_section(&huffman).unwrap(), owned(&CHROMIUM_CONNECT));
        for original in [block, huffman] {
            for i in 0..original.len() {
                for b in [0x00, 0x1f, 0x3f, 0x7f, 0x80, 0xbf, 0xff, original[i] ^ 1] {
                    let mut m = original.clone();
                    m[i] = b;
                    let _ = decode_field_section(&m);
                    let _ = decode_field_section(&m[..i]);
                }
            }
        }
    }
}
