//! Datasets: the user's inference inputs, parsed from CSV or tensor JSON into
//! [`protocol::Tensor`] samples (and optional integer labels) before
//! [`crate::store`] seals them.
//!
//! Pure: text in, values out; no files, no clock. Every size is bounded
//! before anything is allocated for it ([`MAX_TEXT_BYTES`], [`MAX_ROWS`],
//! [`MAX_COLUMNS`], [`MAX_RANK`], [`MAX_SAMPLE_ELEMENTS`]), so a hostile or
//! mistaken file costs a bounded amount of memory.
//!
//! Must never: put a value from the input into an error message or a
//! `Debug` string (errors name the row and column, or the element index,
//! instead: the values are the user's data); or panic on any input.

use std::fmt;

use protocol::{Tensor, TensorData, TensorError};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Largest CSV or JSON text accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 64 << 20;
/// Most CSV rows (samples) accepted.
pub const MAX_ROWS: usize = 1_000_000;
/// Most CSV columns accepted (label included).
pub const MAX_COLUMNS: usize = 1_000_000;
/// Most elements in one sample.
pub const MAX_SAMPLE_ELEMENTS: u64 = 64 << 20;
/// Most dimensions in one sample's shape (batch dimension included). ONNX
/// inputs rarely have more than six; the bound keeps a hostile shape small.
pub const MAX_RANK: usize = 32;

/// Samples to run inference on, each with a leading batch dimension of 1,
/// and optionally one integer label per sample (for measuring accuracy).
///
/// `Debug` prints only the counts, never the values.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    /// One inference input per sample; shape `[1, ...]`.
    pub samples: Vec<Tensor>,
    /// When present, exactly one label per sample.
    pub labels: Option<Vec<i64>>,
}

/// Where a CSV keeps its labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelColumn {
    /// Every column is a feature.
    None,
    /// The last column is an integer label; the others are features.
    Last,
}

/// Why a dataset was refused. Messages name the row and column (1-based)
/// or the sample, never the value found there.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DatasetError {
    /// The text is over [`MAX_TEXT_BYTES`].
    #[error("input is {size} bytes, over the {max}-byte limit: split it into several datasets")]
    TooLarge {
        /// Size of the text.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Nothing but whitespace.
    #[error("the CSV has no rows: write one sample per line, values separated by commas")]
    NoRows,
    /// More than [`MAX_ROWS`] lines.
    #[error("the CSV has more than {max} rows: split it into several datasets")]
    TooManyRows {
        /// The limit.
        max: usize,
    },
    /// A row with more than [`MAX_COLUMNS`] columns.
    #[error("row {row} has more than {max} columns: that is more than any sample can hold")]
    TooManyColumns {
        /// 1-based row.
        row: usize,
        /// The limit.
        max: usize,
    },
    /// An empty line between rows.
    #[error("row {row} is blank: remove blank lines (every line is one sample)")]
    BlankRow {
        /// 1-based row.
        row: usize,
    },
    /// A row whose column count differs from the first row's.
    #[error(
        "row {row} has {found} columns but row 1 has {expected}: every row must have the same number of columns"
    )]
    RaggedRow {
        /// 1-based row.
        row: usize,
        /// Columns in this row.
        found: usize,
        /// Columns in row 1.
        expected: usize,
    },
    /// A feature that does not parse as a number.
    #[error(
        "row {row}, column {column}: not a number; write plain decimals such as 0.25 (no header row, no quotes)"
    )]
    NotANumber {
        /// 1-based row.
        row: usize,
        /// 1-based column.
        column: usize,
    },
    /// A feature that is NaN, infinite, or too large for an f32.
    #[error(
        "row {row}, column {column}: the value is NaN, infinite or outside the f32 range; replace it with a finite number"
    )]
    NotFinite {
        /// 1-based row.
        row: usize,
        /// 1-based column.
        column: usize,
    },
    /// A label that is not an integer.
    #[error(
        "row {row}, column {column}: the label (last column) must be an integer such as 7 or 7.0"
    )]
    BadLabel {
        /// 1-based row.
        row: usize,
        /// 1-based column.
        column: usize,
    },
    /// Labels requested but a row has nothing besides the label.
    #[error(
        "row 1 has {columns} column: with the label in the last column, at least one feature column must come before it"
    )]
    NoFeatures {
        /// Columns in row 1.
        columns: usize,
    },
    /// The requested sample shape does not hold one row's features.
    #[error(
        "sample shape {shape:?} has {elements} elements but each row has {features} feature columns: they must be equal (for example [1, 8, 8] for 64 features)"
    )]
    ShapeMismatch {
        /// The sample shape asked for (without the batch dimension).
        shape: Vec<u64>,
        /// Its element count (saturated at `u64::MAX`).
        elements: u64,
        /// Feature columns per row.
        features: usize,
    },
    /// A shape with too many dimensions.
    #[error("a shape has {rank} dimensions; at most {max} are supported")]
    RankTooHigh {
        /// Dimensions, batch dimension included.
        rank: usize,
        /// The limit.
        max: usize,
    },
    /// Tensor JSON that does not have the expected form.
    #[error(
        "tensor JSON: {detail}; expected {{\"shape\": [1, ...], \"dtype\": \"f32\" | \"i64\" | \"u8\", \"data\": [...]}}"
    )]
    Json {
        /// What is wrong, and where (line and column of the JSON text).
        detail: String,
    },
    /// A sample whose shape and data disagree, or that is too big.
    #[error("sample {sample}: {problem}")]
    Tensor {
        /// 1-based sample.
        sample: usize,
        /// What is wrong.
        problem: TensorError,
    },
    /// A sample without a leading batch dimension of 1.
    #[error(
        "sample {sample} has shape {shape:?}: its first dimension must be the batch dimension 1 (e.g. [1, 64] rather than [64])"
    )]
    NoBatchDimension {
        /// 1-based sample.
        sample: usize,
        /// Its shape.
        shape: Vec<u64>,
    },
    /// Labels present but not one per sample.
    #[error("{labels} labels for {samples} samples: labels, when present, need one per sample")]
    LabelCount {
        /// Labels.
        labels: usize,
        /// Samples.
        samples: usize,
    },
    /// No samples at all.
    #[error("the dataset has no samples")]
    Empty,
}

impl Dataset {
    /// Check the invariants the parsers guarantee: at least one sample;
    /// every sample `[1, ...]`, at most [`MAX_RANK`] dimensions and
    /// [`MAX_SAMPLE_ELEMENTS`] elements, its data matching its shape;
    /// labels, if any, one per sample. Run it on datasets built by hand.
    pub fn validate(&self) -> Result<(), DatasetError> {
        if self.samples.is_empty() {
            return Err(DatasetError::Empty);
        }
        if let Some(labels) = &self.labels
            && labels.len() != self.samples.len()
        {
            return Err(DatasetError::LabelCount {
                labels: labels.len(),
                samples: self.samples.len(),
            });
        }
        for (i, s) in self.samples.iter().enumerate() {
            let sample = i + 1;
            if s.shape.len() > MAX_RANK {
                return Err(DatasetError::RankTooHigh {
                    rank: s.shape.len(),
                    max: MAX_RANK,
                });
            }
            if s.shape.first() != Some(&1) {
                return Err(DatasetError::NoBatchDimension {
                    sample,
                    shape: s.shape.clone(),
                });
            }
            s.validate(MAX_SAMPLE_ELEMENTS)
                .map_err(|problem| DatasetError::Tensor { sample, problem })?;
        }
        Ok(())
    }
}

impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.labels {
            Some(l) => write!(
                f,
                "Dataset(<{} samples, {} labels>)",
                self.samples.len(),
                l.len()
            ),
            None => write!(f, "Dataset(<{} samples, no labels>)", self.samples.len()),
        }
    }
}

/// Parse a CSV of one sample per line: no header, every row the same number
/// of columns, features as finite f32, and with [`LabelColumn::Last`] an
/// integer label in the last column ("7" or "7.0"). Each row becomes a
/// tensor of shape `[1, features]`, or `[1] ++ sample_shape` when given (its
/// element count must equal the number of feature columns).
///
/// Lines may end in `\n` or `\r\n`; spaces around values, a UTF-8 byte-order
/// mark and trailing blank lines are ignored. Quoted fields are not
/// supported (there is no text to quote).
pub fn parse_csv(
    text: &str,
    labels: LabelColumn,
    sample_shape: Option<&[u64]>,
) -> Result<Dataset, DatasetError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(DatasetError::TooLarge {
            size: text.len(),
            max: MAX_TEXT_BYTES,
        });
    }
    if let Some(shape) = sample_shape
        && shape.len() >= MAX_RANK
    {
        return Err(DatasetError::RankTooHigh {
            rank: shape.len().saturating_add(1),
            max: MAX_RANK,
        });
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let body = text.trim_end();
    if body.is_empty() {
        return Err(DatasetError::NoRows);
    }
    // Count rows first: it bounds the allocation below and refuses an
    // oversized file before any parsing work.
    let rows = body.bytes().filter(|&b| b == b'\n').count() + 1;
    if rows > MAX_ROWS {
        return Err(DatasetError::TooManyRows { max: MAX_ROWS });
    }

    let with_labels = labels == LabelColumn::Last;
    // Row 1 fixes the number of columns and the shape of every sample; it
    // is checked before anything is allocated for the rows.
    let first = body.split('\n').next().unwrap_or_default();
    let expected = row_columns(first, 1)?;
    let shape = sample_layout(expected, with_labels, sample_shape)?;
    let mut samples = Vec::with_capacity(rows);
    let mut label_values = with_labels.then(|| Vec::with_capacity(rows));

    for (i, line) in body.split('\n').enumerate() {
        let row = i + 1;
        let columns = row_columns(line, row)?;
        if columns != expected {
            return Err(DatasetError::RaggedRow {
                row,
                found: columns,
                expected,
            });
        }
        let features = if with_labels { columns - 1 } else { columns };
        let mut values = Vec::with_capacity(features);
        for (j, field) in line.split(',').enumerate() {
            let column = j + 1;
            // Trimming also drops the '\r' of a CRLF line end.
            let field = field.trim();
            if j < features {
                values.push(parse_feature(field, row, column)?);
            } else if let Some(l) = label_values.as_mut() {
                l.push(parse_label(field).ok_or(DatasetError::BadLabel { row, column })?);
            }
        }
        samples.push(Tensor {
            shape: shape.clone(),
            data: TensorData::F32(values),
        });
    }
    let dataset = Dataset {
        samples,
        labels: label_values,
    };
    dataset.validate()?;
    Ok(dataset)
}

/// Columns in `line` (1-based `row`), refusing blank and over-wide rows.
/// Counting separators costs no allocation, so a row is only parsed once
/// its width is known to be within bounds.
fn row_columns(line: &str, row: usize) -> Result<usize, DatasetError> {
    if line.trim().is_empty() {
        return Err(DatasetError::BlankRow { row });
    }
    let columns = line.bytes().filter(|&b| b == b',').count() + 1;
    if columns > MAX_COLUMNS {
        return Err(DatasetError::TooManyColumns {
            row,
            max: MAX_COLUMNS,
        });
    }
    Ok(columns)
}

/// The shape of every sample, from row 1's column count.
fn sample_layout(
    columns: usize,
    with_labels: bool,
    sample_shape: Option<&[u64]>,
) -> Result<Vec<u64>, DatasetError> {
    let features = if with_labels {
        if columns < 2 {
            return Err(DatasetError::NoFeatures { columns });
        }
        columns - 1
    } else {
        columns
    };
    match sample_shape {
        None => Ok(vec![1, features as u64]),
        Some(shape) => {
            let elements = shape.iter().fold(1u64, |acc, &d| acc.saturating_mul(d));
            if elements != features as u64 {
                return Err(DatasetError::ShapeMismatch {
                    shape: shape.to_vec(),
                    elements,
                    features,
                });
            }
            let mut full = Vec::with_capacity(shape.len() + 1);
            full.push(1);
            full.extend_from_slice(shape);
            Ok(full)
        }
    }
}

fn parse_feature(field: &str, row: usize, column: usize) -> Result<f32, DatasetError> {
    let v: f32 = field
        .parse()
        .map_err(|_| DatasetError::NotANumber { row, column })?;
    // `parse` accepts "NaN" and "inf", and rounds "1e39" to infinity.
    if !v.is_finite() {
        return Err(DatasetError::NotFinite { row, column });
    }
    Ok(v)
}

/// An integer label: "7", or "7.0" / "7e0" when integral and in range.
fn parse_label(field: &str) -> Option<i64> {
    match field.parse::<i64>() {
        Ok(v) => Some(v),
        Err(_) => field.parse::<f64>().ok().and_then(integral),
    }
}

/// Parse one sample from tensor JSON:
/// `{"shape": [1, 64], "dtype": "f32", "data": [...]}` with dtype `f32`,
/// `i64` or `u8`. Unknown fields are refused. The shape must start with the
/// batch dimension 1, have at most [`MAX_RANK`] dimensions and
/// [`MAX_SAMPLE_ELEMENTS`] elements, and match the length of `data`.
/// Integral values written with a fraction ("7.0") are accepted for `i64`
/// and `u8`. The result has no labels.
pub fn parse_tensor_json(text: &str) -> Result<Dataset, DatasetError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(DatasetError::TooLarge {
            size: text.len(),
            max: MAX_TEXT_BYTES,
        });
    }
    // Two passes, because JSON objects are unordered and "data" may come
    // before "dtype": the first reads shape and dtype and skips the data
    // without storing it; the second converts the data straight into the
    // dtype, into a buffer sized (and capped) by the validated shape.
    let header: JsonHeader = serde_json::from_str(text).map_err(json_error)?;
    let elements = element_count(&header.shape)?;
    let len = usize::try_from(elements).map_err(|_| DatasetError::Tensor {
        sample: 1,
        problem: TensorError::TooManyElements {
            elements,
            max: MAX_SAMPLE_ELEMENTS,
        },
    })?;
    let mut de = serde_json::Deserializer::from_str(text);
    let data = de::Deserializer::deserialize_map(
        &mut de,
        DataOnly {
            dtype: header.dtype,
            len,
        },
    )
    .map_err(json_error)?;
    de.end().map_err(json_error)?;
    let dataset = Dataset {
        samples: vec![Tensor {
            shape: header.shape,
            data,
        }],
        labels: None,
    };
    dataset.validate()?;
    Ok(dataset)
}

fn json_error(e: serde_json::Error) -> DatasetError {
    DatasetError::Json {
        detail: e.to_string(),
    }
}

/// Element count of a shape, refusing overflow and oversized samples before
/// anything is allocated for the data.
fn element_count(shape: &[u64]) -> Result<u64, DatasetError> {
    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| DatasetError::Tensor {
            sample: 1,
            problem: TensorError::ShapeOverflow {
                shape: shape.to_vec(),
            },
        })?;
    if elements > MAX_SAMPLE_ELEMENTS {
        return Err(DatasetError::Tensor {
            sample: 1,
            problem: TensorError::TooManyElements {
                elements,
                max: MAX_SAMPLE_ELEMENTS,
            },
        });
    }
    Ok(elements)
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Dtype {
    F32,
    I64,
    U8,
}

/// First pass: everything but the data, which is skipped unstored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonHeader {
    #[serde(deserialize_with = "bounded_shape")]
    shape: Vec<u64>,
    dtype: Dtype,
    #[serde(rename = "data")]
    _data: IgnoredAny,
}

/// A shape of at most [`MAX_RANK`] dimensions, refused as soon as it grows
/// past that rather than after a long list has been collected.
fn bounded_shape<'de, D: de::Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    struct ShapeVisitor;
    impl<'de> Visitor<'de> for ShapeVisitor {
        type Value = Vec<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {MAX_RANK} dimensions")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u64>, A::Error> {
            let mut shape = Vec::new();
            while let Some(d) = seq.next_element::<u64>()? {
                if shape.len() == MAX_RANK {
                    return Err(de::Error::custom(format_args!(
                        "shape has more than {MAX_RANK} dimensions"
                    )));
                }
                shape.push(d);
            }
            Ok(shape)
        }
    }
    d.deserialize_seq(ShapeVisitor)
}

/// Second pass: only "data", converted to `dtype`, at most `len` elements.
struct DataOnly {
    dtype: Dtype,
    len: usize,
}

impl<'de> Visitor<'de> for DataOnly {
    type Value = TensorData;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TensorData, A::Error> {
        let mut data = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "data" {
                data = Some(map.next_value_seed(DataSeed {
                    dtype: self.dtype,
                    len: self.len,
                })?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        data.ok_or_else(|| de::Error::missing_field("data"))
    }
}

struct DataSeed {
    dtype: Dtype,
    len: usize,
}

impl<'de> DeserializeSeed<'de> for DataSeed {
    type Value = TensorData;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<TensorData, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for DataSeed {
    type Value = TensorData;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list of {} numbers", self.len)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<TensorData, A::Error> {
        Ok(match self.dtype {
            Dtype::F32 => TensorData::F32(read_elements(seq, self.len)?),
            Dtype::I64 => TensorData::I64(read_elements(seq, self.len)?),
            Dtype::U8 => TensorData::U8(read_elements(seq, self.len)?),
        })
    }
}

/// Read at most `len` elements; fewer are reported by [`Dataset::validate`].
fn read_elements<'de, T: Element, A: SeqAccess<'de>>(
    mut seq: A,
    len: usize,
) -> Result<Vec<T>, A::Error> {
    let mut out = Vec::with_capacity(len);
    while let Some(v) = seq.next_element_seed(ElementSeed::<T> {
        index: out.len(),
        _type: std::marker::PhantomData,
    })? {
        if out.len() == len {
            return Err(de::Error::custom(format_args!(
                "data has more than the {len} elements the shape implies"
            )));
        }
        out.push(v);
    }
    Ok(out)
}

/// An element type of tensor JSON, with range-checked conversions from the
/// three kinds of JSON number.
trait Element: Sized {
    /// What a valid value is, for errors.
    const WHAT: &'static str;
    fn from_u64(v: u64) -> Option<Self>;
    fn from_i64(v: i64) -> Option<Self>;
    fn from_f64(v: f64) -> Option<Self>;
}

/// `v` as an i64 when integral and in range.
fn integral(v: f64) -> Option<i64> {
    // 2^63 is exact in f64; every integral f64 in [-2^63, 2^63) fits an i64.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (v.is_finite() && v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v)).then_some(v as i64)
}

impl Element for f32 {
    const WHAT: &'static str = "a finite number within the f32 range";
    fn from_u64(v: u64) -> Option<Self> {
        Some(v as f32)
    }
    fn from_i64(v: i64) -> Option<Self> {
        Some(v as f32)
    }
    fn from_f64(v: f64) -> Option<Self> {
        // Out-of-range values round to infinity, which is refused.
        let v = v as f32;
        v.is_finite().then_some(v)
    }
}

impl Element for i64 {
    const WHAT: &'static str = "an integer within the i64 range";
    fn from_u64(v: u64) -> Option<Self> {
        i64::try_from(v).ok()
    }
    fn from_i64(v: i64) -> Option<Self> {
        Some(v)
    }
    fn from_f64(v: f64) -> Option<Self> {
        integral(v)
    }
}

impl Element for u8 {
    const WHAT: &'static str = "an integer from 0 to 255";
    fn from_u64(v: u64) -> Option<Self> {
        u8::try_from(v).ok()
    }
    fn from_i64(v: i64) -> Option<Self> {
        u8::try_from(v).ok()
    }
    fn from_f64(v: f64) -> Option<Self> {
        integral(v).and_then(|v| u8::try_from(v).ok())
    }
}

struct ElementSeed<T> {
    index: usize,
    _type: std::marker::PhantomData<T>,
}

impl<T> ElementSeed<T> {
    fn out_of_range<E: de::Error>(&self) -> E
    where
        T: Element,
    {
        // The index, not the value: the value is the user's data.
        E::custom(format_args!("data[{}] is not {}", self.index, T::WHAT))
    }
}

impl<'de, T: Element> DeserializeSeed<'de> for ElementSeed<T> {
    type Value = T;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: Element> Visitor<'de> for ElementSeed<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data[{}] to be a number", self.index)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::from_u64(v).ok_or_else(|| self.out_of_range())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::from_i64(v).ok_or_else(|| self.out_of_range())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        T::from_f64(v).ok_or_else(|| self.out_of_range())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DIGITS: &str = include_str!("../../testdata/models/digits_test.csv");

    fn err(text: &str, labels: LabelColumn, shape: Option<&[u64]>) -> DatasetError {
        parse_csv(text, labels, shape).expect_err("should be refused")
    }

    #[test]
    fn digits_csv_parses_as_cnn_input() {
        let d = parse_csv(DIGITS, LabelColumn::Last, Some(&[1, 8, 8])).unwrap();
        assert_eq!(d.samples.len(), 360);
        let labels = d.labels.as_ref().unwrap();
        assert_eq!(labels.len(), 360);
        assert!(labels.iter().all(|l| (0..=9).contains(l)));
        assert_eq!(labels[..3], [2, 3, 4]);
        for s in &d.samples {
            assert_eq!(s.shape, [1, 1, 8, 8]);
            assert_eq!(s.validate(64), Ok(64));
        }
        let TensorData::F32(first) = &d.samples[0].data else {
            panic!("f32 expected")
        };
        assert_eq!(first[..3], [0.0, 0.25, 1.0]);

        // Without a sample shape: [1, 64]; without labels: 65 features.
        let flat = parse_csv(DIGITS, LabelColumn::Last, None).unwrap();
        assert_eq!(flat.samples[0].shape, [1, 64]);
        let unlabelled = parse_csv(DIGITS, LabelColumn::None, None).unwrap();
        assert_eq!(unlabelled.samples[0].shape, [1, 65]);
        assert_eq!(unlabelled.labels, None);
    }

    #[test]
    fn formatting_tolerated() {
        let d = parse_csv(
            "\u{feff} 1, 2.5 ,3e0,7.0\r\n-0.5,.5,5.,-3\r\n\r\n\n",
            LabelColumn::Last,
            None,
        )
        .unwrap();
        assert_eq!(d.labels, Some(vec![7, -3]));
        assert_eq!(d.samples[1].data, TensorData::F32(vec![-0.5, 0.5, 5.0]));
        assert_eq!(d.samples[0].shape, [1, 3]);
    }

    #[test]
    fn errors_name_row_and_column_not_value() {
        let e = err("1,2\n3,4\n5,secret-value\n", LabelColumn::None, None);
        assert_eq!(e, DatasetError::NotANumber { row: 3, column: 2 });
        let msg = e.to_string();
        assert!(msg.contains("row 3, column 2"), "{msg}");
        assert!(!msg.contains("secret"), "{msg}");

        for bad in ["NaN", "inf", "-infinity", "1e39"] {
            assert_eq!(
                err(&format!("1,{bad}\n"), LabelColumn::None, None),
                DatasetError::NotFinite { row: 1, column: 2 },
                "{bad}"
            );
        }
        for bad in ["7.5", "x", "", "1e30", "nan"] {
            assert_eq!(
                err(&format!("1,2\n1,{bad}\n"), LabelColumn::Last, None),
                DatasetError::BadLabel { row: 2, column: 2 },
                "{bad:?}"
            );
        }
        assert_eq!(
            err("1,2,3\n1,2\n", LabelColumn::None, None),
            DatasetError::RaggedRow {
                row: 2,
                found: 2,
                expected: 3
            }
        );
        assert_eq!(
            err("1,2\n\n1,2\n", LabelColumn::None, None),
            DatasetError::BlankRow { row: 2 }
        );
        assert_eq!(
            err("1,2,\n", LabelColumn::None, None),
            DatasetError::NotANumber { row: 1, column: 3 }
        );
        assert_eq!(err(" \n\n", LabelColumn::None, None), DatasetError::NoRows);
        assert_eq!(err("", LabelColumn::None, None), DatasetError::NoRows);
        assert_eq!(
            err("3\n", LabelColumn::Last, None),
            DatasetError::NoFeatures { columns: 1 }
        );
        assert_eq!(
            err("\"1\",2\n", LabelColumn::None, None),
            DatasetError::NotANumber { row: 1, column: 1 }
        );
    }

    #[test]
    fn sample_shape_must_hold_the_features() {
        let e = err(DIGITS, LabelColumn::None, Some(&[1, 8, 8]));
        assert_eq!(
            e,
            DatasetError::ShapeMismatch {
                shape: vec![1, 8, 8],
                elements: 64,
                features: 65
            }
        );
        let msg = e.to_string();
        assert!(msg.contains("[1, 8, 8]") && msg.contains("64") && msg.contains("65"));
        // A shape whose product overflows is a mismatch, not a wrap-around.
        assert!(matches!(
            err("1\n", LabelColumn::None, Some(&[1 << 32, 1 << 32, 1])),
            DatasetError::ShapeMismatch {
                elements: u64::MAX,
                ..
            }
        ));
        let d = parse_csv("1,2,3,4,5,6\n", LabelColumn::None, Some(&[2, 3])).unwrap();
        assert_eq!(d.samples[0].shape, [1, 2, 3]);
        assert!(matches!(
            err("1\n", LabelColumn::None, Some(&[1; MAX_RANK])),
            DatasetError::RankTooHigh { .. }
        ));
    }

    #[test]
    fn bounds() {
        let big = " ".repeat(MAX_TEXT_BYTES + 1);
        assert!(matches!(
            err(&big, LabelColumn::None, None),
            DatasetError::TooLarge { .. }
        ));
        assert!(matches!(
            parse_tensor_json(&big),
            Err(DatasetError::TooLarge { .. })
        ));
        drop(big);
        let rows = "1\n".repeat(MAX_ROWS + 1);
        assert_eq!(
            err(&rows, LabelColumn::None, None),
            DatasetError::TooManyRows { max: MAX_ROWS }
        );
        let mut wide = "0,".repeat(MAX_COLUMNS);
        wide.push('0');
        assert_eq!(
            err(&wide, LabelColumn::None, None),
            DatasetError::TooManyColumns {
                row: 1,
                max: MAX_COLUMNS
            }
        );
        // Exactly at the column limit is fine.
        wide.truncate(wide.len() - 2);
        assert_eq!(
            parse_csv(&wide, LabelColumn::None, None).unwrap().samples[0].shape,
            [1, MAX_COLUMNS as u64]
        );
    }

    #[test]
    fn tensor_json() {
        let d = parse_tensor_json(r#"{"shape": [1, 3], "dtype": "f32", "data": [0.5, 1, -2]}"#)
            .unwrap();
        assert_eq!(d.labels, None);
        assert_eq!(d.samples[0].shape, [1, 3]);
        assert_eq!(d.samples[0].data, TensorData::F32(vec![0.5, 1.0, -2.0]));

        // Field order does not matter; integral floats are integers.
        let d = parse_tensor_json(r#"{"data": [1, -2, 3.0], "dtype": "i64", "shape": [1, 3]}"#)
            .unwrap();
        assert_eq!(d.samples[0].data, TensorData::I64(vec![1, -2, 3]));
        let d = parse_tensor_json(r#"{"shape":[1,2,1],"dtype":"u8","data":[0,255]}"#).unwrap();
        assert_eq!(d.samples[0].data, TensorData::U8(vec![0, 255]));

        let json_err = |t: &str| match parse_tensor_json(t) {
            Err(DatasetError::Json { detail }) => detail,
            other => panic!("{t}: {other:?}"),
        };
        assert!(json_err(r#"{"shape":[1],"dtype":"f32","data":[1],"extra":1}"#).contains("extra"));
        assert!(json_err(r#"{"shape":[1],"dtype":"f16","data":[1]}"#).contains("f16"));
        assert!(json_err(r#"{"shape":[1],"dtype":"f32"}"#).contains("data"));
        assert!(json_err(r#"{"shape":[1],"dtype":"f32","data":[1]} x"#).contains("trailing"));
        assert!(json_err(r#"[1]"#).contains("expected"));
        // Out-of-range values are named by index, not echoed.
        let detail = json_err(r#"{"shape":[1,2],"dtype":"u8","data":[1,31337]}"#);
        assert!(
            detail.contains("data[1]") && !detail.contains("31337"),
            "{detail}"
        );
        let detail = json_err(r#"{"shape":[1,2],"dtype":"i64","data":[1,2.5]}"#);
        assert!(
            detail.contains("data[1]") && !detail.contains("2.5"),
            "{detail}"
        );
        let detail = json_err(r#"{"shape":[1,1],"dtype":"f32","data":[1e39]}"#);
        assert!(detail.contains("data[0]"), "{detail}");
        assert!(
            json_err(r#"{"shape":[1,2],"dtype":"f32","data":[1,2,3]}"#).contains("more than the 2")
        );
        let rank = format!(
            r#"{{"shape":[{}],"dtype":"f32","data":[1]}}"#,
            ["1"; 40].join(",")
        );
        assert!(json_err(&rank).contains("dimensions"));

        assert!(matches!(
            parse_tensor_json(r#"{"shape":[1,3],"dtype":"f32","data":[1,2]}"#),
            Err(DatasetError::Tensor {
                sample: 1,
                problem: TensorError::LengthMismatch {
                    expected: 3,
                    actual: 2
                }
            })
        ));
        assert!(matches!(
            parse_tensor_json(r#"{"shape":[1,65536,65536],"dtype":"u8","data":[]}"#),
            Err(DatasetError::Tensor {
                problem: TensorError::TooManyElements { .. },
                ..
            })
        ));
        assert!(matches!(
            parse_tensor_json(r#"{"shape":[4294967296,4294967296,2],"dtype":"u8","data":[]}"#),
            Err(DatasetError::Tensor {
                problem: TensorError::ShapeOverflow { .. },
                ..
            })
        ));
        assert!(matches!(
            parse_tensor_json(r#"{"shape":[3],"dtype":"f32","data":[1,2,3]}"#),
            Err(DatasetError::NoBatchDimension { sample: 1, .. })
        ));
        assert!(matches!(
            parse_tensor_json(r#"{"shape":[],"dtype":"f32","data":[1]}"#),
            Err(DatasetError::NoBatchDimension { .. })
        ));
    }

    #[test]
    fn validate_and_debug() {
        let mut d = parse_csv("1,2,3\n4,5,6\n", LabelColumn::Last, None).unwrap();
        assert_eq!(format!("{d:?}"), "Dataset(<2 samples, 2 labels>)");
        d.labels = Some(vec![1]);
        assert_eq!(
            d.validate(),
            Err(DatasetError::LabelCount {
                labels: 1,
                samples: 2
            })
        );
        d.labels = None;
        assert_eq!(format!("{d:?}"), "Dataset(<2 samples, no labels>)");
        d.samples[1].shape = vec![1, 3];
        assert!(matches!(
            d.validate(),
            Err(DatasetError::Tensor { sample: 2, .. })
        ));
        d.samples.clear();
        assert_eq!(d.validate(), Err(DatasetError::Empty));
    }

    /// Rows as a CSV: what a user's spreadsheet export looks like.
    fn write_csv(rows: &[(Vec<f32>, i64)], with_labels: bool, exponent: bool) -> String {
        let mut out = String::new();
        for (features, label) in rows {
            let mut fields: Vec<String> = features
                .iter()
                .map(|v| {
                    if exponent {
                        format!("{v:e}")
                    } else {
                        format!("{v}")
                    }
                })
                .collect();
            if with_labels {
                fields.push(label.to_string());
            }
            out.push_str(&fields.join(","));
            out.push('\n');
        }
        out
    }

    fn finite_f32() -> impl Strategy<Value = f32> {
        prop_oneof![
            any::<f32>().prop_filter("finite", |v| v.is_finite()),
            -10.0f32..10.0,
            Just(0.0),
            Just(-0.0),
            Just(f32::MAX),
            Just(f32::MIN_POSITIVE),
        ]
    }

    /// Applies byte edits to ASCII text; results stay valid UTF-8 because
    /// only ASCII is inserted and only ASCII is removed.
    fn mutate(text: &str, edits: &[(prop::sample::Index, u8, u8)]) -> String {
        let mut bytes = text.as_bytes().to_vec();
        for (at, op, b) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            let b = b & 0x7f;
            match op % 3 {
                0 => bytes[i] = b,
                1 => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, b),
            }
        }
        String::from_utf8(bytes).unwrap_or_default()
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(
            text in prop_oneof![
                any::<String>(),
                "[0-9.,eE+\\- \n\r\tinfaNI\"]{0,300}",
            ],
            last in any::<bool>(),
            shape in proptest::option::of(prop::collection::vec(0u64..5, 0..4)),
        ) {
            let labels = if last { LabelColumn::Last } else { LabelColumn::None };
            if let Ok(d) = parse_csv(&text, labels, shape.as_deref()) {
                prop_assert_eq!(d.validate(), Ok(()));
            }
            if let Ok(d) = parse_tensor_json(&text) {
                prop_assert_eq!(d.validate(), Ok(()));
            }
        }

        #[test]
        fn arbitrary_json_shapes_never_panic(
            shape in prop::collection::vec(any::<u64>(), 0..5),
            dtype in prop_oneof![Just("f32"), Just("i64"), Just("u8"), Just("x")],
            data in prop::collection::vec(
                prop_oneof![
                    any::<i64>().prop_map(|v| v.to_string()),
                    any::<u64>().prop_map(|v| v.to_string()),
                    any::<f64>().prop_map(|v| format!("{v:e}")),
                    Just("null".to_string()),
                ],
                0..8,
            ),
        ) {
            let text = format!(
                r#"{{"shape":{shape:?},"dtype":"{dtype}","data":[{}]}}"#,
                data.join(",")
            );
            if let Ok(d) = parse_tensor_json(&text) {
                prop_assert_eq!(d.validate(), Ok(()));
            }
        }

        #[test]
        fn mutated_digits_csv_never_panics(
            first_rows in 1usize..6,
            edits in prop::collection::vec(
                (any::<prop::sample::Index>(), any::<u8>(), any::<u8>()),
                1..8,
            ),
        ) {
            let original: String =
                DIGITS.lines().take(first_rows).map(|l| format!("{l}\n")).collect();
            let text = mutate(&original, &edits);
            for (labels, shape) in [
                (LabelColumn::Last, Some(&[1u64, 8, 8][..])),
                (LabelColumn::None, None),
            ] {
                if let Ok(d) = parse_csv(&text, labels, shape) {
                    prop_assert_eq!(d.validate(), Ok(()));
                }
            }
        }

        #[test]
        fn generated_rows_round_trip_through_csv(
            columns in 1usize..8,
            rows in prop::collection::vec(
                (prop::collection::vec(finite_f32(), 8), any::<i64>()),
                1..20,
            ),
            with_labels in any::<bool>(),
            exponent in any::<bool>(),
        ) {
            let rows: Vec<(Vec<f32>, i64)> = rows
                .into_iter()
                .map(|(mut f, l)| { f.truncate(columns); (f, l) })
                .collect();
            let text = write_csv(&rows, with_labels, exponent);
            let labels = if with_labels { LabelColumn::Last } else { LabelColumn::None };
            let d = parse_csv(&text, labels, None).unwrap();
            let expected = Dataset {
                samples: rows
                    .iter()
                    .map(|(f, _)| Tensor {
                        shape: vec![1, columns as u64],
                        data: TensorData::F32(f.clone()),
                    })
                    .collect(),
                labels: with_labels.then(|| rows.iter().map(|(_, l)| *l).collect()),
            };
            prop_assert_eq!(&d, &expected);
            // Bit-exact, -0.0 included (PartialEq on f32 would accept 0.0).
            for (got, want) in d.samples.iter().zip(&expected.samples) {
                let (TensorData::F32(g), TensorData::F32(w)) = (&got.data, &want.data) else {
                    panic!("f32 expected");
                };
                prop_assert!(g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    }
}
