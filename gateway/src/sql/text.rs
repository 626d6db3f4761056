//! PostgreSQL binary result values → PostgreSQL text output.
//!
//! tokio-postgres receives every column in binary format; Neon's driver expects exactly what
//! PostgreSQL's output functions print under `DateStyle=ISO, MDY`, `IntervalStyle=postgres`,
//! `TimeZone=UTC`, `extra_float_digits=1` and `bytea_output=hex`, and parses it by type OID.
//! [`binary_to_text`] renders one value from its type OID alone; [`typed_to_text`] also
//! handles types only known through their catalog entry (enums, domains, composites, arrays
//! and ranges of those, `citext`).
//!
//! Supported by OID: `bool bytea "char" name int2 int4 int8 oid xid cid xid8 tid int2vector
//! oidvector text varchar bpchar unknown refcursor json jsonb jsonpath xml float4 float8
//! numeric uuid date time timetz timestamp timestamptz interval inet cidr macaddr macaddr8
//! bit varbit pg_lsn pg_snapshot txid_snapshot point lseg path box polygon line circle void
//! record`, the built-in range and multirange types, and arrays of all of these. Not
//! supported: `money` (locale-dependent), `tsvector`/`tsquery`, the `reg*` types (their text
//! needs catalog lookups) and anything else.

use std::fmt::Write as _;

use tokio_postgres::types::{FromSql, Kind, Type};

/// Why a value could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// No renderer for this type.
    #[error("unsupported result type OID {0}")]
    Unsupported(u32),
    /// The bytes are not a valid binary value of the type.
    #[error("malformed binary value for type OID {oid}")]
    Malformed {
        /// The type.
        oid: u32,
    },
}

/// The raw binary bytes of a value, whatever its type; read it as `Option<RawValue<'_>>` so
/// that NULL is `None`.
#[derive(Debug, Clone, Copy)]
pub struct RawValue<'a>(pub &'a [u8]);

impl<'a> FromSql<'a> for RawValue<'a> {
    fn from_sql(
        _ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(raw))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// Whether values of `oid` can be rendered by [`binary_to_text`]. (A `record` column is
/// accepted; a field of an unsupported type still fails when its row is rendered.)
pub fn supported(oid: u32) -> bool {
    scalar_supported(oid)
        || array_element(oid).is_some()
        || range_subtype(oid).is_some()
        || multirange_range(oid).is_some()
        || oid == RECORD
}

/// Renders one non-NULL binary value of type `oid` as PostgreSQL text output, appending to
/// `out`. On error nothing is appended.
pub fn binary_to_text(oid: u32, raw: &[u8], out: &mut String) -> Result<(), TextError> {
    guarded(out, |out| render(Ty::Oid(oid), raw, out))
}

/// Like [`supported`], for a type as tokio-postgres describes it: also enums, domains,
/// composites, `citext`, and arrays and ranges of supported types.
pub fn type_supported(ty: &Type) -> bool {
    if supported(ty.oid()) {
        return true;
    }
    match ty.kind() {
        Kind::Enum(_) => true,
        Kind::Domain(base) | Kind::Array(base) | Kind::Range(base) => type_supported(base),
        Kind::Composite(fields) => fields.iter().all(|f| type_supported(f.type_())),
        Kind::Simple => is_citext(ty),
        _ => false,
    }
}

/// Like [`binary_to_text`], for a type as tokio-postgres describes it (see [`type_supported`]).
pub fn typed_to_text(ty: &Type, raw: &[u8], out: &mut String) -> Result<(), TextError> {
    guarded(out, |out| render(Ty::Full(ty), raw, out))
}

/// Runs `f`, removing whatever it appended when it fails.
fn guarded(
    out: &mut String,
    f: impl FnOnce(&mut String) -> Result<(), TextError>,
) -> Result<(), TextError> {
    let start = out.len();
    let result = f(out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

const RECORD: u32 = 2249;
const BOX: u32 = 603;

/// A type to render: known by OID only, or with its catalog description.
#[derive(Clone, Copy)]
enum Ty<'a> {
    Oid(u32),
    Full(&'a Type),
}

impl Ty<'_> {
    fn oid(self) -> u32 {
        match self {
            Ty::Oid(oid) => oid,
            Ty::Full(ty) => ty.oid(),
        }
    }
}

fn is_citext(ty: &Type) -> bool {
    matches!(ty.kind(), Kind::Simple) && ty.name() == "citext"
}

fn render(ty: Ty<'_>, raw: &[u8], out: &mut String) -> Result<(), TextError> {
    let oid = ty.oid();
    let Ty::Full(full) = ty else {
        return render_oid(oid, raw, out);
    };
    if supported(oid) {
        return render_oid(oid, raw, out);
    }
    match full.kind() {
        Kind::Enum(_) => push_utf8(oid, raw, out),
        Kind::Simple if is_citext(full) => push_utf8(oid, raw, out),
        Kind::Domain(base) => render(Ty::Full(base), raw, out),
        Kind::Array(elem) => array(oid, Ty::Full(elem), b',', raw, out),
        Kind::Range(sub) => range(oid, Ty::Full(sub), raw, out),
        Kind::Composite(fields) => record(oid, Some(fields), raw, out),
        _ => Err(TextError::Unsupported(oid)),
    }
}

/// Element type of the supported array types.
fn array_element(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => 16,
        1001 => 17,
        1002 => 18,
        1003 => 19,
        1016 => 20,
        1005 => 21,
        1006 => 22,
        1007 => 23,
        1009 => 25,
        1028 => 26,
        1010 => 27,
        1011 => 28,
        1012 => 29,
        1013 => 30,
        199 => 114,
        143 => 142,
        1017 => 600,
        1018 => 601,
        1019 => 602,
        1020 => 603,
        1027 => 604,
        629 => 628,
        651 => 650,
        1021 => 700,
        1022 => 701,
        719 => 718,
        775 => 774,
        1040 => 829,
        1041 => 869,
        1014 => 1042,
        1015 => 1043,
        1182 => 1082,
        1183 => 1083,
        1115 => 1114,
        1185 => 1184,
        1187 => 1186,
        1270 => 1266,
        1561 => 1560,
        1563 => 1562,
        1231 => 1700,
        2201 => 1790,
        2287 => RECORD,
        2951 => 2950,
        2949 => 2970,
        3221 => 3220,
        3807 => 3802,
        3905 => 3904,
        3907 => 3906,
        3909 => 3908,
        3911 => 3910,
        3913 => 3912,
        3927 => 3926,
        4073 => 4072,
        5039 => 5038,
        271 => 5069,
        6150 => 4451,
        6151 => 4532,
        6152 => 4533,
        6153 => 4534,
        6155 => 4535,
        6157 => 4536,
        _ => return None,
    })
}

/// Element (sub)type of the built-in range types.
fn range_subtype(oid: u32) -> Option<u32> {
    Some(match oid {
        3904 => 23,
        3906 => 1700,
        3908 => 1114,
        3910 => 1184,
        3912 => 1082,
        3926 => 20,
        _ => return None,
    })
}

/// Range type of the built-in multirange types.
fn multirange_range(oid: u32) -> Option<u32> {
    Some(match oid {
        4451 => 3904,
        4532 => 3906,
        4533 => 3908,
        4534 => 3910,
        4535 => 3912,
        4536 => 3926,
        _ => return None,
    })
}

fn scalar_supported(oid: u32) -> bool {
    matches!(
        oid,
        16..=30
            | 114
            | 142
            | 600..=604
            | 628
            | 650
            | 700
            | 701
            | 705
            | 718
            | 774
            | 829
            | 869
            | 1042
            | 1043
            | 1082
            | 1083
            | 1114
            | 1184
            | 1186
            | 1266
            | 1560
            | 1562
            | 1700
            | 1790
            | 2278
            | 2950
            | 2970
            | 3220
            | 3802
            | 4072
            | 5038
            | 5069
    ) && !matches!(oid, 24)
}

/// A cursor over a binary value; every read fails with `Malformed` for `oid`.
struct Reader<'a> {
    oid: u32,
    raw: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(oid: u32, raw: &'a [u8]) -> Self {
        Self { oid, raw }
    }

    fn bad(&self) -> TextError {
        TextError::Malformed { oid: self.oid }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], TextError> {
        if self.raw.len() < n {
            return Err(self.bad());
        }
        let (head, rest) = self.raw.split_at(n);
        self.raw = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TextError> {
        Ok(self.bytes(N)?.try_into().expect("length checked"))
    }

    fn u8(&mut self) -> Result<u8, TextError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, TextError> {
        self.array().map(u16::from_be_bytes)
    }

    fn i32(&mut self) -> Result<i32, TextError> {
        self.array().map(i32::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, TextError> {
        self.array().map(u32::from_be_bytes)
    }

    fn i64(&mut self) -> Result<i64, TextError> {
        self.array().map(i64::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, TextError> {
        self.array().map(u64::from_be_bytes)
    }

    fn f64(&mut self) -> Result<f64, TextError> {
        self.array().map(f64::from_be_bytes)
    }

    /// A length-prefixed value; `None` for a length of -1 (NULL).
    fn value(&mut self) -> Result<Option<&'a [u8]>, TextError> {
        match self.i32()? {
            -1 => Ok(None),
            n if n < 0 => Err(self.bad()),
            n => self.bytes(n as usize).map(Some),
        }
    }

    /// Fails unless every byte was consumed.
    fn end(&self) -> Result<(), TextError> {
        if self.raw.is_empty() {
            Ok(())
        } else {
            Err(self.bad())
        }
    }
}

fn push_utf8(oid: u32, raw: &[u8], out: &mut String) -> Result<(), TextError> {
    out.push_str(std::str::from_utf8(raw).map_err(|_| TextError::Malformed { oid })?);
    Ok(())
}

fn render_oid(oid: u32, raw: &[u8], out: &mut String) -> Result<(), TextError> {
    if let Some(elem) = array_element(oid) {
        let delim = if elem == BOX { b';' } else { b',' };
        return array(oid, Ty::Oid(elem), delim, raw, out);
    }
    if let Some(sub) = range_subtype(oid) {
        return range(oid, Ty::Oid(sub), raw, out);
    }
    if let Some(range_oid) = multirange_range(oid) {
        return multirange(oid, range_oid, raw, out);
    }
    let mut r = Reader::new(oid, raw);
    match oid {
        16 => out.push(match r.u8()? {
            0 => 'f',
            _ => 't',
        }),
        17 => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.reserve(2 + raw.len() * 2);
            out.push_str("\\x");
            for &b in raw {
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 15)] as char);
            }
            return Ok(());
        }
        18 => {
            // PostgreSQL 15+: a high-bit byte prints as a backslash and three octal digits;
            // NUL prints as nothing.
            match r.u8()? {
                0 => {}
                c if c < 0x80 => out.push(c as char),
                c => {
                    let _ = write!(out, "\\{:03o}", c);
                }
            }
        }
        19 | 25 | 114 | 142 | 705 | 1042 | 1043 | 1790 => return push_utf8(oid, raw, out),
        // `void` (e.g. `select pg_sleep(0)`) prints as an empty string.
        2278 => {}
        // jsonb and jsonpath: a version byte (1), then the text.
        3802 | 4072 => match raw.split_first() {
            Some((1, rest)) => return push_utf8(oid, rest, out),
            _ => return Err(r.bad()),
        },
        20 => push_int(out, r.i64()?),
        21 => push_int(out, r.array().map(i16::from_be_bytes)?),
        23 => push_int(out, r.i32()?),
        26 | 28 | 29 => push_int(out, r.u32()?),
        5069 => push_int(out, r.u64()?),
        27 => {
            let block = r.u32()?;
            let offset = r.u16()?;
            let _ = write!(out, "({block},{offset})");
        }
        22 | 30 => return vector(oid, raw, out),
        700 => float4(out, r.array().map(f32::from_be_bytes)?),
        701 => float8(out, r.f64()?),
        1700 => return numeric(raw, out).ok_or(TextError::Malformed { oid }),
        2950 => {
            let b: [u8; 16] = r.array()?;
            for (i, byte) in b.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    out.push('-');
                }
                let _ = write!(out, "{byte:02x}");
            }
        }
        1082 => date(r.i32()?, out),
        1083 => clock(r.i64()?.unsigned_abs(), out),
        1266 => {
            clock(r.i64()?.unsigned_abs(), out);
            // PostgreSQL stores the zone as seconds *west* of UTC.
            zone(r.i32()?, out);
        }
        1114 => timestamp(r.i64()?, false, out),
        1184 => timestamp(r.i64()?, true, out),
        1186 => {
            let micros = r.i64()?;
            let days = r.i32()?;
            let months = r.i32()?;
            interval(micros, days, months, out);
        }
        650 | 869 => network(&mut r, oid == 650, out)?,
        829 | 774 => {
            let len = if oid == 829 { 6 } else { 8 };
            for (i, b) in r.bytes(len)?.iter().enumerate() {
                if i > 0 {
                    out.push(':');
                }
                let _ = write!(out, "{b:02x}");
            }
        }
        1560 | 1562 => {
            let bits = r.i32()?;
            let bytes = r.bytes(usize::try_from(bits).map_err(|_| r.bad())?.div_ceil(8))?;
            for i in 0..bits as usize {
                out.push(if bytes[i / 8] & (0x80 >> (i % 8)) != 0 {
                    '1'
                } else {
                    '0'
                });
            }
        }
        3220 => {
            let lsn = r.u64()?;
            let _ = write!(out, "{:X}/{:X}", lsn >> 32, lsn as u32);
        }
        2970 | 5038 => {
            let n = r.i32()?;
            let xmin = r.u64()?;
            let xmax = r.u64()?;
            let _ = write!(out, "{xmin}:{xmax}:");
            for i in 0..n.max(0) {
                if i > 0 {
                    out.push(',');
                }
                push_int(out, r.u64()?);
            }
        }
        600 => point(&mut r, out)?,
        601 => {
            out.push('[');
            point(&mut r, out)?;
            out.push(',');
            point(&mut r, out)?;
            out.push(']');
        }
        603 => {
            point(&mut r, out)?;
            out.push(',');
            point(&mut r, out)?;
        }
        602 | 604 => {
            let closed = oid == 604 || r.u8()? != 0;
            let n = r.i32()?;
            out.push(if closed { '(' } else { '[' });
            for i in 0..n.max(0) {
                if i > 0 {
                    out.push(',');
                }
                point(&mut r, out)?;
            }
            out.push(if closed { ')' } else { ']' });
        }
        628 => {
            out.push('{');
            float8(out, r.f64()?);
            out.push(',');
            float8(out, r.f64()?);
            out.push(',');
            float8(out, r.f64()?);
            out.push('}');
        }
        718 => {
            out.push('<');
            point(&mut r, out)?;
            out.push(',');
            float8(out, r.f64()?);
            out.push('>');
        }
        RECORD => return record(oid, None, raw, out),
        _ => return Err(TextError::Unsupported(oid)),
    }
    r.end()
}

fn push_int(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// `(x,y)` from two float8s.
fn point(r: &mut Reader<'_>, out: &mut String) -> Result<(), TextError> {
    out.push('(');
    float8(out, r.f64()?);
    out.push(',');
    float8(out, r.f64()?);
    out.push(')');
    Ok(())
}

/// `int2vector` / `oidvector`: a one-dimensional array printed space-separated.
fn vector(oid: u32, raw: &[u8], out: &mut String) -> Result<(), TextError> {
    let mut r = Reader::new(oid, raw);
    let ndim = r.i32()?;
    let _flags = r.i32()?;
    let elem = r.u32()?;
    let n = match ndim {
        0 => 0,
        1 => {
            let n = r.i32()?;
            let _lower = r.i32()?;
            n.max(0)
        }
        _ => return Err(r.bad()),
    };
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        let v = r.value()?.ok_or_else(|| r.bad())?;
        let mut e = Reader::new(oid, v);
        match elem {
            21 => push_int(out, e.array().map(i16::from_be_bytes)?),
            26 => push_int(out, e.u32()?),
            _ => return Err(r.bad()),
        }
        e.end()?;
    }
    r.end()
}

/// A small stack buffer for `{:e}` output of a float (at most ~25 bytes).
struct Small {
    buf: [u8; 48],
    len: usize,
}

impl std::fmt::Write for Small {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn float8(out: &mut String, v: f64) {
    if v.is_finite() {
        let mut s = Small {
            buf: [0; 48],
            len: 0,
        };
        let _ = write!(s, "{v:e}");
        shortest(out, &s.buf[..s.len], 15);
    } else {
        special(out, v.is_nan(), v > 0.0);
    }
}

fn float4(out: &mut String, v: f32) {
    if v.is_finite() {
        let mut s = Small {
            buf: [0; 48],
            len: 0,
        };
        let _ = write!(s, "{v:e}");
        shortest(out, &s.buf[..s.len], 6);
    } else {
        special(out, v.is_nan(), v > 0.0);
    }
}

fn special(out: &mut String, nan: bool, positive: bool) {
    out.push_str(match (nan, positive) {
        (true, _) => "NaN",
        (false, true) => "Infinity",
        (false, false) => "-Infinity",
    });
}

/// Rust's shortest round-trip `{:e}` (`-1.5e3`) spelled like PostgreSQL's Ryu output with
/// `extra_float_digits > 0`: positional when `-4 <= exponent < fixed_below` (15 for float8,
/// 6 for float4), else `d.ddde+XX` with at least two exponent digits.
fn shortest(out: &mut String, sci: &[u8], fixed_below: i32) {
    let (neg, sci) = match sci.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, sci),
    };
    let e = sci.iter().position(|&c| c == b'e').unwrap_or(sci.len());
    let exp: i32 = std::str::from_utf8(sci.get(e + 1..).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut digits = [0u8; 24];
    let mut n = 0;
    for &c in &sci[..e] {
        if c.is_ascii_digit() && n < digits.len() {
            digits[n] = c;
            n += 1;
        }
    }
    let digits = &digits[..n.max(1)];
    let digit = |i: usize| digits[i] as char;
    if neg {
        out.push('-');
    }
    if exp < -4 || exp >= fixed_below {
        out.push(digit(0));
        if digits.len() > 1 {
            out.push('.');
            digits[1..].iter().for_each(|&c| out.push(c as char));
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        if exp.abs() < 10 {
            out.push('0');
        }
        push_int(out, exp.abs());
    } else if exp < 0 {
        out.push_str("0.");
        (1..-exp).for_each(|_| out.push('0'));
        digits.iter().for_each(|&c| out.push(c as char));
    } else {
        let point = exp as usize + 1;
        for i in 0..digits.len().max(point) {
            if i == point {
                out.push('.');
            }
            out.push(if i < digits.len() { digit(i) } else { '0' });
        }
    }
}

/// Binary numeric: ndigits, weight, sign, dscale, then base-10000 digits; printed like
/// PostgreSQL's `get_str_from_var` (exactly `dscale` fraction digits).
fn numeric(raw: &[u8], out: &mut String) -> Option<()> {
    let mut r = Reader::new(1700, raw);
    let ndigits = usize::from(r.u16().ok()?);
    let weight = i32::from(r.u16().ok()? as i16);
    let sign = r.u16().ok()?;
    let dscale = usize::from(r.u16().ok()?);
    let digits = r.bytes(ndigits * 2).ok()?;
    r.end().ok()?;
    let special = match sign {
        0xC000 => "NaN",
        0xD000 => "Infinity",
        0xF000 => "-Infinity",
        0x4000 => {
            out.push('-');
            ""
        }
        0x0000 => "",
        _ => return None,
    };
    if !special.is_empty() {
        out.push_str(special);
        return Some(());
    }
    if dscale > 0x3FFF {
        return None;
    }
    let digit = |i: i32| -> Option<u16> {
        if i < 0 || i as usize >= ndigits {
            return Some(0);
        }
        let at = i as usize * 2;
        let d = u16::from_be_bytes([digits[at], digits[at + 1]]);
        (d < 10_000).then_some(d)
    };
    let mut d = 0;
    if weight < 0 {
        d = weight + 1;
        out.push('0');
    } else {
        while d <= weight {
            let dig = digit(d)?;
            if d == 0 {
                push_int(out, dig);
            } else {
                push4(out, dig);
            }
            d += 1;
        }
    }
    if dscale > 0 {
        out.push('.');
        let end = out.len() + dscale;
        while out.len() < end {
            push4(out, digit(d)?);
            d += 1;
        }
        out.truncate(end);
    }
    Some(())
}

/// Four decimal digits with leading zeros.
fn push4(out: &mut String, d: u16) {
    for div in [1000, 100, 10, 1] {
        out.push(char::from(b'0' + (d / div % 10) as u8));
    }
}

/// Two decimal digits with a leading zero (or more digits when needed).
fn push2(out: &mut String, v: u64) {
    if v < 10 {
        out.push('0');
    }
    push_int(out, v);
}

/// Days since 2000-01-01 → (year, month, day), proleptic Gregorian; year 0 is 1 BC.
fn civil(days: i64) -> (i64, u64, u64) {
    // Howard Hinnant's `civil_from_days`, shifted from the 1970 epoch to PostgreSQL's 2000.
    let z = days + 10_957 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYY-MM-DD`; returns whether the year is BC (so the caller appends ` BC` at the end).
fn push_date(days: i64, out: &mut String) -> bool {
    let (y, m, d) = civil(days);
    let bc = y <= 0;
    let year = if bc { 1 - y } else { y } as u64;
    for div in [1000, 100, 10] {
        if year < div {
            out.push('0');
        }
    }
    push_int(out, year);
    out.push('-');
    push2(out, m);
    out.push('-');
    push2(out, d);
    bc
}

fn date(days: i32, out: &mut String) {
    match days {
        i32::MAX => out.push_str("infinity"),
        i32::MIN => out.push_str("-infinity"),
        d => {
            if push_date(i64::from(d), out) {
                out.push_str(" BC");
            }
        }
    }
}

/// `HH:MM:SS[.ffffff]` with trailing zeros of the fraction removed; hours may exceed 24.
fn clock(micros: u64, out: &mut String) {
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    push2(out, secs / 3600);
    out.push(':');
    push2(out, secs / 60 % 60);
    out.push(':');
    push2(out, secs % 60);
    if frac != 0 {
        out.push('.');
        let mut frac = frac;
        let mut width = 6;
        while frac % 10 == 0 {
            frac /= 10;
            width -= 1;
        }
        let _ = write!(out, "{frac:0width$}");
    }
}

/// A time zone given in seconds *west* of UTC: `+HH`, `+HH:MM` or `+HH:MM:SS`.
fn zone(west_secs: i32, out: &mut String) {
    out.push(if west_secs <= 0 { '+' } else { '-' });
    let s = u64::from(west_secs.unsigned_abs());
    push2(out, s / 3600);
    if s % 3600 != 0 {
        out.push(':');
        push2(out, s / 60 % 60);
        if s % 60 != 0 {
            out.push(':');
            push2(out, s % 60);
        }
    }
}

fn timestamp(micros: i64, utc: bool, out: &mut String) {
    match micros {
        i64::MAX => return out.push_str("infinity"),
        i64::MIN => return out.push_str("-infinity"),
        _ => {}
    }
    const DAY: i64 = 86_400_000_000;
    let bc = push_date(micros.div_euclid(DAY), out);
    out.push(' ');
    clock(micros.rem_euclid(DAY) as u64, out);
    if utc {
        out.push_str("+00");
    }
    if bc {
        out.push_str(" BC");
    }
}

/// IntervalStyle `postgres`: `1 year 2 mons 3 days 04:05:06.5`, `-1 days +00:00:01`,
/// `00:00:00`. A field right after a negative one gets an explicit `+` when positive.
fn interval(micros: i64, days: i32, months: i32, out: &mut String) {
    let mut is_before = false;
    let mut is_zero = true;
    for (value, unit) in [(months / 12, "year"), (months % 12, "mon"), (days, "day")] {
        if value == 0 {
            continue;
        }
        if !is_zero {
            out.push(' ');
        }
        if is_before && value > 0 {
            out.push('+');
        }
        push_int(out, value);
        out.push(' ');
        out.push_str(unit);
        if value != 1 {
            out.push('s');
        }
        is_before = value < 0;
        is_zero = false;
    }
    if is_zero || micros != 0 {
        if !is_zero {
            out.push(' ');
        }
        if micros < 0 {
            out.push('-');
        } else if is_before {
            out.push('+');
        }
        clock(micros.unsigned_abs(), out);
    }
}

/// inet/cidr: family (2 = IPv4, 3 = IPv6), bits, is_cidr, address length, address.
fn network(r: &mut Reader<'_>, cidr: bool, out: &mut String) -> Result<(), TextError> {
    let family = r.u8()?;
    let bits = r.u8()?;
    let _is_cidr = r.u8()?;
    let len = r.u8()?;
    let (max, expected) = match family {
        2 => (32, 4),
        3 => (128, 16),
        _ => return Err(r.bad()),
    };
    if len != expected || bits > max {
        return Err(r.bad());
    }
    let addr = r.bytes(usize::from(len))?;
    if family == 2 {
        dotted(addr, out);
    } else {
        ipv6(addr.try_into().expect("16 bytes"), out);
    }
    // inet omits a full-length mask; cidr always shows it.
    if cidr || bits != max {
        out.push('/');
        push_int(out, bits);
    }
    Ok(())
}

fn dotted(addr: &[u8], out: &mut String) {
    for (i, b) in addr.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_int(out, *b);
    }
}

/// IPv6 like PostgreSQL's `inet_net_ntop_ipv6`: the longest run (≥ 2) of zero words becomes
/// `::`, and `::a.b.c.d` / `::ffff:a.b.c.d` keep the IPv4 part dotted.
fn ipv6(addr: &[u8; 16], out: &mut String) {
    let words: [u16; 8] =
        std::array::from_fn(|i| u16::from_be_bytes([addr[2 * i], addr[2 * i + 1]]));
    let (mut best, mut best_len) = (None::<usize>, 0);
    let mut i = 0;
    while i < 8 {
        if words[i] == 0 {
            let start = i;
            while i < 8 && words[i] == 0 {
                i += 1;
            }
            if best.is_none() || i - start > best_len {
                best = Some(start);
                best_len = i - start;
            }
        } else {
            i += 1;
        }
    }
    if best_len < 2 {
        best = None;
    }
    for (i, word) in words.iter().enumerate() {
        if let Some(b) = best {
            if i >= b && i < b + best_len {
                if i == b {
                    out.push(':');
                }
                continue;
            }
        }
        if i != 0 {
            out.push(':');
        }
        if i == 6
            && best == Some(0)
            && (best_len == 6
                || (best_len == 7 && words[7] != 1)
                || (best_len == 5 && words[5] == 0xffff))
        {
            dotted(&addr[12..], out);
            return;
        }
        let _ = write!(out, "{word:x}");
    }
    if best.is_some_and(|b| b + best_len == 8) {
        out.push(':');
    }
}

/// Binary array (ndim, has-nulls flag, element OID, per dimension length and lower bound,
/// then length-prefixed elements) → `{...}`, with `[lo:hi]=` when a lower bound isn't 1.
fn array(oid: u32, elem: Ty<'_>, delim: u8, raw: &[u8], out: &mut String) -> Result<(), TextError> {
    const MAXDIM: usize = 6;
    let mut r = Reader::new(oid, raw);
    let ndim = usize::try_from(r.i32()?).map_err(|_| r.bad())?;
    let _flags = r.i32()?;
    if r.u32()? != elem.oid() || ndim > MAXDIM {
        return Err(r.bad());
    }
    let mut dims = [(0usize, 0i32); MAXDIM];
    let mut total = 1usize;
    for dim in dims.iter_mut().take(ndim) {
        let len = usize::try_from(r.i32()?).map_err(|_| r.bad())?;
        *dim = (len, r.i32()?);
        // Every element takes at least its 4-byte length.
        total = total
            .checked_mul(len)
            .filter(|&t| t <= raw.len() / 4)
            .ok_or_else(|| r.bad())?;
    }
    let dims = &dims[..ndim];
    if ndim == 0 || total == 0 {
        out.push_str("{}");
        return r.end();
    }
    if dims.iter().any(|&(_, lower)| lower != 1) {
        for &(len, lower) in dims {
            let _ = write!(out, "[{}:{}]", lower, i64::from(lower) + len as i64 - 1);
        }
        out.push('=');
    }
    // Open braces for every dimension, then per element: separator or close/open braces.
    let mut index = [0usize; MAXDIM];
    let mut scratch = String::new();
    (0..ndim).for_each(|_| out.push('{'));
    for n in 0..total {
        if n > 0 {
            // Advance the multi-dimensional index; dimensions that wrapped close and reopen.
            let mut d = ndim - 1;
            index[d] += 1;
            let mut wrapped = 0;
            while index[d] == dims[d].0 {
                index[d] = 0;
                wrapped += 1;
                d -= 1;
                index[d] += 1;
            }
            (0..wrapped).for_each(|_| out.push('}'));
            out.push(delim as char);
            (0..wrapped).for_each(|_| out.push('{'));
        }
        match r.value()? {
            None => out.push_str("NULL"),
            Some(v) => {
                scratch.clear();
                render(elem, v, &mut scratch)?;
                quote_array_element(&scratch, delim, out);
            }
        }
    }
    (0..ndim).for_each(|_| out.push('}'));
    r.end()
}

fn quote_array_element(s: &str, delim: u8, out: &mut String) {
    let needs = s.is_empty()
        || s.eq_ignore_ascii_case("NULL")
        || s.bytes().any(|c| {
            matches!(
                c,
                b'{' | b'}' | b'"' | b'\\' | b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C
            ) || c == delim
        });
    if !needs {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Quotes a range bound or record field the way `range_out`/`record_out` do: double quotes
/// when empty or containing a special character or whitespace; `"` and `\` doubled.
fn quote_doubling(s: &str, special: &[u8], out: &mut String) {
    let needs = s.is_empty()
        || s.bytes().any(|c| {
            special.contains(&c) || matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C)
        });
    if !needs {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push(c);
        }
        out.push(c);
    }
    out.push('"');
}

/// Range flag bits (`rangetypes.h`).
const RANGE_EMPTY: u8 = 0x01;
const RANGE_LB_INC: u8 = 0x02;
const RANGE_UB_INC: u8 = 0x04;
const RANGE_LB_INF: u8 = 0x08;
const RANGE_UB_INF: u8 = 0x10;
const RANGE_LB_NULL: u8 = 0x20;
const RANGE_UB_NULL: u8 = 0x40;

/// Binary range (flags byte, then the present bounds length-prefixed) → `[lo,hi)` / `empty`.
fn range(oid: u32, sub: Ty<'_>, raw: &[u8], out: &mut String) -> Result<(), TextError> {
    let mut r = Reader::new(oid, raw);
    let flags = r.u8()?;
    if flags & RANGE_EMPTY != 0 {
        out.push_str("empty");
        return r.end();
    }
    out.push(if flags & RANGE_LB_INC != 0 { '[' } else { '(' });
    let mut scratch = String::new();
    for (i, absent) in [RANGE_LB_INF | RANGE_LB_NULL, RANGE_UB_INF | RANGE_UB_NULL]
        .into_iter()
        .enumerate()
    {
        if i == 1 {
            out.push(',');
        }
        if flags & absent == 0 {
            let v = r.value()?.ok_or_else(|| r.bad())?;
            scratch.clear();
            render(sub, v, &mut scratch)?;
            quote_doubling(&scratch, b"\"\\()[],", out);
        }
    }
    out.push(if flags & RANGE_UB_INC != 0 { ']' } else { ')' });
    r.end()
}

/// Binary multirange (count, then length-prefixed ranges) → `{[1,2),[5,6)}`.
fn multirange(oid: u32, range_oid: u32, raw: &[u8], out: &mut String) -> Result<(), TextError> {
    let mut r = Reader::new(oid, raw);
    let n = r.i32()?;
    let sub = range_subtype(range_oid).ok_or(TextError::Unsupported(range_oid))?;
    out.push('{');
    for i in 0..n.max(0) {
        if i > 0 {
            out.push(',');
        }
        let v = r.value()?.ok_or_else(|| r.bad())?;
        range(range_oid, Ty::Oid(sub), v, out)?;
    }
    out.push('}');
    r.end()
}

/// Binary record (field count, then per field its type OID and length-prefixed value) →
/// `(1,"a b",,"")`: NULL fields print as nothing.
fn record(
    oid: u32,
    fields: Option<&[tokio_postgres::types::Field]>,
    raw: &[u8],
    out: &mut String,
) -> Result<(), TextError> {
    let mut r = Reader::new(oid, raw);
    let n = usize::try_from(r.i32()?).map_err(|_| r.bad())?;
    if fields.is_some_and(|f| f.len() != n) {
        return Err(r.bad());
    }
    let mut scratch = String::new();
    out.push('(');
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        let field_oid = r.u32()?;
        let ty = match fields.map(|f| f[i].type_()) {
            Some(t) if t.oid() == field_oid => Ty::Full(t),
            _ => Ty::Oid(field_oid),
        };
        if let Some(v) = r.value()? {
            scratch.clear();
            render(ty, v, &mut scratch)?;
            quote_doubling(&scratch, b"\"\\(),", out);
        }
    }
    out.push(')');
    r.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(oid: u32, raw: &[u8]) -> String {
        let mut s = String::new();
        binary_to_text(oid, raw, &mut s).unwrap();
        s
    }

    fn numeric_bytes(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [digits.len() as u16, weight as u16, sign, dscale] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    /// A binary array: `dims` as (length, lower bound).
    fn arr(elem: u32, dims: &[(i32, i32)], elems: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(dims.len() as i32).to_be_bytes());
        b.extend_from_slice(&i32::from(elems.iter().any(|e| e.is_none())).to_be_bytes());
        b.extend_from_slice(&elem.to_be_bytes());
        for (len, lower) in dims {
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(&lower.to_be_bytes());
        }
        for e in elems {
            lenval(&mut b, *e);
        }
        b
    }

    fn lenval(b: &mut Vec<u8>, v: Option<&[u8]>) {
        match v {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
        }
    }

    fn iv(us: i64, d: i32, m: i32) -> String {
        let mut b = us.to_be_bytes().to_vec();
        b.extend_from_slice(&d.to_be_bytes());
        b.extend_from_slice(&m.to_be_bytes());
        text(1186, &b)
    }

    #[test]
    fn scalars() {
        assert_eq!(text(16, &[1]), "t");
        assert_eq!(text(16, &[0]), "f");
        assert_eq!(text(21, &(-32768i16).to_be_bytes()), "-32768");
        assert_eq!(text(23, &(-42i32).to_be_bytes()), "-42");
        assert_eq!(text(20, &i64::MIN.to_be_bytes()), "-9223372036854775808");
        assert_eq!(text(26, &u32::MAX.to_be_bytes()), "4294967295");
        assert_eq!(text(17, &[0, 0xab, 0x7f]), "\\x00ab7f");
        assert_eq!(text(17, &[]), "\\x");
        assert_eq!(text(18, b"a"), "a");
        assert_eq!(text(18, &[0xc8]), "\\310");
        assert_eq!(text(18, &[0]), "");
        assert_eq!(text(25, "héllo ✓".as_bytes()), "héllo ✓");
        assert_eq!(text(3802, b"\x01{\"a\": 1}"), "{\"a\": 1}");
        assert_eq!(text(4072, b"\x01$.\"a\""), "$.\"a\"");
        assert_eq!(
            text(2950, &[0x12; 16]),
            "12121212-1212-1212-1212-121212121212"
        );
        assert_eq!(text(27, &[0, 0, 0, 7, 0, 3]), "(7,3)");
        assert_eq!(text(3220, &0x1_6B37_4D48u64.to_be_bytes()), "1/6B374D48");
        assert_eq!(text(829, &[8, 0, 0x2b, 1, 2, 3]), "08:00:2b:01:02:03");
        assert_eq!(text(1562, &[0, 0, 0, 5, 0b1010_1000]), "10101");
        assert_eq!(text(2278, &[]), "");
    }

    #[test]
    fn malformed_and_unsupported() {
        let mut s = String::from("keep");
        assert_eq!(
            binary_to_text(23, &[0, 1], &mut s),
            Err(TextError::Malformed { oid: 23 })
        );
        assert_eq!(
            binary_to_text(790, &[0; 8], &mut s),
            Err(TextError::Unsupported(790))
        );
        assert_eq!(
            binary_to_text(25, &[0xff], &mut s),
            Err(TextError::Malformed { oid: 25 })
        );
        // A bad element leaves nothing of the array behind.
        let bad = arr(23, &[(2, 1)], &[Some(&1i32.to_be_bytes()), Some(&[1])]);
        assert!(binary_to_text(1007, &bad, &mut s).is_err());
        assert_eq!(s, "keep");
        // Wrong element type, trailing bytes, absurd lengths.
        let wrong = arr(20, &[(1, 1)], &[Some(&1i64.to_be_bytes())]);
        assert!(binary_to_text(1007, &wrong, &mut s).is_err());
        assert!(binary_to_text(23, &[0, 0, 0, 1, 0], &mut s).is_err());
        let huge = arr(23, &[(i32::MAX, 1), (i32::MAX, 1)], &[]);
        assert!(binary_to_text(1007, &huge, &mut s).is_err());
        assert!(binary_to_text(1700, &numeric_bytes(0, 0, 0, &[10_000]), &mut s).is_err());
        assert!(!supported(790) && !supported(24) && supported(1007) && supported(4451));
    }

    #[test]
    fn floats_like_postgres() {
        let f8 = |v: f64| text(701, &v.to_be_bytes());
        let f4 = |v: f32| text(700, &v.to_be_bytes());
        assert_eq!(f8(1.5), "1.5");
        assert_eq!(f8(100.0), "100");
        assert_eq!(f8(0.1), "0.1");
        assert_eq!(f8(0.0001), "0.0001");
        assert_eq!(f8(0.00001), "1e-05");
        assert_eq!(f8(1e14), "100000000000000");
        assert_eq!(f8(1e15), "1e+15");
        assert_eq!(f8(1.25e100), "1.25e+100");
        assert_eq!(f8(-0.0), "-0");
        assert_eq!(f8(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(f8(f64::NAN), "NaN");
        assert_eq!(f8(f64::INFINITY), "Infinity");
        assert_eq!(f8(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(f4(0.1), "0.1");
        assert_eq!(f4(123_456.0), "123456");
        assert_eq!(f4(1e6), "1e+06");
        assert_eq!(f4(1_234_567.0), "1.234567e+06");
        assert_eq!(f4(-1.5e-5), "-1.5e-05");
    }

    #[test]
    fn numerics() {
        assert_eq!(text(1700, &numeric_bytes(0, 0, 2, &[1, 5000])), "1.50");
        assert_eq!(
            text(1700, &numeric_bytes(1, 0x4000, 0, &[12, 3456])),
            "-123456"
        );
        assert_eq!(text(1700, &numeric_bytes(-2, 0, 6, &[100])), "0.000001");
        assert_eq!(text(1700, &numeric_bytes(0, 0, 0, &[])), "0");
        assert_eq!(text(1700, &numeric_bytes(0, 0, 3, &[])), "0.000");
        assert_eq!(
            text(1700, &numeric_bytes(5, 0, 0, &[1])),
            "100000000000000000000"
        );
        assert_eq!(
            text(1700, &numeric_bytes(0, 0x4000, 5, &[3, 1415, 9265])),
            "-3.14159"
        );
        assert_eq!(text(1700, &numeric_bytes(0, 0xC000, 0, &[])), "NaN");
        assert_eq!(text(1700, &numeric_bytes(0, 0xD000, 0, &[])), "Infinity");
        assert_eq!(text(1700, &numeric_bytes(0, 0xF000, 0, &[])), "-Infinity");
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(text(1082, &0i32.to_be_bytes()), "2000-01-01");
        assert_eq!(text(1082, &59i32.to_be_bytes()), "2000-02-29");
        assert_eq!(text(1082, &(-730_120i32).to_be_bytes()), "0001-12-31 BC");
        assert_eq!(text(1082, &(-730_119i32).to_be_bytes()), "0001-01-01");
        assert_eq!(text(1082, &(-2_451_545i32).to_be_bytes()), "4714-11-24 BC");
        assert_eq!(text(1082, &2_921_940i32.to_be_bytes()), "10000-01-01");
        assert_eq!(text(1082, &i32::MAX.to_be_bytes()), "infinity");
        assert_eq!(text(1082, &i32::MIN.to_be_bytes()), "-infinity");
        let micros = (366 * 86_400 + 3600 + 62) * 1_000_000i64 + 123_000;
        assert_eq!(
            text(1184, &micros.to_be_bytes()),
            "2001-01-01 01:01:02.123+00"
        );
        assert_eq!(text(1114, &0i64.to_be_bytes()), "2000-01-01 00:00:00");
        assert_eq!(
            text(1114, &(-1i64).to_be_bytes()),
            "1999-12-31 23:59:59.999999"
        );
        let bc = -730_120i64 * 86_400_000_000 + 1_500_000;
        assert_eq!(text(1184, &bc.to_be_bytes()), "0001-12-31 00:00:01.5+00 BC");
        assert_eq!(text(1114, &i64::MAX.to_be_bytes()), "infinity");
        assert_eq!(text(1184, &i64::MIN.to_be_bytes()), "-infinity");
        assert_eq!(text(1083, &86_400_000_000i64.to_be_bytes()), "24:00:00");
        assert_eq!(
            text(1083, &45_296_000_010i64.to_be_bytes()),
            "12:34:56.00001"
        );
        let tz = |us: i64, west: i32| {
            let mut b = us.to_be_bytes().to_vec();
            b.extend_from_slice(&west.to_be_bytes());
            text(1266, &b)
        };
        assert_eq!(tz(3_600_000_000, 0), "01:00:00+00");
        assert_eq!(tz(0, -19_800), "00:00:00+05:30");
        assert_eq!(tz(0, 3_723), "00:00:00-01:02:03");
    }

    #[test]
    fn intervals() {
        assert_eq!(iv(0, 0, 0), "00:00:00");
        assert_eq!(iv(14_706_500_000, 3, 14), "1 year 2 mons 3 days 04:05:06.5");
        assert_eq!(iv(-1_000_000, 0, 0), "-00:00:01");
        assert_eq!(iv(0, 1, 1), "1 mon 1 day");
        assert_eq!(iv(1_000_000, -1, 0), "-1 days +00:00:01");
        assert_eq!(iv(-1_000_000, 1, -13), "-1 years -1 mons +1 day -00:00:01");
        assert_eq!(iv(360_000_000_000, 0, 0), "100:00:00");
        assert_eq!(iv(i64::MIN, 0, 0), "-2562047788:00:54.775808");
    }

    #[test]
    fn networks() {
        let net = |family: u8, bits: u8, cidr: bool, addr: &[u8]| {
            let mut b = vec![family, bits, u8::from(cidr), addr.len() as u8];
            b.extend_from_slice(addr);
            text(if cidr { 650 } else { 869 }, &b)
        };
        assert_eq!(net(2, 32, false, &[1, 2, 3, 4]), "1.2.3.4");
        assert_eq!(net(2, 24, false, &[1, 2, 3, 4]), "1.2.3.4/24");
        assert_eq!(net(2, 32, true, &[1, 2, 3, 4]), "1.2.3.4/32");
        let mut v6 = [0u8; 16];
        assert_eq!(net(3, 128, false, &v6), "::");
        v6[15] = 1;
        assert_eq!(net(3, 128, false, &v6), "::1");
        v6[10..].copy_from_slice(&[0xff, 0xff, 1, 2, 3, 4]);
        assert_eq!(net(3, 128, false, &v6), "::ffff:1.2.3.4");
        let v6 = [0, 1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3];
        assert_eq!(net(3, 64, false, &v6), "1:0:0:2::3/64");
        let v6 = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(net(3, 32, true, &v6), "2001:db8::/32");
    }

    #[test]
    fn geometry() {
        let floats = |vs: &[f64]| vs.iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<u8>>();
        assert_eq!(text(600, &floats(&[1.5, -2.0])), "(1.5,-2)");
        assert_eq!(text(601, &floats(&[0.0, 0.0, 1.0, 1.0])), "[(0,0),(1,1)]");
        assert_eq!(text(603, &floats(&[3.0, 4.0, 1.0, 2.0])), "(3,4),(1,2)");
        assert_eq!(text(628, &floats(&[1.0, -1.0, 0.0])), "{1,-1,0}");
        assert_eq!(text(718, &floats(&[0.0, 0.0, 2.5])), "<(0,0),2.5>");
        let mut path = vec![0u8];
        path.extend_from_slice(&2i32.to_be_bytes());
        path.extend_from_slice(&floats(&[0.0, 0.0, 1.0, 1.0]));
        assert_eq!(text(602, &path), "[(0,0),(1,1)]");
        assert_eq!(text(604, &path[1..]), "((0,0),(1,1))");
        let b = floats(&[1.0, 1.0, 0.0, 0.0]);
        let boxes = arr(603, &[(2, 1)], &[Some(&b[..]); 2]);
        assert_eq!(text(1020, &boxes), "{(1,1),(0,0);(1,1),(0,0)}");
    }

    #[test]
    fn arrays() {
        let one = 1i32.to_be_bytes();
        let two = 2i32.to_be_bytes();
        assert_eq!(
            text(1007, &arr(23, &[(3, 1)], &[Some(&one), Some(&two), None])),
            "{1,2,NULL}"
        );
        assert_eq!(
            text(1007, &arr(23, &[(2, 1), (1, 1)], &[Some(&one), Some(&two)])),
            "{{1},{2}}"
        );
        assert_eq!(
            text(
                1007,
                &arr(
                    23,
                    &[(2, 1), (2, 1)],
                    &[Some(&one), Some(&two), None, Some(&one)]
                )
            ),
            "{{1,2},{NULL,1}}"
        );
        let eight = vec![Some(&one[..]); 8];
        assert_eq!(
            text(1007, &arr(23, &[(2, 1), (2, 1), (2, 1)], &eight)),
            "{{{1,1},{1,1}},{{1,1},{1,1}}}"
        );
        assert_eq!(text(1007, &arr(23, &[(1, 0)], &[Some(&one)])), "[0:0]={1}");
        assert_eq!(
            text(1007, &arr(23, &[(1, -2), (2, 1)], &[Some(&one), None])),
            "[-2:-2][1:2]={{1,NULL}}"
        );
        assert_eq!(text(1007, &arr(23, &[], &[])), "{}");
        let texts: [&[u8]; 7] = [b"a b", b"", b"NULL", b"q\"\\", b"x{y}", b"nul", b"\x0bv"];
        let elems: Vec<Option<&[u8]>> = texts.iter().map(|t| Some(*t)).collect();
        assert_eq!(
            text(1009, &arr(25, &[(7, 1)], &elems)),
            "{\"a b\",\"\",\"NULL\",\"q\\\"\\\\\",\"x{y}\",nul,\"\x0bv\"}"
        );
        assert_eq!(
            text(1001, &arr(17, &[(2, 1)], &[Some(&[1, 2]), Some(&[])])),
            r#"{"\\x0102","\\x"}"#
        );
        assert_eq!(
            text(
                1182,
                &arr(1082, &[(1, 1)], &[Some(&(-730_120i32).to_be_bytes())])
            ),
            r#"{"0001-12-31 BC"}"#
        );
        let v = vec![0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 21, 0, 0, 0, 2, 0, 0, 0, 0];
        let mut v = v;
        for n in [1i16, -2] {
            lenval(&mut v, Some(&n.to_be_bytes()));
        }
        v[3] = 1;
        assert_eq!(text(22, &v), "1 -2");
    }

    #[test]
    fn ranges_and_records() {
        let mut r = vec![RANGE_LB_INC];
        lenval(&mut r, Some(&1i32.to_be_bytes()));
        lenval(&mut r, Some(&5i32.to_be_bytes()));
        assert_eq!(text(3904, &r), "[1,5)");
        assert_eq!(text(3904, &[RANGE_EMPTY]), "empty");
        let mut ts = vec![RANGE_LB_INC | RANGE_UB_INF];
        lenval(&mut ts, Some(&0i64.to_be_bytes()));
        assert_eq!(text(3908, &ts), "[\"2000-01-01 00:00:00\",)");
        let mut mr = 2i32.to_be_bytes().to_vec();
        lenval(&mut mr, Some(&r));
        lenval(&mut mr, Some(&[RANGE_LB_INF | RANGE_UB_INF]));
        assert_eq!(text(4451, &mr), "{[1,5),(,)}");
        assert_eq!(text(4451, &0i32.to_be_bytes()), "{}");

        let mut rec = 4i32.to_be_bytes().to_vec();
        for (oid, v) in [
            (23u32, Some(&1i32.to_be_bytes()[..])),
            (25, Some(&b"a \"b\\"[..])),
            (25, None),
            (25, Some(&b""[..])),
        ] {
            rec.extend_from_slice(&oid.to_be_bytes());
            lenval(&mut rec, v);
        }
        assert_eq!(text(RECORD, &rec), r#"(1,"a ""b\\",,"")"#);
    }

    #[test]
    fn typed_enums_domains_composites() {
        let mood = Type::new(
            "mood".into(),
            90_001,
            Kind::Enum(vec!["happy".into()]),
            "public".into(),
        );
        let moods = Type::new(
            "_mood".into(),
            90_002,
            Kind::Array(mood.clone()),
            "public".into(),
        );
        let posint = Type::new(
            "posint".into(),
            90_003,
            Kind::Domain(Type::INT4),
            "public".into(),
        );
        let mut s = String::new();
        typed_to_text(&mood, b"happy", &mut s).unwrap();
        assert_eq!(s, "happy");
        s.clear();
        let a = arr(90_001, &[(2, 1)], &[Some(b"happy"), Some(b"so sad")]);
        typed_to_text(&moods, &a, &mut s).unwrap();
        assert_eq!(s, r#"{happy,"so sad"}"#);
        s.clear();
        typed_to_text(&posint, &7i32.to_be_bytes(), &mut s).unwrap();
        assert_eq!(s, "7");
        assert!(type_supported(&moods) && type_supported(&posint) && type_supported(&Type::INT4));
        assert!(!type_supported(&Type::MONEY));
        assert!(binary_to_text(90_001, b"happy", &mut s).is_err());
    }
}
