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

    /// Run `f` over the held bytes followed by `input` (over `input` in place when nothing is held).
    /// `f` returns how many bytes it consumed; on success the rest is held (in the same allocation
    /// when there was one, so a large unit arriving over many reads is not copied again each time),
    /// on failure nothing is.
    pub(crate) fn process<E>(
        &mut self,
        input: &mut [u8],
        f: impl FnOnce(&mut [u8]) -> (usize, Result<(), E>),
    ) -> Result<(), E> {
        if self.is_empty() {
            let (used, r) = f(input);
            if r.is_ok() {
                self.extend(&input[used..]);
            }
            r
        } else {
            let mut buf = self.take();
            buf.extend_from_slice(input);
            let (used, r) = f(&mut buf);
            if r.is_ok() {
                buf.drain(..used);
                self.put(buf);
            }
            r
        }
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

    #[test]
    fn process_keeps_the_unconsumed_tail_only_on_success() {
        let mut s = Spill::default();
        let mut seen = Vec::new();
        let r: Result<(), ()> = s.process(&mut b"abcdef".to_vec(), |b| {
            seen = b.to_vec();
            (4, Ok(()))
        });
        assert!(r.is_ok());
        assert_eq!(seen, b"abcdef");
        assert_eq!(s.as_slice(), b"ef");
        let r: Result<(), ()> = s.process(&mut b"gh".to_vec(), |b| {
            seen = b.to_vec();
            (1, Ok(()))
        });
        assert!(r.is_ok());
        assert_eq!(seen, b"efgh", "held bytes come first");
        assert_eq!(s.as_slice(), b"fgh");
        let r = s.process(&mut b"ij".to_vec(), |_| (0, Err(())));
        assert!(r.is_err());
        assert!(s.is_empty());
        let r: Result<(), ()> = s.process(&mut b"xy".to_vec(), |_| (2, Ok(())));
        assert!(r.is_ok() && s.0.is_none());
    }
}
