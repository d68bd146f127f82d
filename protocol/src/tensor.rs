//! [`Tensor`]: a shaped array of inference input.

use serde::{Deserialize, Serialize};

use crate::error::TensorError;

/// A dense, row-major tensor.
///
/// Decoding only guarantees that the data was present in the frame; call
/// [`Tensor::validate`] before using `shape` to index `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    /// Dimensions, outermost first. An empty shape is a scalar (one element).
    pub shape: Vec<u64>,
    /// The elements.
    pub data: TensorData,
}

/// The elements of a [`Tensor`], by element type.
///
/// `Debug` prints the element type and count, never the values: tensors
/// carry user data and must not end up in logs.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub enum TensorData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 64-bit signed integers (e.g. token ids).
    I64(Vec<i64>),
    /// Bytes (e.g. image pixels).
    U8(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::U8(v) => v.len(),
        }
    }

    /// `true` when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element type name, for logs and errors.
    pub fn dtype(&self) -> &'static str {
        match self {
            Self::F32(_) => "f32",
            Self::I64(_) => "i64",
            Self::U8(_) => "u8",
        }
    }
}

impl std::fmt::Debug for TensorData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[<{} elements>]", self.dtype(), self.len())
    }
}

impl Tensor {
    /// Check that the product of `shape` equals the number of elements and
    /// is at most `max_elements`; returns the element count.
    ///
    /// The product is computed with checked multiplication, so a hostile
    /// shape cannot overflow into a small number.
    pub fn validate(&self, max_elements: u64) -> Result<u64, TensorError> {
        let elements = self
            .shape
            .iter()
            .try_fold(1u64, |acc, &dim| acc.checked_mul(dim))
            .ok_or_else(|| TensorError::ShapeOverflow {
                shape: self.shape.clone(),
            })?;
        if elements > max_elements {
            return Err(TensorError::TooManyElements {
                elements,
                max: max_elements,
            });
        }
        let actual = self.data.len();
        if u64::try_from(actual).ok() != Some(elements) {
            return Err(TensorError::LengthMismatch {
                expected: elements,
                actual,
            });
        }
        Ok(elements)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[u64], n: usize) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            data: TensorData::F32(vec![0.5; n]),
        }
    }

    #[test]
    fn validate() {
        assert_eq!(t(&[2, 3], 6).validate(100), Ok(6));
        assert_eq!(t(&[], 1).validate(100), Ok(1));
        assert_eq!(t(&[0, 5], 0).validate(100), Ok(0));
        assert_eq!(
            t(&[2, 3], 5).validate(100),
            Err(TensorError::LengthMismatch {
                expected: 6,
                actual: 5
            })
        );
        assert_eq!(
            t(&[2, 3], 6).validate(5),
            Err(TensorError::TooManyElements {
                elements: 6,
                max: 5
            })
        );
        // 2^32 * 2^32 wraps to 0 without checked arithmetic.
        assert!(matches!(
            t(&[1 << 32, 1 << 32], 0).validate(u64::MAX),
            Err(TensorError::ShapeOverflow { .. })
        ));
    }

    #[test]
    fn debug_hides_values() {
        let s = format!("{:?}", t(&[3], 3));
        assert!(s.contains("f32[<3 elements>]"), "{s}");
        assert!(!s.contains("0.5"), "{s}");
    }
}
