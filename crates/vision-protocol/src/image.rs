//! What an image claims to be, read from its header before anything is
//! decoded. A decoder allocates width × height × 3 bytes from the header: a
//! 600 KB PNG that says 25,000 × 25,000 costs 1.9 GB. Both the daemon (on
//! upload) and the vision process (before `imdecode`) check here, so a
//! hostile file is refused with a reason and nothing large is allocated.

/// Largest encoded photo accepted (an enrolment photo is a few MB at most).
pub const MAX_IMAGE_BYTES: usize = 16 * 1024 * 1024;
/// Largest decoded size: 40 megapixels (a 7,700 × 5,200 photo), 120 MB as BGR.
pub const MAX_IMAGE_PIXELS: u64 = 40_000_000;
/// Longest side accepted.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Longest QR payload read from a camera frame (a pass is `GW1:` + 24 hex).
pub const MAX_QR_PAYLOAD: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    /// Phones save WebP under a .jpg name.
    Webp,
    Bmp,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefusal {
    #[error("the file is empty")]
    Empty,
    #[error("{0} bytes is more than the {MAX_IMAGE_BYTES} accepted")]
    TooManyBytes(usize),
    #[error("not a JPEG, PNG, WebP or BMP image")]
    NotJpegOrPng,
    #[error("the {0:?} header is truncated or corrupt")]
    BadHeader(Format),
    #[error("{w} × {h} pixels is more than accepted (at most {MAX_IMAGE_PIXELS} pixels, {MAX_IMAGE_SIDE} a side)")]
    TooLarge { w: u32, h: u32 },
    #[error("{w} × {h} pixels is too small for a face")]
    TooSmall { w: u32, h: u32 },
}

/// The format and dimensions an image's header declares.
pub fn dimensions(b: &[u8]) -> Result<(Format, u32, u32), ImageRefusal> {
    if b.starts_with(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]) {
        // The first chunk must be IHDR: length 13, then width and height.
        if b.len() < 24 || &b[12..16] != b"IHDR" {
            return Err(ImageRefusal::BadHeader(Format::Png));
        }
        let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        return Ok((Format::Png, be(16), be(20)));
    }
    if b.starts_with(&[0xFF, 0xD8]) {
        return jpeg(b).map(|(w, h)| (Format::Jpeg, w, h)).ok_or(ImageRefusal::BadHeader(Format::Jpeg));
    }
    if b.len() >= 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        return webp(b).map(|(w, h)| (Format::Webp, w, h)).ok_or(ImageRefusal::BadHeader(Format::Webp));
    }
    if b.starts_with(b"BM") {
        if b.len() < 26 {
            return Err(ImageRefusal::BadHeader(Format::Bmp));
        }
        let le = |i: usize| i32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        // A negative height is a top-down bitmap.
        return Ok((Format::Bmp, le(18).unsigned_abs(), le(22).unsigned_abs()));
    }
    Err(ImageRefusal::NotJpegOrPng)
}

/// The canvas size from the first chunk: lossy (VP8), lossless (VP8L) or extended (VP8X).
fn webp(b: &[u8]) -> Option<(u32, u32)> {
    let at = |i: usize| b.get(i).copied().map(u32::from);
    match b.get(12..16)? {
        b"VP8 " => {
            // Frame tag (3), start code 9d 01 2a, then 14-bit width and height.
            if b.get(23..26)? != [0x9d, 0x01, 0x2a] {
                return None;
            }
            Some(((at(26)? | at(27)? << 8) & 0x3fff, (at(28)? | at(29)? << 8) & 0x3fff))
        }
        b"VP8L" => {
            if at(20)? != 0x2f {
                return None;
            }
            let bits = at(21)? | at(22)? << 8 | at(23)? << 16 | at(24)? << 24;
            Some(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1))
        }
        b"VP8X" => Some(((at(24)? | at(25)? << 8 | at(26)? << 16) + 1, (at(27)? | at(28)? << 8 | at(29)? << 16) + 1)),
        _ => None,
    }
}

/// Walk the JPEG segments to the first frame header (SOFn).
fn jpeg(b: &[u8]) -> Option<(u32, u32)> {
    let mut i = 2;
    loop {
        // Markers may be padded with any number of 0xFF.
        while *b.get(i)? == 0xFF && *b.get(i + 1)? == 0xFF {
            i += 1;
        }
        if *b.get(i)? != 0xFF {
            return None;
        }
        let m = *b.get(i + 1)?;
        i += 2;
        match m {
            // Standalone markers carry no length.
            0x01 | 0xD0..=0xD7 => continue,
            // Start of scan or end of image before any frame header.
            0xDA | 0xD9 => return None,
            _ => {}
        }
        let len = u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]) as usize;
        if len < 2 {
            return None;
        }
        if matches!(m, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF) {
            let h = u16::from_be_bytes([*b.get(i + 3)?, *b.get(i + 4)?]) as u32;
            let w = u16::from_be_bytes([*b.get(i + 5)?, *b.get(i + 6)?]) as u32;
            return Some((w, h));
        }
        i += len;
    }
}

/// Refuse what must not reach a decoder: too many bytes, not JPEG or PNG,
/// a corrupt header, or more pixels than a photo of a face needs.
pub fn check(b: &[u8]) -> Result<(Format, u32, u32), ImageRefusal> {
    if b.is_empty() {
        return Err(ImageRefusal::Empty);
    }
    if b.len() > MAX_IMAGE_BYTES {
        return Err(ImageRefusal::TooManyBytes(b.len()));
    }
    let (f, w, h) = dimensions(b)?;
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE || w as u64 * h as u64 > MAX_IMAGE_PIXELS {
        return Err(ImageRefusal::TooLarge { w, h });
    }
    if w < 16 || h < 16 {
        return Err(ImageRefusal::TooSmall { w, h });
    }
    Ok((f, w, h))
}

/// A PNG header (signature, IHDR, IEND) declaring `w` × `h`, for tests of
/// the refusal: no decoder is needed to see what it claims.
#[doc(hidden)]
pub fn png_header(w: u32, h: u32) -> Vec<u8> {
    fn chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        c.extend_from_slice(&crc32(&[kind, data].concat()).to_be_bytes());
        c
    }
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    [vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A], chunk(b"IHDR", &ihdr), chunk(b"IEND", &[])].concat()
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A baseline JPEG's first segments, declaring `w` × `h` (padding and an
    /// APP segment before the frame header, as cameras write them).
    fn jpeg_header(w: u16, h: u16) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
        v.extend_from_slice(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
        v.extend_from_slice(&[0xFF, 0xFF, 0xC0, 0x00, 0x11, 0x08]);
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        v
    }

    #[test]
    fn a_header_that_declares_too_many_pixels_is_refused_before_decoding() {
        assert_eq!(check(&png_header(25_000, 25_000)), Err(ImageRefusal::TooLarge { w: 25_000, h: 25_000 }));
        assert_eq!(check(&jpeg_header(30_000, 30_000)), Err(ImageRefusal::TooLarge { w: 30_000, h: 30_000 }));
        assert_eq!(check(&png_header(20_000, 100)), Err(ImageRefusal::TooLarge { w: 20_000, h: 100 }), "one side too long");
        assert_eq!(check(&png_header(1920, 1080)), Ok((Format::Png, 1920, 1080)));
        assert_eq!(check(&jpeg_header(4000, 3000)), Ok((Format::Jpeg, 4000, 3000)));
        assert_eq!(check(&png_header(8, 8)), Err(ImageRefusal::TooSmall { w: 8, h: 8 }));
    }

    #[test]
    fn webp_and_bmp_headers_are_read_too() {
        // An extended WebP declaring 30,000 × 20,000, and a lossy one of 1350 × 1800.
        let mut x = b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0".to_vec();
        x.extend_from_slice(&[(29_999u32 & 0xff) as u8, (29_999u32 >> 8 & 0xff) as u8, 0, (19_999u32 & 0xff) as u8, (19_999u32 >> 8 & 0xff) as u8, 0]);
        assert_eq!(check(&x), Err(ImageRefusal::TooLarge { w: 30_000, h: 20_000 }));
        let mut l = b"RIFF\0\0\0\0WEBPVP8 \0\0\0\0\x90\xec\x13\x9d\x01\x2a".to_vec();
        l.extend_from_slice(&1350u16.to_le_bytes());
        l.extend_from_slice(&1800u16.to_le_bytes());
        assert_eq!(check(&l), Ok((Format::Webp, 1350, 1800)));
        let mut bmp = b"BM".to_vec();
        bmp.extend_from_slice(&[0; 16]);
        bmp.extend_from_slice(&25_000i32.to_le_bytes());
        bmp.extend_from_slice(&(-25_000i32).to_le_bytes());
        assert_eq!(check(&bmp), Err(ImageRefusal::TooLarge { w: 25_000, h: 25_000 }), "a top-down bitmap counts too");
    }

    #[test]
    fn other_formats_and_torn_headers_are_refused() {
        assert_eq!(check(b""), Err(ImageRefusal::Empty));
        assert_eq!(check(b"II*\x00\x08\x00\x00\x00"), Err(ImageRefusal::NotJpegOrPng), "TIFF");
        assert_eq!(check(b"BM\x36\x00\x00\x00"), Err(ImageRefusal::BadHeader(Format::Bmp)));
        assert_eq!(check(b"RIFF\0\0\0\0WEBPVP8 "), Err(ImageRefusal::BadHeader(Format::Webp)));
        assert_eq!(check(&png_header(100, 100)[..20]), Err(ImageRefusal::BadHeader(Format::Png)));
        let j = jpeg_header(100, 100);
        for cut in 2..j.len() - 10 {
            assert!(check(&j[..cut]).is_err(), "cut at {cut}");
        }
        // A scan before any frame header.
        assert_eq!(check(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2]), Err(ImageRefusal::BadHeader(Format::Jpeg)));
        assert!(matches!(check(&vec![0u8; MAX_IMAGE_BYTES + 1]), Err(ImageRefusal::TooManyBytes(_))));
    }

    #[test]
    fn the_header_reader_never_panics_on_arbitrary_bytes() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for n in 0..20_000usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b: Vec<u8> = (0..(n % 300)).map(|i| (x >> (i % 56)) as u8).collect();
            if n % 2 == 0 && b.len() > 2 {
                b[0] = 0xFF;
                b[1] = 0xD8;
            }
            let _ = check(&b);
        }
    }
}
