//! PostgreSQL binary result values → PostgreSQL text output.
//!
//! tokio-postgres receives every column in binary format; Neon's driver expects what
//! PostgreSQL prints (`DateStyle=ISO`, `IntervalStyle=postgres`, `TimeZone=UTC`,
//! `bytea_output=hex`) and parses it by type OID. [`binary_to_text`] renders one value.

use std::fmt::Write as _;

use tokio_postgres::types::{FromSql, Type};

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

/// The raw binary bytes of a value, whatever its type.
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

/// Element type of the supported array types.
fn array_element(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => 16,
        1001 => 17,
        1002 => 18,
        1003 => 19,
        1016 => 20,
        1005 => 21,
        1007 => 23,
        1009 => 25,
        1028 => 26,
        199 => 114,
        1021 => 700,
        1022 => 701,
        1014 => 1042,
        1015 => 1043,
        1182 => 1082,
        1183 => 1083,
        1115 => 1114,
        1185 => 1184,
        1187 => 1186,
        1270 => 1266,
        1231 => 1700,
        2951 => 2950,
        3807 => 3802,
        _ => return None,
    })
}

/// Whether values of `oid` can be rendered.
pub fn supported(oid: u32) -> bool {
    scalar_supported(oid) || array_element(oid).is_some()
}

fn scalar_supported(oid: u32) -> bool {
    matches!(
        oid,
        16 | 17
            | 18
            | 19
            | 20
            | 21
            | 23
            | 25
            | 26
            | 114
            | 142
            | 700
            | 701
            | 705
            | 1042
            | 1043
            | 1082
            | 1083
            | 1114
            | 1184
            | 1186
            | 1266
            | 1700
            | 2278
            | 2950
            | 3802
    )
}

/// Renders one non-NULL binary value of type `oid`, appending to `out`.
pub fn binary_to_text(oid: u32, raw: &[u8], out: &mut String) -> Result<(), TextError> {
    if let Some(elem) = array_element(oid) {
        return array(oid, elem, raw, out);
    }
    let bad = || TextError::Malformed { oid };
    match oid {
        16 => out.push(if *raw.first().ok_or_else(bad)? != 0 {
            't'
        } else {
            'f'
        }),
        17 => {
            out.push_str("\\x");
            for b in raw {
                let _ = write!(out, "{b:02x}");
            }
        }
        18 | 19 | 25 | 114 | 142 | 705 | 1042 | 1043 => {
            out.push_str(std::str::from_utf8(raw).map_err(|_| bad())?)
        }
        // `void` (e.g. `select pg_sleep(1)`) prints as an empty string.
        2278 => {}
        3802 => match raw.split_first() {
            Some((1, rest)) => out.push_str(std::str::from_utf8(rest).map_err(|_| bad())?),
            _ => return Err(bad()),
        },
        20 => push_int(out, i64::from_be_bytes(fixed(raw).ok_or_else(bad)?)),
        21 => push_int(out, i16::from_be_bytes(fixed(raw).ok_or_else(bad)?) as i64),
        23 => push_int(out, i32::from_be_bytes(fixed(raw).ok_or_else(bad)?) as i64),
        26 => push_int(out, u32::from_be_bytes(fixed(raw).ok_or_else(bad)?) as i64),
        700 => float(
            out,
            f32::from_be_bytes(fixed(raw).ok_or_else(bad)?) as f64,
            true,
        ),
        701 => float(out, f64::from_be_bytes(fixed(raw).ok_or_else(bad)?), false),
        1700 => numeric(raw, out).ok_or_else(bad)?,
        2950 => {
            let b: [u8; 16] = fixed(raw).ok_or_else(bad)?;
            for (i, byte) in b.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    out.push('-');
                }
                let _ = write!(out, "{byte:02x}");
            }
        }
        1082 => date(i32::from_be_bytes(fixed(raw).ok_or_else(bad)?), out),
        1083 => time_of_day(i64::from_be_bytes(fixed(raw).ok_or_else(bad)?), out),
        1266 => {
            let b: [u8; 12] = fixed(raw).ok_or_else(bad)?;
            time_of_day(i64::from_be_bytes(b[..8].try_into().unwrap()), out);
            // PostgreSQL stores the zone as seconds *west* of UTC.
            offset(-i32::from_be_bytes(b[8..].try_into().unwrap()), out);
        }
        1114 => timestamp(i64::from_be_bytes(fixed(raw).ok_or_else(bad)?), false, out),
        1184 => timestamp(i64::from_be_bytes(fixed(raw).ok_or_else(bad)?), true, out),
        1186 => {
            let b: [u8; 16] = fixed(raw).ok_or_else(bad)?;
            interval(
                i64::from_be_bytes(b[..8].try_into().unwrap()),
                i32::from_be_bytes(b[8..12].try_into().unwrap()),
                i32::from_be_bytes(b[12..].try_into().unwrap()),
                out,
            );
        }
        _ => return Err(TextError::Unsupported(oid)),
    }
    Ok(())
}

fn fixed<const N: usize>(raw: &[u8]) -> Option<[u8; N]> {
    raw.try_into().ok()
}

fn push_int(out: &mut String, n: i64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Shortest round-trip output, PostgreSQL's spelling of the special values.
fn float(out: &mut String, v: f64, single: bool) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" });
    } else if single {
        let _ = write!(out, "{}", pg_float(format!("{:e}", v as f32)));
    } else {
        let _ = write!(out, "{}", pg_float(format!("{v:e}")));
    }
}

/// Rust's `1.5e3` → PostgreSQL's `1500` / `1.5e+20` (scientific below 1e-4 or at 1e15+,
/// like `%g` with shortest digits).
fn pg_float(sci: String) -> String {
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mantissa) = mantissa
        .strip_prefix('-')
        .map_or((false, mantissa), |m| (true, m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if neg { "-" } else { "" };
    if !(-4..15).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{frac}e{esign}{:02}", exp.abs());
    }
    let point = exp + 1;
    if point <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-point) as usize))
    } else if point as usize >= digits.len() {
        format!(
            "{sign}{digits}{}",
            "0".repeat(point as usize - digits.len())
        )
    } else {
        let (a, b) = digits.split_at(point as usize);
        format!("{sign}{a}.{b}")
    }
}

/// Binary numeric: ndigits, weight, sign, dscale, then base-10000 digits.
fn numeric(raw: &[u8], out: &mut String) -> Option<()> {
    let word = |i: usize| {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let ndigits = word(0)? as usize;
    let weight = word(1)? as i16 as i32;
    let sign = word(2)?;
    let dscale = word(3)? as usize;
    match sign {
        0xC000 => {
            out.push_str("NaN");
            return Some(());
        }
        0xD000 => {
            out.push_str("Infinity");
            return Some(());
        }
        0xF000 => {
            out.push_str("-Infinity");
            return Some(());
        }
        0x4000 => out.push('-'),
        0x0000 => {}
        _ => return None,
    }
    let digits: Vec<u16> = (0..ndigits).map(|i| word(4 + i)).collect::<Option<_>>()?;
    let digit = |i: i32| {
        if i >= 0 && (i as usize) < digits.len() {
            digits[i as usize]
        } else {
            0
        }
    };
    // Integer part: groups 0..=weight.
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            let d = digit(i);
            if i == 0 {
                let _ = write!(out, "{d}");
            } else {
                let _ = write!(out, "{d:04}");
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut frac = String::with_capacity(dscale + 4);
        let mut i = weight + 1;
        while frac.len() < dscale {
            let _ = write!(frac, "{:04}", digit(i));
            i += 1;
        }
        frac.truncate(dscale);
        out.push_str(&frac);
    }
    Some(())
}

/// Days since 2000-01-01 → (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's days_from_civil inverse, shifted to the 2000-01-01 epoch.
    let z = days + 10957 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn push_date(days: i64, out: &mut String) -> bool {
    let (y, m, d) = civil(days);
    let bc = y <= 0;
    let year = if bc { 1 - y } else { y };
    let _ = write!(out, "{year:04}-{m:02}-{d:02}");
    bc
}

fn date(days: i32, out: &mut String) {
    match days {
        i32::MAX => out.push_str("infinity"),
        i32::MIN => out.push_str("-infinity"),
        d => {
            if push_date(d as i64, out) {
                out.push_str(" BC");
            }
        }
    }
}

/// `HH:MM:SS[.ffffff]` with trailing zeros of the fraction removed.
fn clock(micros: i64, out: &mut String) {
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    if frac != 0 {
        let f = format!("{frac:06}");
        out.push('.');
        out.push_str(f.trim_end_matches('0'));
    }
}

fn time_of_day(micros: i64, out: &mut String) {
    clock(micros, out);
}

fn offset(east_secs: i32, out: &mut String) {
    let sign = if east_secs < 0 { '-' } else { '+' };
    let s = east_secs.abs();
    let _ = write!(out, "{sign}{:02}", s / 3600);
    if s % 3600 != 0 {
        let _ = write!(out, ":{:02}", (s / 60) % 60);
        if s % 60 != 0 {
            let _ = write!(out, ":{:02}", s % 60);
        }
    }
}

fn timestamp(micros: i64, utc: bool, out: &mut String) {
    match micros {
        i64::MAX => return out.push_str("infinity"),
        i64::MIN => return out.push_str("-infinity"),
        _ => {}
    }
    let days = micros.div_euclid(86_400_000_000);
    let rest = micros.rem_euclid(86_400_000_000);
    let bc = push_date(days, out);
    out.push(' ');
    clock(rest, out);
    if utc {
        out.push_str("+00");
    }
    if bc {
        out.push_str(" BC");
    }
}

/// IntervalStyle `postgres`: `1 year 2 mons 3 days 04:05:06.5`, `-1 days +00:00:01`,
/// `00:00:00`. A field after a negative one gets an explicit `+` when positive.
fn interval(micros: i64, days: i32, months: i32, out: &mut String) {
    let mut is_before = false;
    let mut is_zero = true;
    for (value, unit) in [
        ((months / 12) as i64, "year"),
        ((months % 12) as i64, "mon"),
        (days as i64, "day"),
    ] {
        if value == 0 {
            continue;
        }
        if !is_zero {
            out.push(' ');
        }
        let plus = if is_before && value > 0 { "+" } else { "" };
        let plural = if value != 1 { "s" } else { "" };
        let _ = write!(out, "{plus}{value} {unit}{plural}");
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
        clock(micros.unsigned_abs() as i64, out);
    }
}

/// Binary array → `{...}` text, with dimensions and quoting as PostgreSQL prints them.
fn array(oid: u32, elem: u32, raw: &[u8], out: &mut String) -> Result<(), TextError> {
    let bad = || TextError::Malformed { oid };
    let int = |at: usize| {
        raw.get(at..at + 4)
            .map(|b| i32::from_be_bytes(b.try_into().unwrap()))
            .ok_or_else(bad)
    };
    let ndim = int(0)? as usize;
    let elem_oid = int(8)? as u32;
    if elem_oid != elem || ndim > 6 {
        return Err(bad());
    }
    if ndim == 0 {
        out.push_str("{}");
        return Ok(());
    }
    let mut dims = Vec::with_capacity(ndim);
    for d in 0..ndim {
        dims.push((int(12 + d * 8)? as usize, int(16 + d * 8)?));
    }
    if dims.iter().any(|&(_, lower)| lower != 1) {
        for &(len, lower) in &dims {
            let _ = write!(out, "[{}:{}]", lower, lower as i64 + len as i64 - 1);
        }
        out.push('=');
    }
    let mut pos = 12 + ndim * 8;
    let total: usize = dims.iter().map(|&(len, _)| len).product();
    let mut elems = Vec::with_capacity(total);
    for _ in 0..total {
        let len = int(pos)?;
        pos += 4;
        if len < 0 {
            elems.push(None);
        } else {
            let v = raw.get(pos..pos + len as usize).ok_or_else(bad)?;
            pos += len as usize;
            let mut s = String::new();
            binary_to_text(elem, v, &mut s)?;
            elems.push(Some(s));
        }
    }
    let mut idx = 0;
    nest(&dims, &elems, &mut idx, out, elem == 603);
    Ok(())
}

fn nest(
    dims: &[(usize, i32)],
    elems: &[Option<String>],
    idx: &mut usize,
    out: &mut String,
    semicolon: bool,
) {
    out.push('{');
    let (len, _) = dims[0];
    for i in 0..len {
        if i > 0 {
            out.push(if semicolon { ';' } else { ',' });
        }
        if dims.len() > 1 {
            nest(&dims[1..], elems, idx, out, semicolon);
        } else {
            match &elems[*idx] {
                None => out.push_str("NULL"),
                Some(s) => quote_element(s, out),
            }
            *idx += 1;
        }
    }
    out.push('}');
}

fn quote_element(s: &str, out: &mut String) {
    let needs = s.is_empty()
        || s.eq_ignore_ascii_case("NULL")
        || s.chars()
            .any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_ascii_whitespace());
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

    #[test]
    fn scalars() {
        assert_eq!(text(16, &[1]), "t");
        assert_eq!(text(23, &(-42i32).to_be_bytes()), "-42");
        assert_eq!(text(20, &i64::MIN.to_be_bytes()), "-9223372036854775808");
        assert_eq!(text(17, &[0, 0xab]), "\\x00ab");
        assert_eq!(text(3802, b"\x01{\"a\": 1}"), "{\"a\": 1}");
        assert_eq!(
            text(2950, &[0x12; 16]),
            "12121212-1212-1212-1212-121212121212"
        );
    }

    #[test]
    fn floats_like_postgres() {
        assert_eq!(text(701, &1.5f64.to_be_bytes()), "1.5");
        assert_eq!(text(701, &100.0f64.to_be_bytes()), "100");
        assert_eq!(text(701, &0.1f64.to_be_bytes()), "0.1");
        assert_eq!(text(701, &1e20f64.to_be_bytes()), "1e+20");
        assert_eq!(text(701, &1.5e-5f64.to_be_bytes()), "1.5e-05");
        assert_eq!(text(701, &f64::NAN.to_be_bytes()), "NaN");
        assert_eq!(text(701, &f64::NEG_INFINITY.to_be_bytes()), "-Infinity");
        assert_eq!(text(700, &0.1f32.to_be_bytes()), "0.1");
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
        assert_eq!(
            text(1700, &numeric_bytes(5, 0, 0, &[1])),
            "100000000000000000000"
        );
        assert_eq!(text(1700, &numeric_bytes(0, 0xC000, 0, &[])), "NaN");
    }

    #[test]
    fn dates_times_intervals() {
        assert_eq!(text(1082, &0i32.to_be_bytes()), "2000-01-01");
        assert_eq!(text(1082, &(-730_120i32).to_be_bytes()), "0001-12-31 BC");
        let micros = (366 * 86_400 + 3600 + 62) * 1_000_000i64 + 123_000;
        assert_eq!(
            text(1184, &micros.to_be_bytes()),
            "2001-01-01 01:01:02.123+00"
        );
        assert_eq!(text(1114, &0i64.to_be_bytes()), "2000-01-01 00:00:00");
        assert_eq!(text(1114, &i64::MAX.to_be_bytes()), "infinity");
        let iv = |us: i64, d: i32, m: i32| {
            let mut b = us.to_be_bytes().to_vec();
            b.extend_from_slice(&d.to_be_bytes());
            b.extend_from_slice(&m.to_be_bytes());
            text(1186, &b)
        };
        assert_eq!(iv(0, 0, 0), "00:00:00");
        assert_eq!(iv(14_706_500_000, 3, 14), "1 year 2 mons 3 days 04:05:06.5");
        assert_eq!(iv(-1_000_000, 0, 0), "-00:00:01");
        assert_eq!(iv(0, 1, 1), "1 mon 1 day");
        assert_eq!(iv(1_000_000, -1, 0), "-1 days +00:00:01");
    }

    #[test]
    fn arrays() {
        let arr = |dims: &[(i32, i32)], elems: &[Option<&[u8]>], elem: u32| {
            let mut b = Vec::new();
            b.extend_from_slice(&(dims.len() as i32).to_be_bytes());
            b.extend_from_slice(&i32::from(elems.iter().any(|e| e.is_none())).to_be_bytes());
            b.extend_from_slice(&elem.to_be_bytes());
            for (len, lower) in dims {
                b.extend_from_slice(&len.to_be_bytes());
                b.extend_from_slice(&lower.to_be_bytes());
            }
            for e in elems {
                match e {
                    None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        b.extend_from_slice(v);
                    }
                }
            }
            b
        };
        let one = 1i32.to_be_bytes();
        let two = 2i32.to_be_bytes();
        assert_eq!(
            text(1007, &arr(&[(3, 1)], &[Some(&one), Some(&two), None], 23)),
            "{1,2,NULL}"
        );
        assert_eq!(
            text(1007, &arr(&[(2, 1), (1, 1)], &[Some(&one), Some(&two)], 23)),
            "{{1},{2}}"
        );
        assert_eq!(text(1007, &arr(&[(1, 0)], &[Some(&one)], 23)), "[0:0]={1}");
        assert_eq!(text(1007, &arr(&[], &[], 23)), "{}");
        let texts: [&[u8]; 4] = [b"a b", b"", b"NULL", b"q\"\\"];
        let elems: Vec<Option<&[u8]>> = texts.iter().map(|t| Some(*t)).collect();
        assert_eq!(
            text(1009, &arr(&[(4, 1)], &elems, 25)),
            r#"{"a b","","NULL","q\"\\"}"#
        );
    }
}
