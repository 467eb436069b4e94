//! `.npy` arrays (NumPy's format) of f32 or f64, as tensors.
//!
//! The header is parsed here, not by a general Python-literal parser: it is untrusted,
//! so its length is bounded ([`MAX_HEADER`]), only the three keys NumPy writes are
//! read, and anything else (a structured dtype, nesting) is refused without recursion.
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use npyz::WriterBuilder;
use std::path::Path;

/// NumPy itself refuses headers over 10,000 bytes by default (`max_header_size`).
pub const MAX_HEADER: usize = 10_000;

const MAGIC: &[u8] = b"\x93NUMPY";

/// What the header declares.
#[derive(Debug, PartialEq)]
struct Header {
    descr: String,
    fortran: bool,
    shape: Vec<usize>,
}

/// Reads an f32 or f64 array (f64 converted to f32).
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes).map_err(|m| Error::Input(format!("{}: {m}", path.display())))
}

/// Decodes the bytes of a `.npy` file; the error says what is wrong with it.
pub fn parse(bytes: &[u8]) -> std::result::Result<Tensor, String> {
    let (header, data) = split_header(bytes)?;
    let h = parse_header(header)?;
    let size = match h.descr.as_str() {
        "<f4" => 4,
        "<f8" => 8,
        other => {
            return Err(format!(
            "the array's dtype is {other}; cnnc reads little-endian float32 (<f4) or float64 (<f8)"
        ))
        }
    };
    if h.fortran && h.shape.len() > 1 {
        return Err(
            "Fortran-ordered arrays are not supported; save it with np.ascontiguousarray".into(),
        );
    }
    let n = crate::tensor::element_count(&h.shape).map_err(|e| e.to_string())?;
    if n.checked_mul(size) != Some(data.len()) {
        return Err(format!(
            "the header declares shape ({}) of {}, {} bytes of data, but the file holds {}",
            h.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            h.descr,
            n as u128 * size as u128,
            data.len()
        ));
    }
    let mut values = crate::memory::try_vec(n, 0f32, "the array").map_err(|e| e.to_string())?;
    if size == 4 {
        for (v, b) in values.iter_mut().zip(data.chunks_exact(4)) {
            *v = f32::from_le_bytes(b.try_into().expect("4 bytes"));
        }
    } else {
        for (v, b) in values.iter_mut().zip(data.chunks_exact(8)) {
            *v = f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32;
        }
    }
    Tensor::new(h.shape, values).map_err(|e| e.to_string())
}

/// The header text and the data after it, checking the magic, version and length.
fn split_header(bytes: &[u8]) -> std::result::Result<(&str, &[u8]), String> {
    if !bytes.starts_with(MAGIC) || bytes.len() < 10 {
        return Err("not a .npy array (it does not start with \\x93NUMPY)".into());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => {
            return Err(format!(
                "unknown .npy format version {v}; cnnc reads 1, 2 and 3"
            ))
        }
    };
    if len > MAX_HEADER {
        return Err(format!(
            "the header declares {len} bytes, more than the {MAX_HEADER} a .npy header may have"
        ));
    }
    let header = bytes
        .get(start..start + len)
        .ok_or_else(|| format!("the header declares {len} bytes, but the file ends first"))?;
    let text = std::str::from_utf8(header)
        .ok()
        .filter(|t| t.bytes().all(|b| b == b'\n' || (0x20..0x7f).contains(&b)))
        .ok_or("the header is not printable ASCII text (a damaged file?)")?;
    Ok((text, &bytes[start + len..]))
}

/// One token of the header's Python dict literal.
#[derive(Debug, PartialEq)]
enum Token<'a> {
    Str(&'a str),
    Word(&'a str),
    Punct(char),
}

fn tokens(text: &str) -> std::result::Result<Vec<Token<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = text.trim_end();
    while let Some(c) = rest.chars().next() {
        match c {
            ' ' | '\n' => rest = &rest[1..],
            '\'' | '"' => {
                let end = rest[1..]
                    .find(c)
                    .ok_or("the header has an unterminated string")?;
                out.push(Token::Str(&rest[1..1 + end]));
                rest = &rest[end + 2..];
            }
            '{' | '}' | '(' | ')' | ':' | ',' => {
                out.push(Token::Punct(c));
                rest = &rest[1..];
            }
            c if c.is_ascii_alphanumeric() => {
                let end = rest
                    .find(|c: char| !c.is_ascii_alphanumeric())
                    .unwrap_or(rest.len());
                out.push(Token::Word(&rest[..end]));
                rest = &rest[end..];
            }
            other => {
                return Err(format!(
                    "unexpected `{other}` in the header; cnnc reads plain float32/float64 arrays (no structured dtypes)"
                ))
            }
        }
    }
    Ok(out)
}

/// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header(text: &str) -> std::result::Result<Header, String> {
    let toks = tokens(text)?;
    let bad = || {
        format!(
            "the header `{}` is not a NumPy array header",
            text.trim_end()
        )
    };
    let body = match toks.as_slice() {
        [Token::Punct('{'), body @ .., Token::Punct('}')] => body,
        _ => return Err(bad()),
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    let mut i = 0;
    while i < body.len() {
        let key = match (&body[i], body.get(i + 1)) {
            (Token::Str(k), Some(Token::Punct(':'))) => *k,
            _ => return Err(bad()),
        };
        i += 2;
        match (key, body.get(i)) {
            ("descr", Some(Token::Str(d))) => descr = Some(d.to_string()),
            ("fortran_order", Some(Token::Word(w @ ("True" | "False")))) => {
                fortran = Some(*w == "True")
            }
            ("shape", Some(Token::Punct('('))) => {
                let mut dims = Vec::new();
                i += 1;
                loop {
                    match body.get(i) {
                        Some(Token::Punct(')')) => break,
                        Some(Token::Word(w)) => dims.push(w.parse::<usize>().map_err(|_| {
                            format!("the header's shape holds `{w}`, not a dimension")
                        })?),
                        Some(Token::Punct(',')) => {}
                        _ => return Err(bad()),
                    }
                    i += 1;
                }
                shape = Some(dims);
            }
            ("descr", _) => {
                return Err(
                    "the array has a structured dtype; cnnc reads plain float32/float64 arrays"
                        .into(),
                )
            }
            _ => return Err(bad()),
        }
        i += 1;
        match body.get(i) {
            Some(Token::Punct(',')) => i += 1,
            None => {}
            _ => return Err(bad()),
        }
    }
    match (descr, fortran, shape) {
        (Some(descr), Some(fortran), Some(shape)) => Ok(Header {
            descr,
            fortran,
            shape,
        }),
        _ => Err(format!(
            "the header `{}` lacks descr, fortran_order or shape",
            text.trim_end()
        )),
    }
}

/// Writes a tensor as a little-endian f32 array (atomically: see [`super::output`]).
pub fn write(path: &Path, t: &Tensor) -> Result<()> {
    super::output::write_file(path, &to_bytes(t)?, &[])
}

/// A tensor as the bytes of a little-endian f32 `.npy` file.
pub fn to_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let internal = |e: std::io::Error| Error::Internal(format!("writing a .npy array: {e}"));
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    let mut bytes = Vec::new();
    let mut w = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&shape)
        .writer(&mut bytes)
        .begin_nd()
        .map_err(internal)?;
    w.extend(t.data().iter().copied()).map_err(internal)?;
    w.finish().map_err(internal)?;
    Ok(bytes)
}
