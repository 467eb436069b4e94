//! Typed attribute values of the graph format, checked as they are read so serde_yaml
//! can point at the offending line and column.
use crate::ir::Hw;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// A whole number of at least `MIN`.
#[derive(Clone, Copy, Debug)]
pub struct Count<const MIN: u64>(pub usize);

/// An int or an `[h, w]` pair, each at least `MIN`.
#[derive(Clone, Copy, Debug)]
pub struct HwAttr<const MIN: u64>(pub Hw);

fn check<E: de::Error, const MIN: u64>(v: i64) -> Result<usize, E> {
    if v < MIN as i64 {
        let what = if MIN == 0 {
            "a whole number >= 0"
        } else {
            "a positive whole number"
        };
        return Err(E::custom(format!("expected {what}, got {v}")));
    }
    // Capped so the size arithmetic (n + 2p, products of dims) cannot overflow.
    if v as u64 > crate::ir::shape::MAX_ELEMENTS {
        return Err(E::custom(format!("{v} is too large (the limit is 2^31)")));
    }
    usize::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))
}

struct CountVisitor<const MIN: u64>;

impl<'de, const MIN: u64> Visitor<'de> for CountVisitor<MIN> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a whole number")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
        check::<E, MIN>(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
        check::<E, MIN>(
            i64::try_from(v)
                .map_err(|_| E::custom(format!("{v} is too large (the limit is 2^31)")))?,
        )
    }
}

impl<'de, const MIN: u64> Deserialize<'de> for Count<MIN> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CountVisitor::<MIN>).map(Count)
    }
}

impl<'de, const MIN: u64> Deserialize<'de> for HwAttr<MIN> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const MIN: u64>;
        impl<'de, const MIN: u64> Visitor<'de> for V<MIN> {
            type Value = Hw;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a whole number or a pair [h, w]")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Hw, E> {
                check::<E, MIN>(v).map(Hw::square)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Hw, E> {
                CountVisitor::<MIN>.visit_u64(v).map(Hw::square)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Hw, A::Error> {
                let h: Count<MIN> = seq.next_element()?.ok_or_else(|| {
                    de::Error::custom("expected a pair [h, w], got an empty list")
                })?;
                let w: Count<MIN> = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("expected a pair [h, w], got one value"))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom(
                        "expected a pair [h, w], got more than two values",
                    ));
                }
                Ok(Hw { h: h.0, w: w.0 })
            }
        }
        d.deserialize_any(V::<MIN>).map(HwAttr)
    }
}

pub type Positive = Count<1>;
pub type Size = HwAttr<1>;
pub type Padding = HwAttr<0>;

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "conv attributes {filters, size, stride, pad, dilation, groups, bias}"
)]
pub struct ConvAttrs {
    pub filters: Positive,
    pub size: Size,
    pub stride: Option<Size>,
    pub pad: Option<Padding>,
    pub dilation: Option<Size>,
    pub groups: Option<Positive>,
    pub bias: Option<bool>,
}

/// `pad` pads every side; `pad_end` (default `pad`) overrides the bottom/right pad.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "pool attributes {size, stride, pad, pad_end, count_include_pad}"
)]
pub struct PoolAttrs {
    pub size: Size,
    pub stride: Option<Size>,
    pub pad: Option<Padding>,
    pub pad_end: Option<Padding>,
    pub count_include_pad: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "clip attributes {min, max}")]
pub struct ClipAttrs {
    pub min: Option<f32>,
    pub max: Option<f32>,
}

/// PyTorch's `LocalResponseNorm(size, alpha=1e-4, beta=0.75, k=1.0)`; `k` is ONNX's `bias`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "lrn attributes {size, alpha, beta, bias}"
)]
pub struct LrnAttrs {
    pub size: Positive,
    pub alpha: Option<f32>,
    pub beta: Option<f32>,
    pub bias: Option<f32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "channel_shuffle attributes {groups}")]
pub struct ShuffleAttrs {
    pub groups: Positive,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "fc attributes {units, bias}")]
pub struct FcAttrs {
    pub units: Positive,
    pub bias: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "batchnorm attributes {eps}")]
pub struct BatchNormAttrs {
    pub eps: Option<f32>,
}

/// Dropout's rate is accepted (it documents training) and ignored at inference.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "dropout attributes {p}")]
pub struct DropoutAttrs {
    pub p: Option<f32>,
}

/// Explicit padding: rows/columns on each side (default 0) and the fill value
/// (default 0; `-.inf` before a max pool).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PadAttrs {
    pub top: Option<Count<0>>,
    pub left: Option<Count<0>>,
    pub bottom: Option<Count<0>>,
    pub right: Option<Count<0>>,
    pub value: Option<f32>,
}

/// Ops that take no attributes: `relu: {}` or `relu:`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "no attributes: an empty map `{}` or nothing"
)]
pub struct NoAttrs {}
