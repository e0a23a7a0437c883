//! The few pieces of the protocol-buffers wire format that an ONNX file needs, written by hand:
//! a message is a sequence of fields, each a key (field number << 3 | wire type) followed by a
//! varint, four little-endian bytes, or a length and that many bytes (strings, bytes and nested
//! messages). See <https://protobuf.dev/programming-guides/encoding/>.

/// Wire types: how the bytes after a key are to be read.
const VARINT: u64 = 0;
const LENGTH_DELIMITED: u64 = 2;
const FIXED32: u64 = 5;

/// One message being written, field by field.
#[derive(Default)]
pub struct Message(Vec<u8>);

impl Message {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire_type: u64) {
        self.varint(u64::from(field) << 3 | wire_type);
    }
    /// An integer field (int32, int64, enum): negative values as their 64-bit two's complement.
    pub fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.key(field, VARINT);
        self.varint(v as u64);
        self
    }
    pub fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.key(field, FIXED32);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        self.key(field, LENGTH_DELIMITED);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    pub fn string(&mut self, field: u32, s: &str) -> &mut Self {
        self.bytes(field, s.as_bytes())
    }
    pub fn message(&mut self, field: u32, m: Message) -> &mut Self {
        self.bytes(field, &m.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_encoded_as_the_protobuf_guide_shows() {
        // The guide's examples: field 1 = 150 is 08 96 01; field 2 = "testing" is 12 07 74 65
        // 73 74 69 6e 67; a negative int64 takes ten bytes.
        let mut m = Message::new();
        m.int(1, 150).string(2, "testing");
        assert_eq!(
            m.into_bytes(),
            [0x08, 0x96, 0x01, 0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']
        );
        let mut m = Message::new();
        m.int(3, -1).float(4, 1.0);
        let b = m.into_bytes();
        assert_eq!(b[0], 0x18);
        assert_eq!(
            &b[1..11],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        assert_eq!(&b[11..], &[0x25, 0x00, 0x00, 0x80, 0x3f]);
    }
}
