//! Where a signal's bits sit in a message, and what they mean as a number.
//!
//! A DBC signal is a start bit, a length and a byte order. Intel (`@1`, little endian)
//! names the least significant bit and counts up through the bytes; Motorola (`@0`, big
//! endian) names the most significant bit in the same per-byte LSB-first numbering and
//! walks the "sawtooth" down to the next byte. [`Layout`] turns either into the bytes to
//! load and a shift and mask, computed once per signal, so extracting a value is one
//! unaligned load and two bit operations; [`Layout::insert`] is the inverse (the simulator
//! encodes with it). [`Value`] and [`Scaling`] turn the raw bits into the physical value.

/// Byte order of a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// `@1`: little endian, start bit is the LSB.
    Intel,
    /// `@0`: big endian, start bit is the MSB.
    Motorola,
}

/// How the raw bits are read as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// Unsigned integer.
    Unsigned,
    /// Two's-complement integer.
    Signed,
    /// IEEE 754 single (`SIG_VALTYPE_ 1`, 32 bits).
    F32,
    /// IEEE 754 double (`SIG_VALTYPE_ 2`, 64 bits).
    F64,
}

/// The bytes, shift and mask of one signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// First byte the signal touches.
    first: u8,
    /// Bytes it spans (1–9).
    bytes: u8,
    /// Right shift after loading the span (little-endian load for Intel, big-endian for
    /// Motorola).
    shift: u8,
    /// Length in bits (1–64).
    size: u8,
    order: Order,
}

/// Bits a message can hold (64 bytes of CAN FD).
const MAX_BITS: u32 = 512;

impl Layout {
    /// The layout of `size` bits at DBC start bit `start`; `None` if it does not fit in
    /// 64 bytes or `size` is not 1–64.
    pub fn new(start: u64, size: u64, order: Order) -> Option<Layout> {
        if !(1..=64).contains(&size) || start >= u64::from(MAX_BITS) {
            return None;
        }
        let (start, size) = (start as u32, size as u32);
        let (lo_bit, hi_bit, shift) = match order {
            Order::Intel => (start, start + size - 1, start % 8),
            Order::Motorola => {
                // Position in big-endian linear numbering: byte * 8 + (7 - bit in byte).
                let msb = (start / 8) * 8 + 7 - start % 8;
                let lsb = msb + size - 1;
                (msb, lsb, 7 - lsb % 8)
            }
        };
        if hi_bit >= MAX_BITS {
            return None;
        }
        Some(Layout {
            first: (lo_bit / 8) as u8,
            bytes: (hi_bit / 8 - lo_bit / 8 + 1) as u8,
            shift: shift as u8,
            size: size as u8,
            order,
        })
    }

    /// Bytes a message needs for this signal to be present.
    pub fn end(&self) -> usize {
        usize::from(self.first) + usize::from(self.bytes)
    }

    /// Length in bits.
    pub fn size(&self) -> u8 {
        self.size
    }

    fn mask(&self) -> u128 {
        (1u128 << self.size) - 1
    }

    /// The raw bits, or `None` if `data` is too short to hold them.
    pub fn extract(&self, data: &[u8]) -> Option<u64> {
        let span = data.get(usize::from(self.first)..self.end())?;
        let mut word = 0u128;
        match self.order {
            Order::Intel => {
                for (i, b) in span.iter().enumerate() {
                    word |= u128::from(*b) << (8 * i);
                }
            }
            Order::Motorola => {
                for b in span {
                    word = (word << 8) | u128::from(*b);
                }
            }
        }
        Some(((word >> self.shift) & self.mask()) as u64)
    }

    /// Writes `raw` (truncated to the signal's size) into `data`; `false` if too short.
    pub fn insert(&self, data: &mut [u8], raw: u64) -> bool {
        let Some(span) = data
            .get_mut(usize::from(self.first)..usize::from(self.first) + usize::from(self.bytes))
        else {
            return false;
        };
        let mask = self.mask() << self.shift;
        let bits = (u128::from(raw) << self.shift) & mask;
        let n = span.len();
        for (i, b) in span.iter_mut().enumerate() {
            let at = match self.order {
                Order::Intel => 8 * i,
                Order::Motorola => 8 * (n - 1 - i),
            };
            let m = ((mask >> at) & 0xFF) as u8;
            *b = (*b & !m) | (((bits >> at) & 0xFF) as u8);
        }
        true
    }
}

/// Raw bits as a number of the given kind (before scaling).
pub fn number(raw: u64, size: u8, kind: Value) -> f64 {
    match kind {
        Value::Unsigned => raw as f64,
        Value::Signed => signed(raw, size) as f64,
        Value::F32 => f64::from(f32::from_bits(raw as u32)),
        Value::F64 => f64::from_bits(raw),
    }
}

/// Sign-extends the low `size` bits of `raw`.
pub fn signed(raw: u64, size: u8) -> i64 {
    let unused = 64 - u32::from(size.clamp(1, 64));
    ((raw << unused) as i64) >> unused
}

/// Factor, offset and the decimals worth reporting of a signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scaling {
    /// Physical = raw × factor + offset.
    pub factor: f64,
    /// See `factor`.
    pub offset: f64,
    /// Decimal places of the resolution (0.25 → 2, 1/256 → 8), at most 9.
    pub decimals: u8,
    /// Factor and offset are whole numbers: the value is an integer.
    pub integral: bool,
}

impl Scaling {
    /// The scaling of `factor` and `offset`.
    pub fn new(factor: f64, offset: f64) -> Scaling {
        let whole = |x: f64| x.fract() == 0.0 && x.abs() < 9.0e15;
        let decimals = (0..=9u8)
            .find(|d| {
                let p = 10f64.powi(i32::from(*d));
                let (f, o) = (factor * p, offset * p);
                (f - f.round()).abs() < 1e-6 && (o - o.round()).abs() < 1e-6
            })
            .unwrap_or(9);
        Scaling {
            factor,
            offset,
            decimals,
            integral: whole(factor) && whole(offset),
        }
    }

    /// The physical value of a raw number, rounded to the resolution's decimals (so 0.1
    /// steps read `12.3`, not `12.300000000000001`).
    pub fn apply(&self, n: f64) -> f64 {
        let v = n * self.factor + self.offset;
        if self.integral || !v.is_finite() {
            return v;
        }
        let p = 10f64.powi(i32::from(self.decimals));
        let r = (v * p).round() / p;
        if r.is_finite() {
            r
        } else {
            v
        }
    }

    /// The raw number for a physical value (the simulator's inverse of [`Scaling::apply`]).
    pub fn raw(&self, v: f64) -> f64 {
        if self.factor == 0.0 {
            return 0.0;
        }
        ((v - self.offset) / self.factor).round()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intel_signals_read_lsb_first() {
        let data = [0x5F, 0x14, 0xAB, 0xCD, 0, 0, 0, 0x80];
        let rpm = Layout::new(0, 16, Order::Intel).expect("fits");
        assert_eq!(rpm.extract(&data), Some(0x145F));
        // 4 bits starting at bit 12: the high nibble of byte 1.
        assert_eq!(
            Layout::new(12, 4, Order::Intel)
                .expect("fits")
                .extract(&data),
            Some(0x1)
        );
        // 12 bits from bit 4 straddle bytes 0 and 1.
        assert_eq!(
            Layout::new(4, 12, Order::Intel)
                .expect("fits")
                .extract(&data),
            Some(0x145)
        );
        assert_eq!(
            Layout::new(63, 1, Order::Intel)
                .expect("fits")
                .extract(&data),
            Some(1)
        );
        assert_eq!(
            Layout::new(0, 64, Order::Intel)
                .expect("fits")
                .extract(&data),
            Some(0x8000_0000_CDAB_145F)
        );
        // Not enough data: absent, not zero.
        assert_eq!(
            Layout::new(56, 8, Order::Intel)
                .expect("fits")
                .extract(&data[..7]),
            None
        );
    }

    #[test]
    fn motorola_signals_walk_the_sawtooth() {
        let data = [0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0];
        // MSB at bit 7 (byte 0's top bit), 16 bits: bytes 0..1 big endian.
        assert_eq!(
            Layout::new(7, 16, Order::Motorola)
                .expect("fits")
                .extract(&data),
            Some(0x1234)
        );
        // MSB at bit 3, 4 bits: the low nibble of byte 0.
        assert_eq!(
            Layout::new(3, 4, Order::Motorola)
                .expect("fits")
                .extract(&data),
            Some(0x2)
        );
        // MSB at bit 3, 12 bits: low nibble of byte 0 then byte 1.
        assert_eq!(
            Layout::new(3, 12, Order::Motorola)
                .expect("fits")
                .extract(&data),
            Some(0x234)
        );
        // MSB at bit 13 (byte 1, bit 5), 10 bits: ends at byte 2 bit 4.
        // byte1 = 0011_0100 → bits 5..0 = 110100; byte2 = 0101_0110 → bits 7..4 = 0101.
        assert_eq!(
            Layout::new(13, 10, Order::Motorola)
                .expect("fits")
                .extract(&data),
            Some(0b11_0100_0101)
        );
        assert_eq!(
            Layout::new(7, 64, Order::Motorola)
                .expect("fits")
                .extract(&data),
            Some(0x1234_5678_0000_0000)
        );
        // Motorola's MSB in the last byte cannot run past the end.
        assert!(Layout::new(507, 8, Order::Motorola).is_none());
        assert!(Layout::new(0, 0, Order::Intel).is_none());
        assert!(Layout::new(0, 65, Order::Intel).is_none());
    }

    #[test]
    fn insert_is_the_inverse_of_extract_and_leaves_other_bits_alone() {
        let cases = [
            (0, 16, Order::Intel),
            (5, 11, Order::Intel),
            (7, 16, Order::Motorola),
            (13, 10, Order::Motorola),
            (3, 1, Order::Motorola),
            (1, 64, Order::Intel),
            (15, 64, Order::Motorola),
        ];
        for (start, size, order) in cases {
            let l = Layout::new(start, size, order).expect("fits");
            let mut data = [0xA5u8; 16];
            let before = data;
            let raw = 0x0123_4567_89AB_CDEFu64 & (((1u128 << size) - 1) as u64);
            assert!(l.insert(&mut data, raw));
            assert_eq!(l.extract(&data), Some(raw), "{start}|{size} {order:?}");
            // Writing back the old bits restores the message.
            let old = l.extract(&before).expect("old");
            l.insert(&mut data, old);
            assert_eq!(data, before, "{start}|{size} {order:?}");
        }
    }

    #[test]
    fn numbers_and_scaling() {
        assert_eq!(number(0xFF, 8, Value::Signed), -1.0);
        assert_eq!(number(0x7F, 8, Value::Signed), 127.0);
        assert_eq!(number(0x800, 12, Value::Signed), -2048.0);
        assert_eq!(number(u64::MAX, 64, Value::Signed), -1.0);
        assert_eq!(number(u64::from(1.5f32.to_bits()), 32, Value::F32), 1.5);
        assert_eq!(number((-2.25f64).to_bits(), 64, Value::F64), -2.25);
        let s = Scaling::new(0.1, 0.0);
        assert_eq!((s.decimals, s.integral), (1, false));
        assert_eq!(s.apply(123.0), 12.3);
        let s = Scaling::new(1.0 / 256.0, 0.0);
        assert_eq!(s.decimals, 8);
        assert_eq!(s.apply(256.0 * 88.0 + 128.0), 88.5);
        let s = Scaling::new(1.0, -40.0);
        assert!(s.integral);
        assert_eq!(s.apply(130.0), 90.0);
        assert_eq!(s.raw(90.0), 130.0);
        assert_eq!(Scaling::new(0.25, 0.0).raw(1303.75), 5215.0);
    }
}
