//! `Spill`: bytes a session could not hand on yet (an incomplete frame or TLS record, ciphertext
//! the socket refused), as one pointer.
//!
//! Sessions hold such bytes rarely and briefly, but the holder lives in every session, idle ones
//! included: a `Vec` would cost 24 bytes there, this costs 8 and nothing is allocated while empty.
//! (`thin_vec::ThinVec` is also 8 bytes, but it copies byte slices element by element.)

/// See the module docs.
#[derive(Default)]
#[allow(clippy::box_collection)] // deliberate: the point is one pointer instead of three words
pub(crate) struct Spill(Option<Box<Vec<u8>>>);

impl Spill {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|v| v.is_empty())
    }

    /// The bytes, leaving this empty (and unallocated).
    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.0.take().map(|v| *v).unwrap_or_default()
    }

    /// Keep `bytes` (an empty `Vec` frees what was held).
    pub(crate) fn put(&mut self, bytes: Vec<u8>) {
        self.0 = (!bytes.is_empty()).then(|| Box::new(bytes));
    }

    /// Append `bytes`.
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.0
                .get_or_insert_with(Default::default)
                .extend_from_slice(bytes);
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], |v| v.as_slice())
    }

    /// Drop the first `n` bytes.
    pub(crate) fn consume(&mut self, n: usize) {
        if let Some(v) = &mut self.0 {
            if n >= v.len() {
                self.0 = None;
            } else {
                v.drain(..n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_appends_and_frees() {
        let mut s = Spill::default();
        assert!(s.is_empty());
        assert_eq!(std::mem::size_of::<Spill>(), 8);
        s.extend(b"abc");
        s.extend(b"de");
        assert_eq!(s.as_slice(), b"abcde");
        s.consume(2);
        assert_eq!(s.as_slice(), b"cde");
        let v = s.take();
        assert_eq!(v, b"cde");
        assert!(s.is_empty() && s.0.is_none());
        s.put(Vec::new());
        assert!(s.0.is_none());
        s.put(v);
        s.consume(3);
        assert!(s.0.is_none());
    }
}
