//! pcapng blocks, written to the format's specification (draft-ietf-opsawg-pcapng): a section
//! header, interface descriptions and enhanced packet blocks, each with its options. Written
//! in this machine's byte order, which the section header's magic tells readers.

/// LINKTYPE_ETHERNET: frames from an Ethernet header on.
pub const LINKTYPE_ETHERNET: u16 = 1;

const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 0x0000_0001;
const EPB: u32 = 0x0000_0006;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;

const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const SHB_HARDWARE: u16 = 2;
const SHB_OS: u16 = 3;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_DESCRIPTION: u16 = 3;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;
const EPB_PACKETID: u16 = 5;

/// Direction bits of `epb_flags`.
pub const FLAG_INBOUND: u32 = 0b01;
pub const FLAG_OUTBOUND: u32 = 0b10;

/// An option value cannot be longer than its 16-bit length field.
const MAX_OPTION: usize = u16::MAX as usize & !3;

/// One block being assembled: body first, then framed with its type and length.
struct Block {
    body: Vec<u8>,
}

impl Block {
    fn new() -> Self {
        Self {
            body: Vec::with_capacity(128),
        }
    }

    fn u16(&mut self, v: u16) -> &mut Self {
        self.body.extend_from_slice(&v.to_ne_bytes());
        self
    }

    fn u32(&mut self, v: u32) -> &mut Self {
        self.body.extend_from_slice(&v.to_ne_bytes());
        self
    }

    fn padded(&mut self, bytes: &[u8]) -> &mut Self {
        self.body.extend_from_slice(bytes);
        self.body.resize(self.body.len().next_multiple_of(4), 0);
        self
    }

    /// One option; a value too long for the length field is cut (comments are text and are
    /// cut at a character boundary by [`Block::text`]).
    fn option(&mut self, code: u16, value: &[u8]) -> &mut Self {
        let value = &value[..value.len().min(MAX_OPTION)];
        self.u16(code).u16(value.len() as u16).padded(value)
    }

    fn text(&mut self, code: u16, text: &str) -> &mut Self {
        let mut end = text.len().min(MAX_OPTION);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.option(code, &text.as_bytes()[..end])
    }

    fn end_of_options(&mut self) -> &mut Self {
        self.u16(OPT_END).u16(0)
    }

    /// Type, total length, body, total length again.
    fn finish(&self, block_type: u32) -> Vec<u8> {
        let total = (12 + self.body.len()) as u32;
        let mut out = Vec::with_capacity(total as usize);
        out.extend_from_slice(&block_type.to_ne_bytes());
        out.extend_from_slice(&total.to_ne_bytes());
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&total.to_ne_bytes());
        out
    }
}

/// The section header: byte order, version 1.0, length unknown (-1), who wrote it.
pub fn section_header(application: &str, os: &str, hardware: &str) -> Vec<u8> {
    let mut b = Block::new();
    b.u32(BYTE_ORDER_MAGIC).u16(1).u16(0);
    b.body.extend_from_slice(&(-1i64).to_ne_bytes());
    for (code, text) in [
        (SHB_HARDWARE, hardware),
        (SHB_OS, os),
        (SHB_USERAPPL, application),
    ] {
        if !text.is_empty() {
            b.text(code, text);
        }
    }
    b.end_of_options();
    b.finish(SHB)
}

/// An interface: its link type, no snap length limit, a name and a description, and
/// timestamps in nanoseconds (if_tsresol 9).
pub fn interface(link_type: u16, name: &str, description: &str) -> Vec<u8> {
    let mut b = Block::new();
    b.u16(link_type).u16(0).u32(0);
    b.text(IF_NAME, name);
    if !description.is_empty() {
        b.text(IF_DESCRIPTION, description);
    }
    b.option(IF_TSRESOL, &[9]);
    b.end_of_options();
    b.finish(IDB)
}

/// One packet on interface `interface`.
pub struct Packet<'a> {
    pub interface: u32,
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    pub data: &'a [u8],
    /// The packet's length on the wire (at least `data.len()`).
    pub original_len: u32,
    /// [`FLAG_INBOUND`], [`FLAG_OUTBOUND`] or 0.
    pub flags: u32,
    pub packet_id: u64,
    pub comments: &'a [String],
}

/// An enhanced packet block. Data longer than a block can hold is cut (and said by a
/// captured length below the original one).
pub fn enhanced_packet(p: &Packet<'_>) -> Vec<u8> {
    let data = &p.data[..p.data.len().min(u32::MAX as usize / 2)];
    let mut b = Block::new();
    b.u32(p.interface)
        .u32((p.ts_ns >> 32) as u32)
        .u32(p.ts_ns as u32)
        .u32(data.len() as u32)
        .u32(p.original_len.max(data.len() as u32))
        .padded(data);
    for c in p.comments {
        b.text(OPT_COMMENT, c);
    }
    if p.flags != 0 {
        b.option(EPB_FLAGS, &p.flags.to_ne_bytes());
    }
    b.option(EPB_PACKETID, &p.packet_id.to_ne_bytes());
    b.end_of_options();
    b.finish(EPB)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// Every block is a multiple of four bytes long and says its length at both ends.
    fn well_framed(b: &[u8]) {
        assert_eq!(b.len() % 4, 0);
        assert_eq!(u32_at(b, 4) as usize, b.len());
        assert_eq!(u32_at(b, b.len() - 4) as usize, b.len());
    }

    #[test]
    fn blocks_are_framed_and_padded() {
        well_framed(&section_header("probe 1", "Linux 6.18", ""));
        well_framed(&interface(
            LINKTYPE_ETHERNET,
            "veth-web egress",
            "odd length",
        ));
        for len in 0..9 {
            let data = vec![0x45; len];
            let comments = vec!["é".repeat(len)];
            let epb = enhanced_packet(&Packet {
                interface: 3,
                ts_ns: 0x1_0000_0002,
                data: &data,
                original_len: 0,
                flags: FLAG_OUTBOUND,
                packet_id: 77,
                comments: &comments,
            });
            well_framed(&epb);
            assert_eq!(u32_at(&epb, 8), 3);
            assert_eq!((u32_at(&epb, 12), u32_at(&epb, 16)), (1, 2));
            // The original length is never below the captured one.
            assert_eq!(
                (u32_at(&epb, 20), u32_at(&epb, 24)),
                (len as u32, len as u32)
            );
        }
    }

    #[test]
    fn an_overlong_comment_is_cut_at_a_character_boundary() {
        let comments = vec!["ü".repeat(40_000)];
        let epb = enhanced_packet(&Packet {
            interface: 0,
            ts_ns: 0,
            data: &[],
            original_len: 0,
            flags: 0,
            packet_id: 1,
            comments: &comments,
        });
        well_framed(&epb);
        // The comment option follows the 20 fixed bytes after type and length.
        let len = u16::from_ne_bytes([epb[30], epb[31]]) as usize;
        assert!(len <= MAX_OPTION);
        assert!(std::str::from_utf8(&epb[32..32 + len]).is_ok());
    }
}
