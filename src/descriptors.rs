//! The descriptor sets a server is given, decoded once into one reflective pool for everything
//! that reads them at start-up: the served services' names, the methods' policies (who may call,
//! default deadlines, retries), the request rules and the metrics' method table.
//!
//! The pool leaves out every file's `source_code_info` (the comments and source spans): nothing
//! but reflection shows them, and reflection keeps the encoded sets it is given. The comments of
//! `buf/validate/validate.proto` alone are most of a service's descriptor set, so a pool without
//! them is a fraction of the size, and the rules, which keep their pool for the server's life,
//! keep only that fraction. Options and their extensions (`protomesh.options.v1.policy`,
//! `buf.validate.field`) are kept as encoded.

use bytes::Buf;
use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};
use prost_reflect::{DescriptorError, DescriptorPool};

/// `FileDescriptorSet.file`.
const SET_FILE: u32 = 1;
/// `FileDescriptorProto.source_code_info`.
const FILE_SOURCE_CODE_INFO: u32 = 9;

/// The encoded descriptor `sets` in one pool, without their source code info. A file in more
/// than one set is added once.
///
/// # Errors
///
/// A set that does not decode, or whose files do not make a consistent pool (a type or import
/// missing).
pub fn lean_pool(sets: &[&[u8]]) -> Result<DescriptorPool, DescriptorError> {
    let mut pool = DescriptorPool::new();
    for set in sets {
        match without_source_info(set) {
            Some(lean) => pool.decode_file_descriptor_set(lean.as_slice())?,
            // Not a well-formed message: the pool's own decoding says why.
            None => pool.decode_file_descriptor_set(*set)?,
        }
    }
    Ok(pool)
}

/// The encoded `FileDescriptorSet` `set` with no file's `source_code_info`, every other byte as
/// it was (unknown fields and extensions included); `None` if it is not a well-formed message.
fn without_source_info(set: &[u8]) -> Option<Vec<u8>> {
    let mut lean = Vec::with_capacity(set.len() / 4);
    for field in Fields(set) {
        let field = field?;
        if field.number != SET_FILE || field.wire_type != WireType::LengthDelimited {
            lean.extend_from_slice(field.whole);
            continue;
        }
        let mut file = Vec::with_capacity(field.payload.len());
        for inner in Fields(field.payload) {
            let inner = inner?;
            if inner.number != FILE_SOURCE_CODE_INFO {
                file.extend_from_slice(inner.whole);
            }
        }
        encode_key(SET_FILE, WireType::LengthDelimited, &mut lean);
        encode_varint(file.len() as u64, &mut lean);
        lean.extend_from_slice(&file);
    }
    Some(lean)
}

/// One field of an encoded message.
struct Field<'a> {
    number: u32,
    wire_type: WireType,
    /// The field's whole encoding, key included.
    whole: &'a [u8],
    /// What a length-delimited field holds (empty for other wire types).
    payload: &'a [u8],
}

/// The fields of an encoded message, in order; `None` for the first that is malformed (and
/// nothing after it).
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Option<Field<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let start = self.0;
        let field = read_field(&mut self.0, start);
        if field.is_none() {
            self.0 = &[];
        }
        Some(field)
    }
}

/// Reads the field at the front of `rest` (which starts at `start`), advancing past it.
fn read_field<'a>(rest: &mut &'a [u8], start: &'a [u8]) -> Option<Field<'a>> {
    let (number, wire_type) = decode_key(rest).ok()?;
    let payload = match wire_type {
        WireType::Varint => {
            decode_varint(rest).ok()?;
            &[][..]
        }
        WireType::SixtyFourBit => {
            take(rest, 8)?;
            &[][..]
        }
        WireType::ThirtyTwoBit => {
            take(rest, 4)?;
            &[][..]
        }
        WireType::LengthDelimited => {
            let len = usize::try_from(decode_varint(rest).ok()?).ok()?;
            take(rest, len)?
        }
        // Groups: no descriptor uses them.
        WireType::StartGroup | WireType::EndGroup => return None,
    };
    let whole = &start[..start.len() - rest.len()];
    Some(Field {
        number,
        wire_type,
        whole,
        payload,
    })
}

/// The first `len` bytes of `rest`, advancing past them.
fn take<'a>(rest: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    let bytes = rest.get(..len)?;
    rest.advance(len);
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_go_and_options_with_their_extensions_stay() {
        let sets = crate::test_protos::SETS;
        let full = DescriptorPool::decode(sets[0]).expect("full pool");
        let lean = lean_pool(sets).expect("lean pool");
        assert!(
            full.files()
                .any(|f| f.file_descriptor_proto().source_code_info.is_some()),
            "the test set has comments to lose"
        );
        assert!(lean
            .files()
            .all(|f| f.file_descriptor_proto().source_code_info.is_none()));
        assert!(
            without_source_info(sets[0]).expect("well formed").len() < sets[0].len() / 2,
            "most of the set was comments"
        );
        // The same services and methods, with the same policies (an option extension) and rules.
        for service in full.services() {
            let same = lean
                .get_service_by_name(service.full_name())
                .expect("service kept");
            for (a, b) in service.methods().zip(same.methods()) {
                assert_eq!(a.full_name(), b.full_name());
                assert_eq!(
                    crate::policy::declared(&a).ok(),
                    crate::policy::declared(&b).ok(),
                    "{}",
                    a.full_name()
                );
                assert_eq!(a.options(), b.options(), "{}", a.full_name());
            }
        }
    }

    #[test]
    fn a_set_that_does_not_decode_is_an_error() {
        assert!(lean_pool(&[b"\xff\xff\xff".as_slice()]).is_err());
        assert!(
            without_source_info(b"\x0a\x05ab").is_none(),
            "length past the end"
        );
    }
}
